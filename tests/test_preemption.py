"""SIGTERM mid-run saves a checkpoint and exits 143; the same command then resumes."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_STEPS = 60
SIGTERM_AFTER_STEP = 20
# Only the SIGTERM save (and the final one) checkpoint: every_steps is past the run's end.
ARGS = ["--config=configs/mlm.py:tiny", f"--config.train.max_steps={MAX_STEPS}",
        "--config.train.log_every=5", "--config.data.max_train_tokens=200000",
        "--config.checkpoint.every_steps=1000", "--config.eval.every_steps=1000"]


def command(workdir) -> list[str]:
  return [sys.executable, "-m", "tl_jax.cli", "pretrain", f"--workdir={workdir}", *ARGS]


def environment() -> dict:
  env = dict(os.environ)  # read inside the test: the conftest's session fixture set TL_JAX_CACHE
  env["JAX_PLATFORMS"] = "cpu"  # predictable step times, also on a GPU machine
  assert "TL_JAX_CACHE" in env and "xla_force_host_platform_device_count=8" in env["XLA_FLAGS"]
  return env


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """Complete JSON lines of metrics.jsonl (a line being written may be cut short)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return records


def wait_for_train_step(proc, workdir: pathlib.Path, step: int, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if any("loss" in r and r["step"] >= step for r in read_metrics(workdir)):
      return
    assert proc.poll() is None, f"the run ended early with exit code {proc.returncode}"
    time.sleep(0.1)
  pytest.fail(f"no train line with step >= {step} in {timeout:.0f}s")


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigterm_checkpoints_and_same_command_resumes(tmp_path):
  workdir = tmp_path / "run"
  env = environment()

  # First session: terminated once it has trained a little.
  out_path, err_path = tmp_path / "first.out", tmp_path / "first.err"
  with open(out_path, "w") as out, open(err_path, "w") as err:
    proc = subprocess.Popen(command(workdir), cwd=REPO, env=env, stdout=out, stderr=err)
    try:
      wait_for_train_step(proc, workdir, SIGTERM_AFTER_STEP, timeout=90)
      proc.send_signal(signal.SIGTERM)
      code = proc.wait(timeout=30)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  stdout, stderr = out_path.read_text(), err_path.read_text()
  assert code == 143, stdout + stderr
  assert "Traceback" not in stdout + stderr
  last = stdout.strip().splitlines()[-1]
  assert "SIGTERM" in last, last
  match = re.match(r"stopped at step (\d+):", last)
  assert match, last
  stopped = int(match.group(1))
  assert SIGTERM_AFTER_STEP <= stopped < MAX_STEPS
  assert checkpoint_steps(workdir) == [stopped]
  assert (workdir / "checkpoints" / str(stopped) / "state").is_dir()
  assert max(r["step"] for r in read_metrics(workdir)) == stopped

  # Second session: the identical command picks up at the saved step and finishes.
  result = subprocess.run(command(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Traceback" not in result.stdout + result.stderr
  assert f"resumed from step {stopped} " in result.stdout, result.stdout
  assert f"stopped at step {MAX_STEPS}:" in result.stdout.strip().splitlines()[-1]
  assert checkpoint_steps(workdir)[-1] == MAX_STEPS

  records = read_metrics(workdir)
  train_steps = [r["step"] for r in records if "loss" in r]
  assert train_steps[-1] == MAX_STEPS
  assert all(a < b for a, b in zip(train_steps, train_steps[1:])), train_steps
  assert stopped in train_steps  # the line written at the SIGTERM is kept on resume
  seconds = [r["train_seconds"] for r in records]
  assert all(a <= b for a, b in zip(seconds, seconds[1:])), seconds
