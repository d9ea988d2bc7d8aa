"""SIGTERM, as a pre-emptible VM gets it, at the awkward moments: mid-write and mid-compile.

tests/test_preemption.py sends it between training steps. Here one run is terminated while
an asynchronous checkpoint is being written, then again while its restart compiles, and is
finally run to the end: each SIGTERM must end the process within the grace period with exit
143 and a checkpoint of every step trained, and the finished run must equal an
uninterrupted one. Another run gets SIGTERM as `timeout` and Slurm send it, to its whole
process group, while a compile of its waits on a child process, as XLA waits on ptxas for a GPU
kernel: the child dies of the signal and the compile fails, and the run must still save.
"""

import re
import sys

import pytest

from faults.harness import (GRACE_SECONDS, LONG, LONG_STEPS, assert_same_params, checkpoint_steps,
                            read_metrics, resume_to_the_end, run, terminate_when, tl_jax)

pytestmark = pytest.mark.slow


def terminate_run_when(condition, workdir, out, env, what: str):
  """Starts the run, sends SIGTERM once `condition(out_text)` holds, and returns
  (exit code, seconds from SIGTERM to exit, output)."""
  with open(out, "w") as f:
    code, seconds = terminate_when(tl_jax("pretrain", f"--workdir={workdir}", *LONG), env,
                                   lambda: condition(out.read_text()), 120, what, f)
  return code, seconds, out.read_text()


def test_sigterm_during_a_checkpoint_write_and_during_compilation(tmp_path, env, uninterrupted,
                                                                  reliability):
  workdir = tmp_path / "run"
  ckpts = workdir / "checkpoints"

  written = []

  def writing(_):
    written[:] = [int(p.name.split(".")[0]) for p in ckpts.iterdir()
                  if ".orbax-checkpoint-tmp" in p.name] if ckpts.is_dir() else []
    return written

  code, seconds, out = terminate_run_when(writing, workdir, tmp_path / "first.out", env,
                                          "an asynchronous checkpoint write")
  assert code == 143 and "Traceback" not in out, out
  last = out.strip().splitlines()[-1]
  stopped = int(re.match(r"stopped at step (\d+): SIGTERM", last).group(1))
  assert checkpoint_steps(workdir)[-2:] == [written[0], stopped], out  # the write under way too
  assert max(r["step"] for r in read_metrics(workdir)) == stopped
  reliability("SIGTERM (pre-emption)", "SIGTERM while an asynchronous checkpoint is being written",
              f"exit 143 after {seconds:.1f}s (grace {GRACE_SECONDS}s): checkpoint {written[0]}, "
              f"being written, completed and checkpoint {stopped} saved at the step it stopped")

  code, seconds, out = terminate_run_when(lambda text: "resumed from step" in text, workdir,
                                          tmp_path / "second.out", env, "the restart's restore")
  assert code == 143 and "Traceback" not in out, out
  assert f"resumed from step {stopped} " in out, out
  assert "SIGTERM before training began" in out.strip().splitlines()[-1], out
  assert checkpoint_steps(workdir)[-1] == stopped
  reliability("SIGTERM (pre-emption)", "SIGTERM while a resumed run restores and compiles",
              f"exit 143 after {seconds:.1f}s, no step trained and nothing new to save; "
              f"checkpoint {stopped} untouched")

  resume_to_the_end(tl_jax("pretrain", f"--workdir={workdir}", *LONG), env, stopped)
  at_end = lambda rs: [r.get("loss") for r in rs if r["step"] == LONG_STEPS and "loss" in r]
  assert at_end(read_metrics(workdir)) == at_end(read_metrics(uninterrupted))
  assert_same_params(workdir, uninterrupted)
  reliability("SIGTERM (pre-emption)", "the same command after both SIGTERMs",
              f"resumed from checkpoint {stopped} and finished with parameters and loss bitwise "
              "equal to an uninterrupted run")


# `tl-jax pretrain` whose sync at step COMPILE_AT (a log line's, between checkpoints 10 and 20)
# compiles as XLA does on a GPU: through a child process (CHILD's command) whose failure fails
# it. The default child announces itself before it waits, so that a test signalling the group on
# that line reaches a child that exists: a signal sent between the parent's fork and the child's
# start would find no child, and the compile would wait out its whole minute.
COMPILE_AT = 15
COMPILER_CHILD = "sh -c 'echo compiling through a child process; exec sleep 60'"
WITH_A_COMPILER_CHILD = f"""
import os, shlex, subprocess, sys
from tl_jax import cli
from tl_jax.train import loop

timed_step = loop.timed_step

def compiling(cfg, step, *args):
  if step == {COMPILE_AT}:
    code = subprocess.call(shlex.split(os.environ.get("CHILD", {COMPILER_CHILD!r})))
    raise RuntimeError(f"ptxas exited with non-zero error code {{abs(code)}}")
  return timed_step(cfg, step, *args)

loop.timed_step = compiling
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_compile_failing_without_a_signal_still_fails_the_run(tmp_path, env):
  """The loop takes an error for a signal's doing only after a signal: without one, a failed
  compile is the run's failure, reported as such, with nothing saved in its name."""
  workdir = tmp_path / "run"
  result = run([sys.executable, "-c", WITH_A_COMPILER_CHILD, "pretrain", f"--workdir={workdir}",
                *LONG], {**env, "CHILD": "sh -c 'exit 3'"})
  assert result.returncode == 1, result.stdout + result.stderr
  assert "RuntimeError: ptxas exited with non-zero error code 3" in result.stderr, result.stderr
  assert "taken as its doing" not in result.stdout + result.stderr
  assert checkpoint_steps(workdir) == [10]


def test_sigterm_to_the_group_while_a_compiler_child_runs(tmp_path, env, uninterrupted,
                                                          reliability):
  workdir = tmp_path / "run"
  out = tmp_path / "first.out"
  with open(out, "w") as f:
    code, seconds = terminate_when(
        [sys.executable, "-c", WITH_A_COMPILER_CHILD, "pretrain", f"--workdir={workdir}", *LONG],
        env, lambda: "compiling through a child process" in out.read_text(), 120,
        "the compile's child process", f, group=True)
  text = out.read_text()
  assert code == 143, text
  assert "Traceback" not in text, text
  assert "ptxas exited with non-zero error code 15" in text, text  # the child died of SIGTERM
  assert re.match(rf"stopped at step {COMPILE_AT}: SIGTERM", text.strip().splitlines()[-1]), text
  assert checkpoint_steps(workdir)[-2:] == [10, COMPILE_AT]
  reliability("SIGTERM (pre-emption)",
              "SIGTERM to the process group while a compile waits on a child (as ptxas on a GPU)",
              f"the child died and failed the compile; exit 143 after {seconds:.1f}s with "
              f"checkpoint {COMPILE_AT}, the step trained before the error, saved")

  resume_to_the_end(tl_jax("pretrain", f"--workdir={workdir}", *LONG), env, COMPILE_AT)
  assert_same_params(workdir, uninterrupted)
  reliability("SIGTERM (pre-emption)", "the same command after that SIGTERM",
              f"resumed from checkpoint {COMPILE_AT} and finished with parameters bitwise equal "
              "to an uninterrupted run")
