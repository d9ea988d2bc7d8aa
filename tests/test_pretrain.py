"""End to end: the command learns, and a killed run resumes to the same bits."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tl_jax import config as config_lib
from tl_jax import tasks
from tl_jax.train import horizon as horizon_lib
from tl_jax.train import loop, metrics
from tl_jax.train.checkpoint import Checkpointer, abstract_with_shardings

# The in-process runs share compiled programs (the tiny preset on one device, again and again).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_process_compile_cache")]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def evals(workdir):
  return [l["eval_loss"] for l in metrics.read(workdir) if "eval_loss" in l]


def test_tiny_synthetic_pretraining_learns(tmp_path):
  """The README's main command, through the installed `tl-jax` entry point."""
  exe = shutil.which("tl-jax")
  assert exe, "the tl-jax command is missing: install the package with pip install -e ."
  workdir = str(tmp_path / "run")
  result = subprocess.run([exe, "pretrain", "--config=configs/mlm.py:tiny", f"--workdir={workdir}",
                           "--config.train.max_steps=300"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
  assert result.returncode == 0, result.stderr
  losses = evals(workdir)
  assert losses[-1] < losses[0] - 2.0, losses
  lines = metrics.read(workdir)
  for line in lines:
    assert {"step", "train_seconds", "elapsed_seconds"} <= set(line)
  train = [l for l in lines if "loss" in l]
  assert all({"learning_rate", "tokens_per_second", "mfu"} <= set(l) for l in train)
  assert [l["train_seconds"] for l in lines] == sorted(l["train_seconds"] for l in lines)
  assert os.listdir(os.path.join(workdir, "events")), "TensorBoard events are written"
  assert os.path.exists(os.path.join(workdir, "tokenizer", "spm.model"))
  saved = config_lib.load(os.path.join(workdir, "config.json"))
  assert saved.train.max_steps == 300 and saved.name == "tiny"


def test_wikitext_pretraining_learns(tmp_path, shared_data, monkeypatch):
  monkeypatch.chdir(REPO)  # the preset names ../shared/data relative to the repo
  c = config_lib.load_preset("configs/mlm.py:tiny-wikitext")
  c.train.max_steps = 200
  c.eval.num_batches = 4
  c.parallel.data = 1
  c.data.cache_dir = str(tmp_path / "cache")
  workdir = str(tmp_path / "wiki")
  assert tasks.run(c, workdir, jax.devices()[:1]) == 0
  losses = evals(workdir)
  assert losses[-1] < losses[0] - 1.5, losses
  # Read whole (data.max_train_tokens=0), the data's size is logged once, so the report can
  # count passes over it.
  from tl_jax.data import cache as token_cache
  from tl_jax.report import runs as report_runs
  lines = metrics.read(workdir)
  assert [l for l in lines if "train_tokens" in l] == lines[:1]
  cached = [d for d in os.listdir(os.path.join(c.data.cache_dir, "tokens")) if d.startswith("train-")]
  assert lines[0]["train_tokens"] == len(token_cache.TokenCache(
      os.path.join(c.data.cache_dir, "tokens", cached[0])))
  assert report_runs.data_tokens(report_runs.load_run(workdir, "wiki")) == (
      lines[0]["train_tokens"], "logged train_tokens")


def test_training_seconds_budget_stops_on_time(tmp_path):
  """A budget ends the run at the first step past it, not at the next log line (here 10,000
  steps away), and timed evals fall due the same way, on multiples of eval.every_seconds (so
  their lateness does not add up)."""
  c = config_lib.load_preset("configs/mlm.py:tiny")
  c.train.max_steps, c.train.max_train_seconds, c.train.log_every = 100_000, 4.0, 10_000
  c.eval.every_steps, c.eval.every_seconds = 0, 1.5
  c.checkpoint.every_steps, c.parallel.data = 100_000, 1
  workdir = str(tmp_path / "budget")
  assert tasks.run(c, workdir, jax.devices()[:1]) == 0
  lines = metrics.read(workdir)
  # The session's first line names its devices (the report compares seconds within one kind).
  assert [l.get("devices") for l in lines if "devices" in l] == [f"1 x {jax.devices()[0].device_kind}"]
  assert "devices" in lines[0]
  # ...and the model's size, which the report labels sizes by: the masked LM's formula agrees.
  from tl_jax.report import regime
  assert lines[0]["params"] == regime.mlm_params(config_lib.to_dict(c))[0]
  last = lines[-1]
  step_seconds = last["train_seconds"] / last["step"]
  assert 4.0 <= last["train_seconds"] <= 4.0 + 3 * step_seconds + 0.5, (last, step_seconds)
  timed_evals = [l["train_seconds"] for l in lines if "eval_loss" in l and l["step"] > 0]
  assert len(timed_evals) >= 2, timed_evals
  for mark, seconds in enumerate(timed_evals[:-1], start=1):  # the final eval ends the run
    assert 1.5 * mark <= seconds <= 1.5 * mark + 3 * step_seconds + 0.5, timed_evals
  # The syncs that approach a mark by halves write no line: with log_every this far off, every
  # train line but the first sync's (after step 1) is at an eval.
  train_steps = [l["step"] for l in lines if "loss" in l]
  eval_steps = {l["step"] for l in lines if "eval_loss" in l}
  assert train_steps[0] == 1 and set(train_steps[1:]) <= eval_steps, lines


def test_a_run_resumed_on_other_devices_says_so(tmp_path, capsys):
  """A lease may hand out another kind of GPU: the resumed session names both, in its log and
  in its first metrics line (which the report reads)."""
  c = config_lib.load_preset("configs/mlm.py:tiny")
  c.train.max_steps, c.train.log_every, c.eval.every_steps = 20, 10, 0
  c.checkpoint.every_steps, c.checkpoint.keep, c.parallel.data = 10, 3, 1
  workdir = str(tmp_path / "run")
  assert tasks.run(c, workdir, jax.devices()[:1]) == 0
  here = f"1 x {jax.devices()[0].device_kind}"
  assert metrics.last_devices(workdir) == here
  # As if steps 1-10 had run elsewhere and the session after them had been lost.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
  lines = [dict(l, devices="1 x NVIDIA H200") if "devices" in l else l for l in metrics.read(workdir)]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(l) + "\n" for l in lines)
  capsys.readouterr()
  assert tasks.run(c, workdir, jax.devices()[:1]) == 0
  out = capsys.readouterr().out
  assert f"warning: this run trained on 1 x NVIDIA H200 up to step 10 and resumes on {here}" in out
  assert [l["devices"] for l in metrics.read(workdir) if "devices" in l] == ["1 x NVIDIA H200", here]


def test_timed_evals_fall_on_multiples_of_their_interval():
  """An eval that came 0.08 s late does not push the next one 0.08 s later (over six evals of
  the H100 study that drift reached 0.5 s), and a resumed run keeps the same marks."""
  assert loop.next_mark(10.08, 10.0) == 20.0
  assert loop.next_mark(19.99, 10.0) == 20.0
  assert loop.next_mark(20.0, 10.0) == 30.0  # a mark met is spent
  assert loop.next_mark(0.0, 1.5) == 1.5
  assert loop.next_mark(7.0, 0.0) == float("inf")  # timed evals off


def test_a_timed_eval_lands_on_its_mark_though_the_pace_slows_after_the_aim():
  """The loop's syncs, simulated: the pace drops from 10 to 15 ms a step right after the first
  aim at a 10 s mark. Aiming once from the first pace would land the eval 1,000 steps on, at
  about 15 s; approaching by halves lands it within a step of 10 s, in a dozen syncs."""
  cfg = config_lib.load_preset("configs/mlm.py:tiny")
  cfg.train.max_train_seconds, cfg.eval.every_seconds = 0, 10.0
  pace = lambda step: 0.010 if step < 1 else 0.015
  step, seconds, window_pace, syncs = 0, 0.0, 0.010, 0
  while seconds < 10.0:
    target = loop.timed_step(cfg, step, window_pace, seconds, next_eval_at=10.0)
    window = sum(pace(s) for s in range(step, target))
    step, seconds, window_pace = target, seconds + window, window / (target - step)
    syncs += 1
  assert seconds - 10.0 <= 0.015 + 1e-9, (step, seconds)
  assert syncs <= 12, syncs
  assert loop.timed_step(cfg, 0, 0.010, 0.0, next_eval_at=0.05) == 5  # near: one aim, no halving


@pytest.mark.parametrize("refit_share", [1.0, 0.0], ids=["end-fixed-once", "end-moves"])
def test_a_seconds_horizon_decays_to_zero_where_the_budget_ends(tmp_path, monkeypatch, refit_share):
  """train.schedule_horizon=seconds: the decay ends at the budget (a steps schedule over
  max_steps=100,000 would still be at its peak there). With no tolerance for a change of pace,
  the end moves wherever the pace since it was last set lands the budget on another step; with
  all of it, never."""
  monkeypatch.setattr(horizon_lib, "HORIZON_REFIT_SHARE", refit_share)
  c = config_lib.load_preset("configs/mlm.py:tiny")
  c.train.max_steps, c.train.max_train_seconds, c.train.log_every = 100_000, 4.0, 10
  c.train.schedule_horizon, c.train.warmup_steps = "seconds", 10
  c.eval.every_steps, c.checkpoint.every_steps, c.parallel.data = 0, 100_000, 1
  config_lib.validate(c)
  workdir = str(tmp_path / "horizon")
  assert tasks.run(c, workdir, jax.devices()[:1]) == 0
  train = [l for l in metrics.read(workdir) if "loss" in l]
  # The end is fixed once, and may move later where the pace changed (a busy machine).
  fixed, *moves = [l for l in train if "schedule_end_step" in l]
  end, last, peak = fixed["schedule_end_step"], train[-1], c.train.learning_rate
  # Fixed early: at the first sync after 5% of the budget has passed since the first sync
  # (step 1, after the slower first step), the lines before it being earlier ones.
  first = train[0]
  assert first["step"] == 1 and fixed["step"] < end
  assert fixed["train_seconds"] - first["train_seconds"] >= horizon_lib.HORIZON_PACE_SHARE * 4.0
  for line in train[1:train.index(fixed)]:
    assert line["train_seconds"] - first["train_seconds"] < horizon_lib.HORIZON_PACE_SHARE * 4.0
  # The end is where the budget runs out at the pace measured since that first sync ...
  pace = (fixed["train_seconds"] - first["train_seconds"]) / (fixed["step"] - first["step"])
  assert abs(end - (fixed["step"] + (4.0 - fixed["train_seconds"]) / pace)) <= 1.0
  # ... and every logged rate follows warmup, then a linear decay to 0 at that step (a steps
  # schedule over max_steps=100,000 would still be at its peak) ...
  after = train[train.index(fixed) + 1:]
  rate = lambda count: peak * min(count / 10, (end - count) / (end - 10))
  for line in (after[:after.index(moves[0]) + 1] if moves else after):
    used = line["step"] - 1  # the update of step s used the rate of count s - 1
    assert line["learning_rate"] == pytest.approx(rate(used), rel=1e-5), line
  # ... until the end moves: from there a straight line from the rate it had reached to 0 at
  # the new end, so the rate bends and never jumps. A move inside the warmup (a machine so busy
  # that the pace changes within 10 steps) first rises from that rate to the peak where the
  # warmup ends, then falls to 0 at the new end.
  if moves:
    anchor, moved = moves[0]["step"], moves[0]["schedule_end_step"]
    def moved_rate(count):
      if anchor >= 10:
        return rate(anchor) * (moved - count) / (moved - anchor)
      if count < 10:
        return rate(anchor) + (peak - rate(anchor)) * (count - anchor) / (10 - anchor)
      return peak * (moved - count) / (moved - 10)
    for line in after[after.index(moves[0]) + 1:after.index(moves[1]) + 1 if moves[1:] else None]:
      used = line["step"] - 1
      assert line["learning_rate"] == pytest.approx(moved_rate(used), rel=1e-4), line
    end = moves[-1]["schedule_end_step"]
  rates = [l["learning_rate"] for l in after if l["step"] - 1 >= 10]  # past the warmup
  assert all(b <= a * (1 + 1e-5) for a, b in zip(rates, rates[1:])), rates
  # The rule replayed over the logged syncs gives exactly the logged moves. With no tolerance the
  # end moves wherever the pace since it was set lands the budget on another step (a pace steady
  # to the step leaves it where it is); with all of it, never.
  expected, horizon, set_at = [], fixed["schedule_end_step"], (fixed["step"], fixed["train_seconds"])
  for line in after:
    if line["step"] < horizon:
      moved = horizon_lib.moved_horizon(4.0, line["step"], line["train_seconds"], horizon, set_at, 100_000)
      if moved is not None and moved != horizon:
        expected.append((line["step"], moved))
        horizon, set_at = moved, (line["step"], line["train_seconds"])
  assert [(m["step"], m["schedule_end_step"]) for m in moves] == expected
  if refit_share > 0.5:
    assert not moves
  # It stops at its last end, or at the budget if the pace slowed after it was set.
  assert last["step"] == end or last["train_seconds"] >= 4.0, (last, end)
  # Run again, the finished run does nothing (it once trained one more step each time).
  before = metrics.read(workdir)
  assert tasks.run(c, workdir, jax.devices()[:1]) == 0
  assert metrics.read(workdir) == before


def test_a_warmup_fraction_under_a_seconds_horizon_warms_up_over_that_share_of_the_steps(
    tmp_path, monkeypatch):
  """train.warmup_fraction=0.5 with a seconds horizon: until the end is fixed the rate rises at
  warmup_steps' pace (1,000, slower than the fraction's); from the step that fixes it, a straight
  line up to the peak at half the end's steps, then the decay to 0 at the end. (Half, not a
  smaller share: a loaded 2-core machine once fitted the end at step 12, fixed at step 2, where
  a fifth would put the peak at the fixing step itself.)"""
  monkeypatch.setattr(horizon_lib, "HORIZON_REFIT_SHARE", 1.0)  # the end is fixed once, never moved
  c = config_lib.load_preset("configs/mlm.py:tiny")
  c.train.max_steps, c.train.max_train_seconds, c.train.log_every = 100_000, 4.0, 5
  c.train.schedule_horizon, c.train.warmup_steps, c.train.warmup_fraction = "seconds", 1000, 0.5
  c.eval.every_steps, c.checkpoint.every_steps, c.parallel.data = 0, 100_000, 1
  config_lib.validate(c)
  workdir = str(tmp_path / "share")
  assert tasks.run(c, workdir, jax.devices()[:1]) == 0
  train = [l for l in metrics.read(workdir) if "loss" in l]
  [fixed] = [l for l in train if "schedule_end_step" in l]
  end, peak, anchor = fixed["schedule_end_step"], c.train.learning_rate, fixed["step"]
  warmup = round(c.train.warmup_fraction * end)
  assert anchor < warmup < end
  # It stops at the end, or at the budget if the pace slowed after the end was fixed.
  assert train[-1]["step"] == end or train[-1]["train_seconds"] >= 4.0, (train[-1], end)
  for line in train[:train.index(fixed) + 1]:  # the update of step s used the rate of count s - 1
    assert line["learning_rate"] == pytest.approx(peak * (line["step"] - 1) / 1000, rel=1e-5)
  start = anchor / 1000  # the rate reached where the end was fixed, as a share of the peak
  for line in train[train.index(fixed) + 1:]:
    used = line["step"] - 1
    share = (start + (1 - start) * (used - anchor) / (warmup - anchor) if used < warmup
             else (end - used) / (end - warmup))
    assert line["learning_rate"] == pytest.approx(peak * share, rel=1e-4, abs=1e-9), line
  assert train.index(fixed) + 1 < len(train)  # rates after the fix were logged and checked


def command(workdir, mesh, extra=()):
  data, fsdp = mesh
  return [sys.executable, "-m", "tl_jax.cli", "pretrain", "--config=configs/mlm.py:tiny",
          f"--workdir={workdir}", "--config.train.max_steps=60", "--config.train.log_every=5",
          "--config.eval.every_steps=30", "--config.eval.num_batches=2",
          "--config.checkpoint.every_steps=20", "--config.data.max_train_tokens=200000",
          f"--config.parallel.data={data}", f"--config.parallel.fsdp={fsdp}", *extra]


def restore_params(workdir, mesh):
  """The newest checkpoint's step and parameters, read back through tl_jax's own restore path."""
  config = config_lib.load(os.path.join(workdir, "config.json"))
  setup = tasks.setup(config, workdir, jax.devices("cpu")[: mesh[0] * mesh[1]])
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
  state, _ = ckpt.restore(abstract_with_shardings(setup.program.abstract_state, setup.program.state_shardings))
  ckpt.close()
  return int(state.step), jax.tree.leaves(state.params)


def wait_for_step(workdir, step, proc, timeout=240):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, "the run ended before it could be killed"
    if os.path.exists(path):
      with open(path) as f:
        if any(f'"step": {s},' in f.read() for s in range(step, step + 5)):
          return
    time.sleep(0.05)
  raise AssertionError(f"no step {step} within {timeout}s")


# The seconds horizon with a budget too large to bind: its end is fixed (at max_steps) early in
# each run, kept in the optimizer state, and must survive the kill and resume.
HORIZON = ("--config.train.schedule_horizon=seconds", "--config.train.max_train_seconds=1000000")


# One device with the seconds horizon, eight without: each resume promise once, for CI's time.
@pytest.mark.parametrize("mesh, extra", [((1, 1), HORIZON), ((2, 4), ())],
                         ids=["1x1-seconds-horizon", "2x4"])
def test_sigkill_and_resume_reproduce_the_uninterrupted_run(tmp_path, mesh, extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # bitwise equality is promised on CPU
  if mesh == (1, 1):
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  # A compilation cache of this test's own (as tests/faults/conftest.py gives the fault suite):
  # the interrupted and resumed sessions load the reference's programs instead of compiling them
  # again, about 14 s each on 2 cores. A program that differed would miss and compile afresh.
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  reference = str(tmp_path / "reference")
  subprocess.run(command(reference, mesh, extra), cwd=REPO, env=env, check=True, capture_output=True)

  interrupted = str(tmp_path / "interrupted")
  proc = subprocess.Popen(command(interrupted, mesh, extra), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wait_for_step(interrupted, 35, proc)  # past the step-20 checkpoint, before the step-40 one
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resumed = subprocess.run(command(interrupted, mesh, extra), cwd=REPO, env=env, capture_output=True,
                           text=True)
  assert resumed.returncode == 0, resumed.stderr
  assert "resumed from step" in resumed.stdout

  ref_lines, res_lines = metrics.read(reference), metrics.read(interrupted)
  final = lambda lines, key: [l[key] for l in lines if key in l and l["step"] == 60]
  assert final(res_lines, "loss") == final(ref_lines, "loss")  # bitwise on CPU
  assert final(res_lines, "eval_loss") == final(ref_lines, "eval_loss")
  steps = lambda lines: [(l["step"], "loss" in l) for l in lines]
  if extra:  # a budget makes every session sync after its first step: one more line, at 21
    assert len(set(steps(res_lines))) == len(res_lines) and set(steps(ref_lines)) <= set(steps(res_lines))
  else:
    assert steps(res_lines) == steps(ref_lines)  # no duplicated lines
  seconds = [l["train_seconds"] for l in res_lines]
  assert seconds == sorted(seconds), "train_seconds never go backwards across the restart"
  if extra:  # fixed before the step-20 checkpoint, kept by it: the resumed session fixes nothing
    ends = [l for l in ref_lines if "schedule_end_step" in l]
    assert [l["schedule_end_step"] for l in ends] == [60] and ends[0]["step"] < 20
    assert not [l for l in res_lines if "schedule_end_step" in l and l["step"] > 20]
    peak = config_lib.load(os.path.join(reference, "config.json")).train.learning_rate
    assert final(ref_lines, "learning_rate")[0] == pytest.approx(0.1 * peak)  # (60 - 59) / (60 - 50)
  ref_step, ref_params = restore_params(reference, mesh)
  res_step, res_params = restore_params(interrupted, mesh)
  assert ref_step == res_step == 60
  for a, b in zip(ref_params, res_params):
    np.testing.assert_array_equal(a, b)
