"""SIGKILL at random moments, each followed by the same command: nothing is lost.

One pretraining run is killed six times (at start-up, at random steps, twice the moment an
asynchronous checkpoint write is under way, once just after a checkpoint is published) and
restarted each time; it must end with the parameters and losses of an uninterrupted run,
bit for bit (CPU), and with a training clock that never went backwards or counted twice.
The moments come from a seeded generator: TL_JAX_FAULT_SEED=N replays a schedule.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from faults.harness import (LONG, LONG_STEPS as MAX_STEPS, REPO, checkpoint_meta,
                            checkpoint_steps, final_params, logged_step, read_metrics, run, tl_jax,
                            wait_for)

pytestmark = pytest.mark.slow
TMP = ".orbax-checkpoint-tmp"
MOMENTS = {"start-up": "during start-up (import, restore or compile)",
           "random step": "at a random step", "checkpoint write": "during an asynchronous checkpoint write",
           "just published": "just after a checkpoint was published"}


def writes_in_flight(workdir: pathlib.Path) -> dict:
  """Checkpoint writes under way: temporary directory name -> inode (a rewrite of the same step
  after a restart gets a new one)."""
  found = {}
  try:
    with os.scandir(workdir / "checkpoints") as entries:
      for entry in entries:
        if TMP in entry.name:
          found[entry.name] = entry.inode()
  except FileNotFoundError:
    pass
  return found


def kill_when(kind: str, proc, workdir: pathlib.Path, out: pathlib.Path, rng: random.Random,
              resumed: int) -> str:
  """Waits for the moment `kind`, sends SIGKILL, and says where it landed."""
  if kind == "start-up":
    time.sleep(rng.uniform(0.3, 2.5))  # importing, restoring, compiling, or the first steps
  elif kind == "random step":
    target = resumed + rng.randint(2, 15)
    wait_for(lambda: logged_step(out) >= target, proc, 120, f"step {target}")
    time.sleep(rng.uniform(0.0, 0.05))
  elif kind == "checkpoint write":
    before = writes_in_flight(workdir)
    started = wait_for(lambda: {n: i for n, i in writes_in_flight(workdir).items() if before.get(n) != i},
                       proc, 120, "an asynchronous checkpoint write")
  elif kind == "just published":
    known = set(checkpoint_steps(workdir))
    wait_for(lambda: set(checkpoint_steps(workdir)) - known, proc, 120, "a new checkpoint")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  step = logged_step(out)
  where = f"after step {step} was logged" if step else "before any step was logged"
  if kind == "checkpoint write":
    left = writes_in_flight(workdir)
    torn = [n.split(".")[0] for n, i in started.items() if left.get(n) == i]
    where += (f"; the write of checkpoint {', '.join(torn)} was cut short" if torn else
              "; the write had just finished")
  return where


def test_sigkill_at_random_moments_loses_nothing(tmp_path, env, uninterrupted, reliability):
  seed = int(os.environ.get("TL_JAX_FAULT_SEED") or random.SystemRandom().randrange(10**6))
  rng = random.Random(seed)
  context = f"(replay with TL_JAX_FAULT_SEED={seed})"
  reference, workdir = uninterrupted, tmp_path / "killed"

  kinds = ["random step", "checkpoint write", "just published", "random step", "checkpoint write"]
  rng.shuffle(kinds)
  kinds.insert(0, "start-up")
  clock_at = {}  # checkpoint step -> its saved train_seconds, read before each restart
  resumes = []
  resumed = 0
  for i, kind in enumerate(kinds):
    with open(tmp_path / f"session{i}.out", "w") as out:
      proc = subprocess.Popen(tl_jax("pretrain", f"--workdir={workdir}", *LONG), cwd=REPO, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
      try:
        where = kill_when(kind, proc, workdir, tmp_path / f"session{i}.out", rng, resumed)
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    if kind == "checkpoint write":  # writes take ~150 ms here; polling every 5 ms catches them
      assert "cut short" in where, f"the kill missed the write {context}: {where}"
    steps = checkpoint_steps(workdir)
    for step in steps:
      clock_at.setdefault(step, checkpoint_meta(workdir, step)["stopwatch"]["train_seconds"])
    output = (tmp_path / f"session{i}.out").read_text()
    if i:
      assert "Traceback" not in output, output
      assert (f"resumed from step {resumed} " in output) if resumed else "resumed" not in output, output
    resumes.append(resumed)
    reliability("SIGKILL and restart", f"SIGKILL {MOMENTS[kind]} ({where})",
                f"the restart resumed from {f'checkpoint {steps[-1]}' if steps else 'the start'}"
                " with no error")
    resumed = steps[-1] if steps else 0

  final = run(tl_jax("pretrain", f"--workdir={workdir}", *LONG), env)
  assert final.returncode == 0, final.stdout + final.stderr
  assert "Traceback" not in final.stdout + final.stderr
  assert (f"resumed from step {resumed} " in final.stdout) if resumed else True, final.stdout
  resumes.append(resumed)

  # The same run as the uninterrupted one, bit for bit.
  ref_lines, lines = read_metrics(reference), read_metrics(workdir)
  assert [r["step"] for r in lines] == [r["step"] for r in ref_lines], context  # none twice
  at_end = lambda rs, key: [r[key] for r in rs if key in r and r["step"] == MAX_STEPS]
  assert at_end(lines, "loss") == at_end(ref_lines, "loss"), context
  assert at_end(lines, "eval_loss") == at_end(ref_lines, "eval_loss"), context
  ref_step, ref_params = final_params(reference)
  step, params = final_params(workdir)
  assert ref_step == step == MAX_STEPS
  for a, b in zip(ref_params, params):
    np.testing.assert_array_equal(a, b, err_msg=context)

  # The training clock: never backwards, and each restart continues from its checkpoint's clock,
  # so the seconds of work lost with a kill are not counted (nor counted twice).
  seconds = [r["train_seconds"] for r in lines]
  assert seconds == sorted(seconds), context
  by_step = {r["step"]: r for r in lines if "loss" in r}
  for start in sorted(set(resumes) - {0}):
    assert by_step[start]["train_seconds"] == clock_at[start], (start, context)
    later = [r["train_seconds"] for r in lines if r["step"] > start]
    assert later and later[0] > clock_at[start], (start, context)
  reliability("SIGKILL and restart", f"{len(kinds)} SIGKILLs at the moments above (seed {seed}), "
              "then the same command to the end",
              "final parameters, loss and eval loss bitwise equal to an uninterrupted run; every "
              "step logged once; train_seconds never decreases and each restart continues from "
              "its checkpoint's clock")


def test_a_killed_compress_resumes_with_the_missing_points_only(copy_of_finished, env, reliability):
  """SIGKILL to `tl-jax compress` mid-grid (here a masked LM's, by eval loss), then the same
  command: the points measured before the kill are skipped and each point is in the file once."""
  from tl_jax import config as config_lib
  from tl_jax.compress import grid
  workdir = copy_of_finished
  results = workdir / grid.RESULTS
  argv = tl_jax("compress", "--config=configs/compress.py:quick", f"--workdir={workdir}",
                "--config.analysis=False")
  proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    wait_for(lambda: results.exists() and results.read_text().count("\n") >= 3, proc, 240,
             "three measured points")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  kept = [json.loads(l)["point"] for l in results.read_text().splitlines(keepends=True)
          if l.endswith("\n")]
  again = run(argv, env)
  assert again.returncode == 0, again.stdout + again.stderr
  assert "taking over the lock" in again.stdout  # the killed job's lock.json, its pid gone
  names = [p.name for p in grid.points(config_lib.load_preset("configs/compress.py:quick"))]
  skipped = [n for n in names if f"{n}: measured already with these settings" in again.stdout]
  assert skipped == kept[1:]  # all but the reference, which is always evaluated again
  assert [json.loads(l)["point"] for l in results.read_text().splitlines()] == names
  reliability("SIGKILL and restart", f"`tl-jax compress` (quick grid) killed after {len(kept)} of "
              f"{len(names)} points, then the same command",
              f"the re-run skips the {len(skipped)} points measured with the same settings, "
              "measures the rest, and compress.jsonl holds each point once")
