"""SIGTERM mid-run saves a checkpoint and exits 143 within the grace period; the same
command then resumes. (tests/faults/test_sigterm.py sends it mid-write and mid-compile.)"""

import re
import subprocess

import pytest

from faults.harness import (GRACE_SECONDS, REPO, checkpoint_steps, cli_env, read_metrics,
                            reached_step, terminate_when, tl_jax)

MAX_STEPS = 60
SIGTERM_AFTER_STEP = 20
# Only the SIGTERM save (and the final one) checkpoint: every_steps is past the run's end.
ARGS = ["--config=configs/mlm.py:tiny", f"--config.train.max_steps={MAX_STEPS}",
        "--config.train.log_every=5", "--config.data.max_train_tokens=200000",
        "--config.checkpoint.every_steps=1000", "--config.eval.every_steps=1000"]


def command(workdir) -> list[str]:
  return tl_jax("pretrain", f"--workdir={workdir}", *ARGS)


@pytest.mark.slow
def test_sigterm_checkpoints_and_same_command_resumes(tmp_path, reliability):
  workdir = tmp_path / "run"
  # A compilation cache of its own, as the fault suite's: the second session loads the programs
  # the first compiled (a program that differed would miss and compile afresh).
  env = cli_env(compile_cache=str(tmp_path / "xla"))

  # First session: terminated once it has trained a little.
  out_path, err_path = tmp_path / "first.out", tmp_path / "first.err"
  with open(out_path, "w") as out, open(err_path, "w") as err:
    code, seconds = terminate_when(command(workdir), env, reached_step(workdir, SIGTERM_AFTER_STEP),
                                   90, f"step {SIGTERM_AFTER_STEP}", out, err)
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
  reliability("SIGTERM (pre-emption)", "SIGTERM between training steps (8 simulated devices)",
              f"exit 143 after {seconds:.1f}s (grace {GRACE_SECONDS}s) with checkpoint {stopped} "
              "saved at the step it stopped")

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
  clock = [r["train_seconds"] for r in records]
  assert all(a <= b for a, b in zip(clock, clock[1:])), clock
  reliability("SIGTERM (pre-emption)", "the same command after that SIGTERM",
              f"resumed from step {stopped} and finished at step {MAX_STEPS}; every step logged "
              "once and train_seconds never decreases")
