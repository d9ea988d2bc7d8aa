"""What the fault suite and the command-line tests share: running `tl-jax` as a user would,
reading what a run left behind, and judging an error message.

Stderr of a refused command must hold exactly one line, `tl-jax: error: <sentence>.`, once
library noise is dropped: absl (through sentencepiece, orbax or XLA) may print its own
`W0000 ...` lines and the `WARNING: All log messages before absl::InitializeLog() ...`
banner, which are not ours to control and are filtered out by `error_lines`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
LIBRARY_NOISE = ("W0000", "WARNING: All log messages")
# A pretraining run that compiles in seconds on one CPU device and takes ~10 ms a step: the
# tiny preset narrowed to width 64 on 32-token sequences, with one small eval batch.
SMALL = ["--config=configs/mlm.py:tiny", "--config.model.d_model=64", "--config.model.d_ff=256",
         "--config.data.seq_len=32", "--config.train.batch_size=8",
         "--config.data.max_train_tokens=200000", "--config.eval.num_batches=1",
         "--config.eval.batch_size=8", "--config.train.log_every=5",
         "--config.checkpoint.every_steps=10"]
# Seconds between SIGTERM and power-off on a pre-empted Google Cloud (spot) VM.
GRACE_SECONDS = 30
# SMALL for long enough to be interrupted several times (about 1.5 s of steps).
LONG_STEPS = 150
LONG = [*SMALL, f"--config.train.max_steps={LONG_STEPS}", "--config.eval.every_steps=50"]


def cli_env(devices: int | None = None, compile_cache: str | None = None) -> dict:
  """The environment of a `tl-jax` subprocess: this checkout's code on the CPU, the session's
  token cache (set by the conftest's session fixture, so read now), `devices` simulated CPU
  devices (default: the suite's 8), and optionally a persistent compilation cache, which
  makes restarts quick without changing what runs."""
  env = dict(os.environ)
  assert "TL_JAX_CACHE" in env and "xla_force_host_platform_device_count=8" in env["XLA_FLAGS"]
  env["JAX_PLATFORMS"] = "cpu"  # predictable, and bitwise equality is promised on CPU
  env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  if compile_cache:
    env.update(JAX_COMPILATION_CACHE_DIR=compile_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def tl_jax(*args) -> list[str]:
  return [sys.executable, "-m", "tl_jax.cli", *map(str, args)]


def run(args: list[str], env: dict, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
  """Runs a command from the repository root to its end, capturing its output as text."""
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                        **kwargs)


# ---------------------------------------------------------------------------
# What a run leaves behind.


def read_metrics(workdir) -> list[dict]:
  """Complete JSON lines of metrics.jsonl (a line being written may be cut short)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return records


def train_lines(workdir) -> list[dict]:
  return [r for r in read_metrics(workdir) if "loss" in r]


def checkpoint_steps(workdir) -> list[int]:
  root = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def checkpoint_meta(workdir, step: int) -> dict:
  """The JSON item of a checkpoint: stopwatch, data position, checksum."""
  return json.loads((pathlib.Path(workdir) / "checkpoints" / str(step) / "meta" / "metadata").read_text())


def snapshot(root) -> dict[str, str]:
  """Relative path -> sha256 of every file under `root`."""
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def wait_for(condition, proc: subprocess.Popen, timeout: float, what: str, poll: float = 0.005):
  """Polls `condition()` until it returns something true, which is returned; fails the test if
  the process ends first or `timeout` seconds pass."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    found = condition()
    if found:
      return found
    if proc.poll() is not None:
      pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
    time.sleep(poll)
  pytest.fail(f"no {what} within {timeout:.0f}s")


def terminate_when(argv: list[str], env: dict, condition, timeout: float, what: str, stdout,
                   stderr=subprocess.STDOUT, signum: int = signal.SIGTERM,
                   group: bool = False) -> tuple[int, float]:
  """Starts `argv`, sends SIGTERM (or `signum`) once `condition()` holds, and returns (exit code,
  seconds from the signal to exit); a process still alive after GRACE_SECONDS is killed (and
  the wait raises). `group`: the process leads a group of its own and the signal goes to the
  whole group, children included, as `timeout` and Slurm send it."""
  proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=stdout, stderr=stderr,
                          start_new_session=group)
  try:
    wait_for(condition, proc, timeout, what)
    sent = time.monotonic()
    if group:
      os.killpg(proc.pid, signum)
    else:
      proc.send_signal(signum)
    code = proc.wait(timeout=GRACE_SECONDS)
    return code, time.monotonic() - sent
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    if group:  # nothing of the group outlives the test
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


def reached_step(workdir, step: int):
  """A condition for wait_for: a train line at `step` or later is in metrics.jsonl."""
  return lambda: any("loss" in r and r["step"] >= step for r in read_metrics(workdir))


def logged_step(out) -> int:
  """The last step a session printed a train line for (0 if none), from its captured output:
  unlike metrics.jsonl, that holds no lines of earlier sessions."""
  steps = [int(m.group(1)) for m in re.finditer(r"^step (\d+)/", pathlib.Path(out).read_text(), re.M)]
  return max(steps, default=0)


def final_params(workdir):
  """The newest checkpoint's step and parameters, read back through tl_jax's own restore on
  one device (checkpoints restore onto any mesh)."""
  import jax
  from tl_jax import config as config_lib
  from tl_jax import tasks
  from tl_jax.train.checkpoint import Checkpointer, abstract_with_shardings
  config = config_lib.load(os.path.join(workdir, "config.json"))
  setup = tasks.setup(config, str(workdir), jax.devices()[:1])
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
  with jax.set_mesh(setup.mesh):
    state, _ = ckpt.restore(abstract_with_shardings(setup.program.abstract_state, setup.program.state_shardings))
  ckpt.close()
  return int(state.step), jax.tree.leaves(state.params)


def assert_same_params(workdir, reference) -> None:
  """The two runs' newest checkpoints hold bitwise-equal parameters."""
  import numpy as np
  _, params = final_params(workdir)
  _, expected = final_params(reference)
  for a, b in zip(expected, params):
    np.testing.assert_array_equal(a, b)


def resume_to_the_end(argv: list[str], env: dict, stopped: int) -> subprocess.CompletedProcess:
  """Runs an interrupted command again; it must resume from checkpoint `stopped` and finish."""
  result = run(argv, env)
  assert result.returncode == 0, result.stdout + result.stderr
  assert f"resumed from step {stopped} " in result.stdout, result.stdout
  return result


# ---------------------------------------------------------------------------
# Judging an error.


def error_lines(stderr: str) -> list[str]:
  """Non-empty stderr lines, without the library noise described above."""
  return [line for line in stderr.splitlines()
          if line.strip() and not line.startswith(LIBRARY_NOISE)]


def assert_one_sentence(result, *fragments, code: int = 2) -> str:
  """Exit `code`, no traceback, and stderr is one `tl-jax: error:` sentence naming `fragments`;
  returns the sentence."""
  return assert_sentence(result.returncode, result.stdout, result.stderr, *fragments, code=code)


def assert_sentence(returncode: int, stdout: str, stderr: str, *fragments, code: int = 2) -> str:
  output = stdout + stderr
  assert "Traceback" not in output, output
  assert returncode == code, output
  lines = error_lines(stderr)
  assert len(lines) == 1, stderr
  message = lines[0]
  assert message.startswith("tl-jax: error: "), message
  assert message.rstrip().endswith("."), message
  for fragment in fragments:
    assert fragment in message, message
  return message
