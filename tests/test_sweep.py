"""tl-jax sweep: printed commands, sweep-file checks, skipping done stages, resuming, failing.

The runs are two tiny pretraining stages of 30 steps on one CPU device (a subprocess each,
as the sweep runs them); the rest runs nothing.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from faults.harness import cli_env
from tl_jax import sweep as sweep_lib
from tl_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "configs" / "sweeps").glob("*.py"))

TINY = {"train.max_steps": 30, "data.max_train_tokens": 100000, "eval.every_steps": 10,
        "eval.num_batches": 2, "checkpoint.every_steps": 10, "train.log_every": 10,
        "parallel.data": 1}


def write_sweep(tmp_path, stages: str, name: str = "sweep.py") -> str:
  path = tmp_path / name
  path.write_text(textwrap.dedent(f"""\
      from tl_jax.sweep import Stage, Sweep, size_stages
      TINY = {TINY!r}

      def get_sweep(variant):
        return Sweep("test", "a test sweep", {stages})
      """))
  return str(path)


@pytest.fixture(scope="module")
def stage_compile_cache(tmp_path_factory) -> str:
  """A compilation cache for this module's stages alone (one pytest worker runs a module, one
  stage at a time): the tiny stages repeat each other's programs, and load them."""
  return str(tmp_path_factory.mktemp("stage_xla"))


@pytest.fixture
def in_repo(monkeypatch, stage_compile_cache):
  """Stages run from the repository root (relative config paths), on one CPU device."""
  monkeypatch.chdir(REPO)
  for name, value in cli_env(devices=1, compile_cache=stage_compile_cache).items():
    monkeypatch.setenv(name, value)


def one_sentence(message: str) -> bool:
  return "\n" not in message and message.endswith(".") and ". " not in message.replace("e.g. ", "")


