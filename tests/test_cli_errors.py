"""`tl-jax pretrain` refuses bad input with one sentence and never damages a workdir.

Every command runs as a subprocess, as a user would run it; what counts as one sentence is
in tests/faults/harness.py. (tests/faults/test_bad_inputs.py covers the other commands.)
"""

import json
import pathlib
import shutil

import pytest

# Re-exported: other test modules take them from here.
from faults.harness import assert_one_sentence, checkpoint_steps, cli_env, run, snapshot, tl_jax  # noqa: F401

# A run small enough for a 2-core CPU: one eval and one checkpoint, at step 20.
TINY = ["--config=configs/mlm.py:tiny", "--config.train.max_steps=20",
        "--config.data.max_train_tokens=200000", "--config.eval.every_steps=20",
        "--config.checkpoint.every_steps=20"]


def run_cli(workdir, *args, timeout=180):
  """Runs `tl-jax pretrain --workdir=WORKDIR ARGS...` from the repo root (8 simulated devices)."""
  return run(tl_jax("pretrain", f"--workdir={workdir}", *args), cli_env(), timeout=timeout)


def train_lines(workdir: pathlib.Path) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [r for r in map(json.loads, filter(str.strip, f)) if "loss" in r]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> pathlib.Path:
  """A workdir holding a completed 20-step run (read-only for the tests: copy to change it)."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = run_cli(workdir, *TINY)
  assert result.returncode == 0, result.stdout + result.stderr
  assert checkpoint_steps(workdir) == [20]
  return workdir


@pytest.fixture
def copy_of_finished(finished, tmp_path) -> pathlib.Path:
  workdir = tmp_path / "copy"
  shutil.copytree(finished, workdir)
  return workdir


# ---------------------------------------------------------------------------
# Input rejected while parsing or validating the config, before any jax work.

CONFIG_ERRORS = {
    "unknown-preset": (["--config=configs/mlm.py:nope"], ["'nope'", "tiny"]),
    "missing-config-file": (["--config=configs/absent.py:tiny"], ["configs/absent.py"]),
    "unknown-field": (["--config.model.nope=1"], ["model.nope", "num_layers"]),
    "section-given-a-value": (["--config.model=3"], ["--config.model", "section"]),
    "bad-int": (["--config.train.max_steps=abc"], ["train.max_steps=abc", "int"]),
    "int-overflow": (["--config.train.max_steps=1e999"], ["train.max_steps"]),
    "width-not-divisible-by-heads": (["--config.model.d_model=100", "--config.model.num_heads=3"],
                                     ["d_model=100", "num_heads=3"]),
    "unknown-argument": (["--nope=1"], ["--nope=1"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_error_is_one_sentence_and_leaves_workdir_intact(finished, case, reliability):
  args, fragments = CONFIG_ERRORS[case]
  before = snapshot(finished)
  message = assert_one_sentence(run_cli(finished, *TINY, *args), *fragments)
  assert snapshot(finished) == before
  reliability("Bad input: configs", f"pretrain {' '.join(args)} ({case})",
              f"exit 2, workdir unchanged: `{message}`")


# ---------------------------------------------------------------------------
# Input only checkable against the devices or the data: mesh and text source.


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> dict[str, str]:
  root = tmp_path_factory.mktemp("text")
  (root / "good.txt").write_text("a line of ordinary text\nanother line of text\n")
  (root / "empty.txt").write_bytes(b"")
  (root / "latin1.txt").write_bytes(b"\xff\xfe bad")
  return {"good": str(root / "good.txt"), "empty": str(root / "empty.txt"),
          "latin1": str(root / "latin1.txt"), "no-match": str(root / "absent-*.txt")}


def _text(train: str) -> list[str]:
  return ["--config.data.source=text", f"--config.data.train_files={train}",
          "--config.data.eval_files={good}"]


RUNTIME_ERRORS = {
    "mesh-larger-than-devices": (["--config.parallel.data=16"], ["needs 16 devices", "8 are present"]),
    "mesh-product-mismatch": (["--config.parallel.data=3"], ["needs 3 devices", "8 are present"]),
    "empty-data-file": (_text("{empty}"), ["{empty}", "empty"]),
    "non-utf8-data-file": (_text("{latin1}"), ["{latin1}", "UTF-8"]),
    "glob-matching-nothing": (_text("{no-match}"), ["{no-match}", "matches no file"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", RUNTIME_ERRORS)
def test_runtime_error_is_one_sentence(finished, text_files, tmp_path, case, reliability):
  args = [a.format(**text_files) for a in RUNTIME_ERRORS[case][0]]
  fragments = [f.format(**text_files) for f in RUNTIME_ERRORS[case][1]]
  # A new workdir: the command gets as far as the mesh or the data and names the cause.
  message = assert_one_sentence(run_cli(tmp_path / "new", *TINY, *args), *fragments)
  # The finished workdir: refused as another config, with nothing touched.
  before = snapshot(finished)
  assert_one_sentence(run_cli(finished, *TINY, *args), "another config", "--override")
  assert snapshot(finished) == before
  area = "Bad input: meshes" if "mesh" in case else "Bad input: data files"
  reliability(area, f"pretrain {' '.join(args)} ({case})", f"exit 2, nothing written: `{message}`")


@pytest.mark.slow
def test_refused_command_leaves_no_config_behind(tmp_path):
  """A command refused on a new workdir must not make that workdir refuse the next command."""
  workdir = tmp_path / "new"
  assert_one_sentence(run_cli(workdir, *TINY, "--config.parallel.data=16"), "needs 16 devices")
  # The next attempt must be judged on its own, not as a change to the refused config.
  assert_one_sentence(run_cli(workdir, *TINY, "--config.parallel.data=3"), "needs 3 devices")


# ---------------------------------------------------------------------------
# A workdir remembers its config.


@pytest.mark.slow
@pytest.mark.parametrize("change,field", [
    ("--config.model.num_layers=3", "model.num_layers: 2 -> 3"),
    ("--config.checkpoint.keep=5", "checkpoint.keep: 3 -> 5"),
])
def test_changed_config_is_refused_without_override(finished, change, field):
  before = snapshot(finished)
  assert_one_sentence(run_cli(finished, *TINY, change), "another config", field, "--override")
  assert snapshot(finished) == before
  assert checkpoint_steps(finished) == [20]


@pytest.mark.slow
def test_override_continues_with_new_config_and_keeps_old_one(copy_of_finished):
  workdir = copy_of_finished
  old_config = (workdir / "config.json").read_bytes()
  checkpoints_before = {k: v for k, v in snapshot(workdir).items() if k.startswith("checkpoints")}
  result = run_cli(workdir, *TINY, "--config.checkpoint.keep=5", "--override")
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Traceback" not in result.stdout + result.stderr
  assert "resumed from step 20" in result.stdout
  assert (workdir / "config.json.1").read_bytes() == old_config
  assert json.loads((workdir / "config.json").read_text())["checkpoint"]["keep"] == 5
  after = snapshot(workdir)
  assert {k: v for k, v in after.items() if k.startswith("checkpoints")} == checkpoints_before


@pytest.mark.slow
@pytest.mark.parametrize("change,fragments", [
    ("--config.parallel.data=16", ["needs 16 devices"]),
    ("--config.model.num_layers=3", ["checkpoint", "--workdir"]),
], ids=["bad-mesh", "incompatible-checkpoint"])
def test_override_that_cannot_run_changes_nothing(copy_of_finished, change, fragments):
  """--override with a config the run then refuses must leave config.json as it was."""
  workdir = copy_of_finished
  before = snapshot(workdir)
  assert_one_sentence(run_cli(workdir, *TINY, change, "--override"), *fragments)
  assert not (workdir / "config.json.1").exists()
  assert snapshot(workdir) == before


# ---------------------------------------------------------------------------
# Re-running a finished command is a no-op.


@pytest.mark.slow
def test_rerunning_finished_command_changes_no_result(copy_of_finished):
  workdir = copy_of_finished
  lines_before = train_lines(workdir)
  config_before = (workdir / "config.json").read_bytes()
  result = run_cli(workdir, *TINY)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "resumed from step 20" in result.stdout
  lines_after = train_lines(workdir)
  assert [r["step"] for r in lines_after] == [r["step"] for r in lines_before]
  assert lines_after[-1]["step"] == 20
  assert lines_after[-1]["loss"] == lines_before[-1]["loss"]
  assert (workdir / "config.json").read_bytes() == config_before
  assert checkpoint_steps(workdir) == [20]


def test_runs_share_a_compilation_cache_unless_it_is_turned_off(tmp_path):
  """tl-jax keeps jax's compiled programs under $TL_JAX_CACHE/xla: a second run of the same
  shapes adds no entry (it loads them), also with another seed (a sweep's second seed: the seed
  is an argument of the compiled init, not a constant in it); JAX_COMPILATION_CACHE_DIR='' turns
  the cache off."""
  env = cli_env()
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.update(TL_JAX_CACHE=str(tmp_path / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  entries = lambda: sorted(p.name for p in (tmp_path / "cache" / "xla").iterdir())
  for name, seed in (("first", 0), ("second", 1)):
    result = run(tl_jax("pretrain", f"--workdir={tmp_path / name}", *TINY,
                        f"--config.train.seed={seed}"), env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    if name == "first":
      first = entries()
      assert first, "the first run wrote no compiled program"
  assert entries() == first
  shutil.rmtree(tmp_path / "cache" / "xla")
  result = run(tl_jax("pretrain", f"--workdir={tmp_path / 'off'}", *TINY),
               {**env, "JAX_COMPILATION_CACHE_DIR": ""}, timeout=180)
  assert result.returncode == 0, result.stdout + result.stderr
  assert not (tmp_path / "cache" / "xla").exists()
