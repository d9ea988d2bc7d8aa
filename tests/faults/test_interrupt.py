"""Ctrl-C and a second job on the same workdir, as a user at a terminal meets them.

Ctrl-C (SIGINT) is handled like a pre-emption: the step being trained is saved and the process
exits 130; the same command resumes from that checkpoint and ends bitwise equal to an
uninterrupted run. A second `tl-jax pretrain` on a workdir a job is using exits 2 at once,
naming the holder, and the first job finishes as if it had been alone. A lock left by a job
that is gone is taken over with a warning.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from faults.harness import (LONG, LONG_STEPS, REPO, SMALL, assert_same_params, checkpoint_steps,
                            error_lines, logged_step, read_metrics, resume_to_the_end, run,
                            terminate_when, tl_jax, wait_for)

pytestmark = pytest.mark.slow
# Checkpoints only at the end: whatever Ctrl-C keeps, it saved itself.
RARE_CHECKPOINTS = [*LONG, "--config.checkpoint.every_steps=1000"]


def test_ctrl_c_saves_the_step_and_the_same_command_resumes_exactly(tmp_path, env, uninterrupted,
                                                                    reliability):
  workdir = tmp_path / "run"
  out = tmp_path / "first.out"
  argv = tl_jax("pretrain", f"--workdir={workdir}", *RARE_CHECKPOINTS)
  with open(out, "w") as f:
    code, seconds = terminate_when(argv, env, lambda: logged_step(out) >= 25, 120, "step 25", f,
                                   signum=signal.SIGINT)
  text = out.read_text()
  assert code == 130 and "Traceback" not in text, text
  assert "Ctrl-C: saving a checkpoint of the step being trained" in text
  stopped = int(re.search(r"stopped at step (\d+): SIGINT \(Ctrl-C\): checkpoint saved", text).group(1))
  assert 25 <= stopped < LONG_STEPS
  assert checkpoint_steps(workdir) == [stopped], text  # the only checkpoint is Ctrl-C's
  assert max(r["step"] for r in read_metrics(workdir)) == stopped
  reliability("SIGINT (Ctrl-C)", "Ctrl-C after a logged step, 1,000 steps before the next checkpoint",
              f"exit 130 after {seconds:.1f}s with checkpoint {stopped}, the step it stopped at")

  resume_to_the_end(argv, env, stopped)
  assert_same_params(workdir, uninterrupted)
  at_end = lambda rs: [r.get("loss") for r in rs if r["step"] == LONG_STEPS and "loss" in r]
  assert at_end(read_metrics(workdir)) == at_end(read_metrics(uninterrupted))
  reliability("SIGINT (Ctrl-C)", "the same command after Ctrl-C",
              f"resumed from checkpoint {stopped} and finished with parameters and loss bitwise "
              "equal to an uninterrupted run")


def test_a_second_job_on_the_workdir_is_refused_and_the_first_runs_alone(tmp_path, env,
                                                                        uninterrupted, reliability):
  workdir = tmp_path / "run"
  out = tmp_path / "first.out"
  argv = tl_jax("pretrain", f"--workdir={workdir}", *LONG)
  with open(out, "w") as f:
    first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
      def written_lock():
        try:
          return json.loads((workdir / "lock.json").read_text())
        except (FileNotFoundError, ValueError):  # not created yet, or created and not yet written
          return None
      holder = wait_for(written_lock, first, 120, "the first job's lock")
      started = time.monotonic()
      second = run(argv, env)
      seconds = time.monotonic() - started
      assert first.wait(timeout=300) == 0, out.read_text()
    finally:
      if first.poll() is None:
        first.kill()
        first.wait()
  assert second.returncode == 2, second.stdout + second.stderr
  [message] = error_lines(second.stderr)
  assert message == (
      f"tl-jax: error: workdir {workdir} is in use by `{holder['command']}` (pid {first.pid} on "
      f"host {socket.gethostname()}, started {holder['started']}); wait for that job to end or "
      f"stop it, or use another --workdir (if it is not running, delete {workdir}/lock.json).")
  assert "compiled in" not in second.stdout  # refused before building anything
  steps = [r["step"] for r in read_metrics(workdir) if "loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == LONG_STEPS  # each step once
  assert_same_params(workdir, uninterrupted)
  assert not (workdir / "lock.json").exists()  # released at the end
  reliability("One job per workdir", "the same `tl-jax pretrain` started again while it runs",
              f"the second exits 2 after {seconds:.1f}s, before compiling, naming the first "
              "(pid, host, start time); the first finishes bitwise equal to a run alone, each "
              "step once in metrics.jsonl")


def test_a_lock_left_by_a_dead_job_is_taken_over(copy_of_finished, env, reliability):
  workdir = copy_of_finished
  dead = subprocess.Popen(["true"])
  dead.wait()
  (workdir / "lock.json").write_text(json.dumps(
      {"host": socket.gethostname(), "pid": dead.pid, "command": "tl-jax pretrain (killed)",
       "started": "2026-12-01T00:00:00", "token": "0"}))
  result = run(tl_jax("pretrain", f"--workdir={workdir}", *SMALL, "--config.train.max_steps=20"),
               env)
  assert result.returncode == 0, result.stdout + result.stderr
  warning = next(l for l in result.stdout.splitlines() if "taking over the lock" in l)
  assert f"pid {dead.pid} is not running on this host" in warning
  assert "nothing to do: the run already reached train.max_steps=20" in result.stdout
  assert not (workdir / "lock.json").exists()
  reliability("One job per workdir", "a lock.json left by a job killed with SIGKILL (its pid gone)",
              f"taken over with a warning (`{warning.strip()}`); the command runs as usual")


def test_a_lock_without_heartbeat_from_another_host_is_stale(tmp_path):
  from tl_jax import lock
  path = tmp_path / "lock.json"
  path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "command": "tl-jax pretrain",
                              "started": "2026-12-01T00:00:00"}))
  with pytest.raises(lock.UserError, match="is in use by `tl-jax pretrain` .pid 1 on host elsewhere"):
    lock.WorkdirLock(str(tmp_path), "tl-jax pretrain").acquire()  # fresh heartbeat: held
  old = time.time() - lock.STALE_SECONDS - 1
  os.utime(path, (old, old))
  taker = lock.WorkdirLock(str(tmp_path), "tl-jax pretrain")
  taker.acquire()
  assert taker.mine()
  taker.release()
  assert not path.exists()
