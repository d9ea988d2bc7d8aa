"""Multi-host training through jax.distributed, as on a TPU pod or a GPU cluster, on localhost.

Two processes with 4 CPU devices each (gloo collectives) train one FSDP mesh over all 8
devices, so every parameter is split across both processes and every checkpoint holds shards
written by each. One process alone is sent SIGTERM (hosts of a pod learn of a pre-emption at
different moments); both must stop at the same step with a checkpoint, and the same command
must resume them to the end, where the loss equals one process's with 8 devices.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tl_jax.errors import UserError
from tl_jax.parallel import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_STEPS = 30
SIGTERM_AFTER_STEP = 5
# A small model (fast compiles on 2 cores); FSDP over every device of both processes.
ARGS = ["--config=configs/mlm.py:tiny", f"--config.train.max_steps={MAX_STEPS}",
        "--config.model.num_layers=1", "--config.model.d_model=64", "--config.model.d_ff=256",
        "--config.data.max_train_tokens=200000", "--config.train.log_every=5",
        "--config.eval.every_steps=1000", "--config.eval.num_batches=1", "--config.eval.batch_size=16",
        "--config.checkpoint.every_steps=1000", "--config.parallel.preset=fsdp"]
# Float32 rounding only: gloo sums the gradients across processes in another order than XLA's
# in-process all-reduce (measured: 2e-7 relative after 20 steps). Process 1 feeding process 0's
# rows instead of its own moved the final loss by 1.3e-3 relative.
RTOL = 1e-5


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(devices: int, **extra) -> dict:
  env = dict(os.environ)  # read inside the test: the conftest's session fixture set TL_JAX_CACHE
  assert "TL_JAX_CACHE" in env
  for name in list(env):  # no multi-process setting of the caller's leaks in
    if name.startswith(("TL_JAX_COORDINATOR", "TL_JAX_NUM_PROCESSES", "TL_JAX_PROCESS_ID",
                        "TL_JAX_DISTRIBUTED", "SLURM_", "OMPI_")):
      del env[name]
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
  return env


def command(workdir) -> list[str]:
  return [sys.executable, "-m", "tl_jax.cli", "pretrain", f"--workdir={workdir}", *ARGS]


def start_job(workdir, logs: pathlib.Path, tag: str) -> list[subprocess.Popen]:
  """Both processes of a 2 x 4-device job, stdout+stderr of process i in logs/TAG.i."""
  port = free_port()
  procs = []
  for i in range(2):
    env = environment(4, TL_JAX_COORDINATOR=f"127.0.0.1:{port}", TL_JAX_NUM_PROCESSES="2",
                      TL_JAX_PROCESS_ID=str(i))
    with open(logs / f"{tag}.{i}", "w") as out:
      procs.append(subprocess.Popen(command(workdir), cwd=REPO, env=env, stdout=out,
                                    stderr=subprocess.STDOUT))
  return procs


def wait_all(procs, timeout: float) -> list[int]:
  deadline = time.monotonic() + timeout
  try:
    return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:  # a line being written
      pass
  return out


def final(records: list[dict]) -> tuple[float, float]:
  train = [r for r in records if "loss" in r]
  evals = [r for r in records if "eval_loss" in r]
  assert train[-1]["step"] == MAX_STEPS and evals[-1]["step"] == MAX_STEPS
  return train[-1]["loss"], evals[-1]["eval_loss"]


@pytest.mark.slow
def test_two_processes_resume_to_the_loss_of_one(tmp_path):
  # The reference: one process, 8 devices, uninterrupted.
  single = tmp_path / "single"
  result = subprocess.run(command(single), cwd=REPO, env=environment(8), capture_output=True,
                          text=True, timeout=240)
  assert result.returncode == 0, result.stdout + result.stderr
  reference = read_metrics(single)

  # Session 1: two processes; SIGTERM to process 1 only, once training is under way.
  multi, logs = tmp_path / "multi", tmp_path
  procs = start_job(multi, logs, "first")
  try:
    deadline = time.monotonic() + 180
    while not any("loss" in r and r["step"] >= SIGTERM_AFTER_STEP for r in read_metrics(multi)):
      assert time.monotonic() < deadline, "no training line within 180 s"
      assert all(p.poll() is None for p in procs), [(logs / f"first.{i}").read_text() for i in range(2)]
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
  finally:
    codes = wait_all(procs, timeout=180)
  outputs = [(logs / f"first.{i}").read_text() for i in range(2)]
  assert codes == [143, 143], outputs
  assert "Traceback" not in "".join(outputs)
  match = re.search(r"stopped at step (\d+): SIGTERM", outputs[0])
  assert match, outputs[0]
  stopped = int(match.group(1))
  assert SIGTERM_AFTER_STEP < stopped < MAX_STEPS
  checkpoints = sorted(int(p.name) for p in (multi / "checkpoints").iterdir() if p.name.isdigit())
  assert checkpoints == [stopped]
  # Process 0 alone reports: the other prints no progress and writes no metric lines twice.
  assert "multi-host: 2 processes (explicit), 8 devices, 4 on this one" in outputs[0]
  assert not re.search(r"^(step|stopped|compiled|multi-host)", outputs[1], re.M), outputs[1]
  steps = [r["step"] for r in read_metrics(multi) if "loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == stopped

  # Session 2: the same command on both processes resumes from that checkpoint and finishes.
  procs = start_job(multi, logs, "second")
  codes = wait_all(procs, timeout=240)
  outputs = [(logs / f"second.{i}").read_text() for i in range(2)]
  assert codes == [0, 0], outputs
  assert f"resumed from step {stopped} " in outputs[0]
  assert f"stopped at step {MAX_STEPS}: reached train.max_steps" in outputs[0]

  records = read_metrics(multi)
  train_steps = [r["step"] for r in records if "loss" in r]
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == MAX_STEPS
  loss, eval_loss = final(records)
  ref_loss, ref_eval = final(reference)
  assert loss == pytest.approx(ref_loss, rel=RTOL)
  assert eval_loss == pytest.approx(ref_eval, rel=RTOL)
  assert reference[0]["eval_loss"] - ref_eval > 0.5, "the run must learn for the comparison to mean anything"
  # The steps both logged agree all along, not only at the end.
  ref_by_step = {r["step"]: r["loss"] for r in reference if "loss" in r}
  for r in records:
    if "loss" in r and r["step"] in ref_by_step:
      assert r["loss"] == pytest.approx(ref_by_step[r["step"]], rel=RTOL), r["step"]


# ---------------------------------------------------------------------------
# Which start the environment asks for, and the errors for inconsistent ones (no jax call).

SLURM_TASK = {"SLURM_JOB_ID": "42", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
              "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("environ,tpu,expected", [
    ({}, False, distributed.Plan("single")),
    ({"TL_JAX_COORDINATOR": "10.0.0.2:1234", "TL_JAX_NUM_PROCESSES": "4", "TL_JAX_PROCESS_ID": "3"},
     False, distributed.Plan("explicit", "10.0.0.2:1234", 4, 3)),
    ({"JAX_COORDINATOR_ADDRESS": "h0:99", "TL_JAX_NUM_PROCESSES": "2", "TL_JAX_PROCESS_ID": "0"},
     False, distributed.Plan("explicit", "h0:99", 2, 0)),
    (SLURM_TASK, False, distributed.Plan("slurm")),
    ({**SLURM_TASK, "SLURM_NTASKS": "1"}, False, distributed.Plan("single")),  # one task: nothing to join
    ({**SLURM_TASK, "TL_JAX_DISTRIBUTED": "off"}, False, distributed.Plan("single")),
    ({"OMPI_MCA_orte_hnp_uri": "1.2.3.4:5", "OMPI_COMM_WORLD_SIZE": "8"}, False,
     distributed.Plan("openmpi")),
    ({}, True, distributed.Plan("cloud_tpu")),
    ({"TL_JAX_DISTRIBUTED": "on"}, False, distributed.Plan("jax")),
])
def test_the_environment_chooses_the_start(environ, tpu, expected):
  assert distributed.plan(environ, on_cloud_tpu=tpu) == expected


@pytest.mark.parametrize("environ,fragment", [
    ({"TL_JAX_NUM_PROCESSES": "2", "TL_JAX_PROCESS_ID": "0"}, "TL_JAX_COORDINATOR is not set"),
    ({"TL_JAX_COORDINATOR": "h:1", "TL_JAX_PROCESS_ID": "0"}, "TL_JAX_NUM_PROCESSES is not set"),
    ({"TL_JAX_COORDINATOR": "h:1", "TL_JAX_NUM_PROCESSES": "2", "TL_JAX_PROCESS_ID": "2"},
     "TL_JAX_PROCESS_ID=2 is outside 0..1"),
    ({"TL_JAX_COORDINATOR": "h", "TL_JAX_NUM_PROCESSES": "2", "TL_JAX_PROCESS_ID": "0"},
     "'h' is not HOST:PORT"),
    ({"TL_JAX_COORDINATOR": "h:1", "TL_JAX_NUM_PROCESSES": "two", "TL_JAX_PROCESS_ID": "0"},
     "TL_JAX_NUM_PROCESSES='two' is not an integer"),
    ({"TL_JAX_DISTRIBUTED": "yes"}, "TL_JAX_DISTRIBUTED='yes' is not one of auto, on, off"),
])
def test_inconsistent_environments_are_user_errors(environ, fragment):
  with pytest.raises(UserError, match=re.escape(fragment)):
    distributed.plan(environ)


def test_the_cli_refuses_an_inconsistent_environment_in_one_sentence(tmp_path):
  env = environment(8, TL_JAX_COORDINATOR="127.0.0.1:1", TL_JAX_NUM_PROCESSES="2",
                    TL_JAX_PROCESS_ID="5")
  result = subprocess.run(command(tmp_path / "run"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2, result.stdout + result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("tl-jax: error:")]
  assert lines == ["tl-jax: error: TL_JAX_PROCESS_ID=5 is outside 0..1 for TL_JAX_NUM_PROCESSES=2; "
                   "number the processes 0 to 1."], result.stderr
  assert not (tmp_path / "run" / "config.json").exists()