def test_print_only_prints_exact_commands_and_creates_nothing(tmp_path, in_repo, capsys):
  spec = write_sweep(tmp_path, """size_stages("tiny", {"train.max_steps": 30}, "configs/glue.py:synthetic",
                             {"train.epochs": 1}, "configs/compress.py:quick", prefix="a/")""")
  root = tmp_path / "root"
  assert sweep_lib.main([f"--config={spec}", f"--root={root}", "--print-only"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines == [
      f"# sweep test: 3 stages under {root}",
      "# stage: a/tiny/pretrain",
      f"tl-jax pretrain --config=configs/mlm.py:tiny --workdir={root}/a/tiny/pretrain "
      "--config.train.max_steps=30",
      "# stage: a/tiny/finetune",
      "# after: a/tiny/pretrain",
      f"tl-jax finetune --config=configs/glue.py:synthetic --workdir={root}/a/tiny/finetune "
      f"--init={root}/a/tiny/pretrain --config.init.checkpoint=best --config.train.epochs=1",
      "# stage: a/tiny/compress",
      "# after: a/tiny/finetune",
      f"tl-jax compress --config=configs/compress.py:quick --workdir={root}/a/tiny/finetune",
  ]
  assert not root.exists()
  # --only picks one stage's lines; a name not in the sweep is one sentence naming those that are.
  assert sweep_lib.main([f"--config={spec}", f"--root={root}", "--print-only",
                         "--only=a/tiny/finetune"]) == 0
  assert capsys.readouterr().out.splitlines() == [f"# sweep test: 1 stage under {root}"] + lines[3:6]
  assert sweep_lib.main([f"--config={spec}", f"--root={root}", "--print-only", "--only=a/x"]) == 2
  assert "--only=a/x is not a stage of sweep test; its stages are a/tiny/pretrain, " in (
      capsys.readouterr().err)
  # Command-line overrides reach the stages whose config has the field, and are quoted for a shell.
  assert sweep_lib.main([f"--config={spec}", f"--root={root} x", "--print-only",
                         "--config.parallel.fsdp=2"]) == 0
  lines = [l for l in capsys.readouterr().out.splitlines() if not l.startswith("#")]
  assert [l.endswith("--config.parallel.fsdp=2") for l in lines] == [True, True, False]
  assert lines[0].startswith(f"tl-jax pretrain --config=configs/mlm.py:tiny '--workdir={root} x/a/")
  assert not (tmp_path / "root x").exists()


def test_module_entry_point_prints_the_shipped_sweeps(tmp_path):
  for path in SWEEP_FILES:
    result = subprocess.run([sys.executable, "-m", "tl_jax.sweep", f"--config={path}",
                             f"--root={tmp_path}/r", "--print-only"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("tl-jax ") >= 3, result.stdout
  assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("spec", ["demo.py:30", "gpu_reduced.py:300", "paper_mlm.py:6h",
                                  "paper_translate.py:1h", "rq4_data.py:gpu", "rq4_data.py:cpu-30",
                                  "h200_study.py:rq1-90", "h200_study.py:rq1share-40",
                                  "h200_study.py:rq1long-240", "h200_study.py:sst2",
                                  "h200_study.py:translate-compress"])
def test_shipped_sweeps_and_variants_load(spec, in_repo):
  sweep = sweep_lib.load_sweep(f"configs/sweeps/{spec}")
  for stage in sweep.stages:
    assert os.path.isfile(stage.config.partition(":")[0])
    assert all(isinstance(v, str) for v in stage.overrides.values())


@pytest.mark.parametrize("stages, expected", [
    ("""[Stage("a", "pretrain", "configs/mlm.py:tiny"),
         Stage("b", "finetune", "configs/glue.py:synthetic", init="nope")]""",
     "stage 'b' in {path} has init='nope', which is not an earlier stage; define that stage before it."),
    ("""[Stage("a", "pretrain", "configs/mlm.py:tiny"), Stage("a", "pretrain", "configs/mlm.py:tiny")]""",
     "{path} defines stage 'a' twice; stage names must be unique."),
    ("""[Stage("a", "train", "configs/mlm.py:tiny")]""",
     "stage 'a' in {path} has unknown command 'train'; use one of pretrain, translate, finetune, compress."),
    ("""[Stage("a", "pretrain", "configs/mlm.py:tiny"),
         Stage("c", "compress", "configs/compress.py:quick", target="a"),
         Stage("d", "compress", "configs/compress.py:quick", target="c")]""",
     "stage 'd' in {path} has target='c', a compress stage; it must name a finetune or "
     "translate or pretrain stage."),
])
def test_bad_sweep_files_are_one_sentence_errors(tmp_path, in_repo, capsys, stages, expected):
  spec = write_sweep(tmp_path, stages)
  with pytest.raises(UserError) as e:
    sweep_lib.load_sweep(spec)
  assert str(e.value) == expected.format(path=spec)
  assert one_sentence(str(e.value)), str(e.value)
  assert sweep_lib.main([f"--config={spec}", f"--root={tmp_path}/root"]) == 2
  assert capsys.readouterr().err == f"tl-jax: error: {e.value}\n"
  assert not (tmp_path / "root").exists()


def test_only_needs_its_dependency_done(tmp_path, in_repo):
  spec = write_sweep(tmp_path, """size_stages("tiny", TINY, "configs/glue.py:synthetic")""")
  with pytest.raises(UserError, match=r"stage tiny/finetune needs stage tiny/pretrain done first") as e:
    sweep_lib.run(sweep_lib.load_sweep(spec), str(tmp_path / "root"), only="tiny/finetune")
  assert one_sentence(str(e.value))
  with pytest.raises(UserError, match="--only=nope is not a stage"):
    sweep_lib.run(sweep_lib.load_sweep(spec), str(tmp_path / "root"), only="nope")


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_finished_stages_are_skipped_and_an_interrupted_one_resumes(tmp_path, in_repo, capsys,
                                                                   monkeypatch):
  # The stages' own compilation cache (as the fault suite's restarts have): the resumed stage
  # loads the programs its first session compiled.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "xla"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  spec = write_sweep(tmp_path, """[Stage("one", "pretrain", "configs/mlm.py:tiny", TINY),
                                   Stage("two", "pretrain", "configs/mlm.py:tiny",
                                         {**TINY, "model.num_layers": 1})]""")
  root = tmp_path / "root"
  assert sweep_lib.main([f"--config={spec}", f"--root={root}"]) == 0
  out = capsys.readouterr().out
  assert "== [1/2] one | elapsed 0s" in out and "== [2/2] two | elapsed " in out
  assert "stopped at step 30:" in out
  state = root / ".sweep"
  markers = {n: state / f"{n}.done" for n in ("one", "two")}
  done = json.loads(markers["one"].read_text())
  sweep = sweep_lib.load_sweep(spec)
  assert done["command"] == sweep_lib.command(sweep, str(root), sweep.stages[0])
  assert done["seconds"] > 0 and done["finished"]
  assert json.loads((state / "sweep.json").read_text())["stages"][1]["overrides"]["model.num_layers"] == "1"
  assert "stopped at step 30:" in (state / "logs" / "two.log").read_text()
  # Each stage ends with its process's start-up and wind-down, which its own elapsed misses.
  timing = re.search(r"stage process: ([\d.]+)s, its first line after ([\d.]+)s, its last "
                     r"([\d.]+)s before it exited", (state / "logs" / "two.log").read_text())
  total, startup, winddown = map(float, timing.groups())
  assert 0 < startup and startup + winddown <= total
  assert total <= json.loads(markers["two"].read_text())["seconds"] + 0.5

  # Interrupt stage two after step 20: no marker, its last checkpoint gone.
  one_before = {p: p.read_bytes() for p in [markers["one"], root / "one" / "metrics.jsonl"]}
  one_mtime = markers["one"].stat().st_mtime_ns
  markers["two"].unlink()
  assert checkpoint_steps(root / "two")[-1] == 30
  shutil.rmtree(root / "two" / "checkpoints" / "30")

  assert sweep_lib.main([f"--config={spec}", f"--root={root}"]) == 0
  out = capsys.readouterr().out
  assert "== [1/2] one: skip (done)" in out
  assert "resumed from step 20 " in out and "stopped at step 30:" in out
  assert {p: p.read_bytes() for p in one_before} == one_before
  assert markers["one"].stat().st_mtime_ns == one_mtime
  assert markers["two"].exists() and checkpoint_steps(root / "two")[-1] == 30
  log = (state / "logs" / "two.log").read_text()
  assert log.count("== [2/2] two") == 2 and "resumed from step 20 " in log

  # Everything done: nothing runs.
  assert sweep_lib.main([f"--config={spec}", f"--root={root}"]) == 0
  out = capsys.readouterr().out
  assert "one: skip (done)" in out and "two: skip (done)" in out and "tl-jax" not in out

  # The same root refuses a sweep that defines a stage differently.
  other = write_sweep(tmp_path, """[Stage("one", "pretrain", "configs/mlm.py:tiny",
                                          {**TINY, "train.max_steps": 60})]""", name="other.py")
  assert sweep_lib.main([f"--config={other}", f"--root={root}"]) == 2
  err = capsys.readouterr().err
  assert f"root {root} already ran stage 'one' with different overrides" in err
  assert one_sentence(err.strip())


def test_a_failing_stage_stops_the_sweep(tmp_path, in_repo, capsys):
  spec = write_sweep(tmp_path, """[Stage("bad", "pretrain", "configs/mlm.py:tiny", {"model.nonsense": 1}),
                                   Stage("after", "pretrain", "configs/mlm.py:tiny", TINY)]""")
  root = tmp_path / "root"
  assert sweep_lib.main([f"--config={spec}", f"--root={root}"]) == 2
  captured = capsys.readouterr()
  log = root / ".sweep" / "logs" / "bad.log"
  assert captured.err == (f"tl-jax: error: stage bad failed with exit code 2 (log {log}); fix the "
                          "cause and re-run the same sweep command to resume (finished stages are "
                          "skipped).\n")
  assert one_sentence(captured.err.strip().removeprefix("tl-jax: error: "))
  assert "unknown config field 'model.nonsense'" in log.read_text()  # the stage's own error
  assert "unknown config field 'model.nonsense'" in captured.out  # streamed to the console
  assert not (root / ".sweep" / "bad.done").exists()
  assert not (root / "after").exists()


def stage_process_group(sweep_pid: int) -> int:
  """The process group of the sweep's running stage (its one child), read from Linux's /proc."""
  children = pathlib.Path(f"/proc/{sweep_pid}/task/{sweep_pid}/children").read_text().split()
  assert len(children) == 1, children
  return os.getpgid(int(children[0]))


@pytest.mark.slow
@pytest.mark.parametrize("target, signum", [("sweep", signal.SIGTERM), ("group", signal.SIGTERM),
                                            ("group", signal.SIGINT)])
def test_a_signal_to_the_sweep_or_its_group_checkpoints_the_stage(tmp_path, in_repo, target,
                                                                   signum):
  """A pre-empted machine signals the sweep, or (as `timeout` does) the sweep's whole process
  group; either way the stage saves a checkpoint and the sweep says so; Ctrl-C (SIGINT to the
  terminal's group) alike, with 130. The stage has a group of its own, so a group signal does
  not reach its helper processes (on a GPU, XLA's ptxas: killed mid-compile, it ended a stage
  with exit 1 and no checkpoint, 2026-12-07)."""
  if target == "group" and not os.path.exists("/proc/self/task"):
    pytest.skip("reading a process's children needs Linux's /proc")
  spec = write_sweep(tmp_path, """[Stage("long", "pretrain", "configs/mlm.py:tiny",
                                          {**TINY, "train.max_steps": 100000, "eval.every_steps": 0,
                                           "checkpoint.every_steps": 100000})]""")
  root = tmp_path / "root"
  log = root / ".sweep" / "logs" / "long.log"
  proc = subprocess.Popen([sys.executable, "-m", "tl_jax.sweep", f"--config={spec}", f"--root={root}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)  # a group of its own, for killpg
  try:
    deadline = time.monotonic() + 60
    while not (log.exists() and "step 20/100000" in log.read_text()):
      assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
      time.sleep(0.1)
    if target == "sweep":
      proc.send_signal(signum)  # to the sweep alone: it passes it on to the stage
    else:
      assert stage_process_group(proc.pid) != os.getpgid(proc.pid)
      os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  code, name, how = ((143, "SIGTERM", "was pre-empted") if signum == signal.SIGTERM else
                     (130, "SIGINT (Ctrl-C)", "was interrupted by Ctrl-C"))
  assert proc.returncode == code, out + err
  assert f"{name}: checkpoint saved" in out
  assert err == (f"tl-jax: error: stage long {how} (exit {code}, checkpoint saved; log {log}); "
                 "re-run the same sweep command to resume from its checkpoint.\n")
  assert checkpoint_steps(root / "long")[-1] >= 20
  assert not (root / ".sweep" / "long.done").exists()


def test_study_parts_share_the_stages_they_start_from(in_repo, tmp_path):
  """A later part of the H200 study names its source part's runs exactly, so one root holds
  both and the later part skips them; a different budget would be refused by the root."""
  load = lambda part: {s.name: s for s in sweep_lib.load_sweep(f"configs/sweeps/h200_study.py:{part}").stages}
  for later, source in (("finetune", "rq1"), ("finetuneshare", "rq1share"),
                        ("finetunelr", "rq1share"), ("sst2", "rq4"),
                        ("translate-compress", "translate"), ("finetune-90", "rq1-90")):
    later_stages, source_stages = load(later), load(source)
    shared = [n for n in later_stages if n in source_stages]
    assert shared and all(later_stages[n] == source_stages[n] for n in shared)
    for stage in later_stages.values():  # every dependency is a stage of the source or its own
      assert stage.depends_on is None or stage.depends_on in later_stages
  rq1 = load("rq1")
  assert len({s.overrides["train.seed"] for s in rq1.values()}) == 2 and len(rq1) == 8
  assert {s.overrides["train.max_train_seconds"] for s in rq1.values()} == {"60"}
  # 10M synthetic tokens a second of budget: more than the fastest size reads (7.2M a second).
  assert {s.overrides["data.max_train_tokens"] for s in rq1.values()} == {"600000000"}
  assert {s.overrides["data.max_train_tokens"]
          for s in load("rq1-45").values()} == {"450000000"}
  # rq1share: the same runs but for the warmup, as a share of each run's steps, under names of
  # their own, so one root holds both parts.
  share = load("rq1share")
  assert [n.replace("rq1share/", "rq1/", 1) for n in share] == list(rq1)
  for name, stage in share.items():
    rest = dict(stage.overrides)
    assert rest.pop("train.warmup_fraction") == "0.1"
    assert rest == rq1[name.replace("rq1share/", "rq1/", 1)].overrides
  # rq1long: rq1share's recipe past 60 s for the three larger sizes, on a corpus sized for the
  # fastest of them (4M tokens a second of budget), under names of its own.
  long = load("rq1long")
  assert sorted({n.split("/")[1] for n in long}) == ["d12-w768", "d6-w512", "d6-w768"]
  assert len(long) == 6 and not set(long) & set(share)
  for name, stage in long.items():
    rest = dict(stage.overrides)
    assert rest.pop("train.max_train_seconds") == "150" and rest.pop("eval.every_seconds") == "25"
    assert rest.pop("data.max_train_tokens") == "600000000"
    twin = dict(share[name.replace("rq1long/", "rq1share/", 1)].overrides)
    for key in ("train.max_train_seconds", "eval.every_seconds", "data.max_train_tokens"):
      twin.pop(key)
    assert rest == twin
  # translate-compress: both seeds of the two shallow translators, each compressed by BLEU; the
  # deep one is left out.
  compressed = sorted(s.target for s in load("translate-compress").values() if s.command == "compress")
  assert compressed == [f"translate/e3-d3-w{w}/seed{seed}/translate"
                        for w in (1024, 512) for seed in (0, 1)]
  sweep_lib.record(sweep_lib.load_sweep("configs/sweeps/h200_study.py:rq1"), str(tmp_path))
  sweep_lib.record(sweep_lib.load_sweep("configs/sweeps/h200_study.py:rq1share"), str(tmp_path))
  sweep_lib.record(sweep_lib.load_sweep("configs/sweeps/h200_study.py:rq1long"), str(tmp_path))
  sweep_lib.record(sweep_lib.load_sweep("configs/sweeps/h200_study.py:finetune"), str(tmp_path))
  with pytest.raises(UserError, match="already ran stage"):
    sweep_lib.record(sweep_lib.load_sweep("configs/sweeps/h200_study.py:finetune-90"), str(tmp_path))


def test_the_finetuning_rate_part_adds_a_lower_rate_and_a_scratch_baseline(in_repo, tmp_path):
  """finetunelr: each pretraining run of finetuneshare finetuned at 1e-4 (compressed), at the
  preset's rate (finetuneshare's own stage, uncompressed here) and from scratch."""
  load = lambda part: {s.name: s for s in sweep_lib.load_sweep(f"configs/sweeps/h200_study.py:{part}").stages}
  lr, share = load("finetunelr"), load("finetuneshare")
  base = "rq1share/d6-w512/seed1/"
  low, scratch = lr[base + "finetune-lr1e-4"], lr[base + "finetune-scratch"]
  preset = share[base + "finetune"].overrides
  assert low.overrides == {**preset, "train.learning_rate": "0.0001"}
  assert scratch.overrides == {**preset, "init.from_scratch": "true"}
  assert low.init == scratch.init == base + "pretrain"
  assert lr[base + "finetune"] == share[base + "finetune"]
  assert lr[base + "compress-lr1e-4"].target == base + "finetune-lr1e-4"
  # Only the 1e-4 finetunes are compressed: one grid per pretraining run.
  compressed = [s.target for s in lr.values() if s.command == "compress"]
  assert len(compressed) == 6 and all(t.endswith("/finetune-lr1e-4") for t in compressed)
  assert sorted(n for n in lr if "seed1" in n and "d6-w512" in n) == sorted(
      base + s for s in ("pretrain", "finetune", "finetune-lr1e-4", "compress-lr1e-4",
                         "finetune-scratch"))
  sweep_lib.record(sweep_lib.load_sweep("configs/sweeps/h200_study.py:finetuneshare"), str(tmp_path))
  sweep_lib.record(sweep_lib.load_sweep("configs/sweeps/h200_study.py:finetunelr"), str(tmp_path))


def test_seeded_stages_get_a_workdir_and_a_train_seed_each():
  stages = sweep_lib.seeded(sweep_lib.size_stages, "d2-w64", (0, 1),
                            finetune_config="configs/glue.py:synthetic",
                            compress_config="configs/compress.py:quick")
  assert [s.name for s in stages] == [f"d2-w64/seed{n}/{k}" for n in (0, 1)
                                      for k in ("pretrain", "finetune", "compress")]
  assert [s.overrides.get("train.seed") for s in stages] == [0, 0, None, 1, 1, None]
  assert stages[4].init == "d2-w64/seed1/pretrain" and stages[5].target == "d2-w64/seed1/finetune"
  assert sweep_lib.seeded(sweep_lib.translate_stages, "tiny") == sweep_lib.translate_stages("tiny")
