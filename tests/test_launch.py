"""The launchers in launch/: the exact commands their --dry-run prints (no gcloud or SLURM
needed), the TPU worker helper run for real, and gpu_host.sh's processes run for real on CPU."""

import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TRAIN = ["tl-jax", "pretrain", "--config=configs/mlm.py:roberta-base", "--workdir=/mnt/shared/base",
         "--config.parallel.preset=fsdp"]


def environment(**extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "TL_JAX_COORDINATOR", "TL_JAX_NUM_PROCESSES", "TL_JAX_PROCESS_ID"))}
  env.update(PYTHONPATH=str(REPO), PYTHON=sys.executable, TMPDIR="/tmp", **extra)
  return env


def launch(script: str, *args, env=None, check=True) -> subprocess.CompletedProcess:
  result = subprocess.run(["bash", str(LAUNCH / script), *args], cwd=REPO, env=env or environment(),
                          capture_output=True, text=True, timeout=120)
  if check:
    assert result.returncode == 0, result.stdout + result.stderr
  return result


def commands(result) -> list[list[str]]:
  """The printed commands, each split back into its arguments (comments dropped)."""
  return [shlex.split(line) for line in result.stdout.splitlines() if line and not line.startswith("#")]


def remote(argv: list[str]) -> list[str]:
  """The remote command of a `gcloud ... ssh --command=...` line, split into arguments."""
  [command] = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  return shlex.split(command)


def ssh_lines(lines, worker=None):
  return [l for l in lines if l[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
          and (worker is None or f"--worker={worker}" in l)]


# ---------------------------------------------------------------------------
# launch/tpu_pod.sh


def test_tpu_pod_creates_a_spot_slice_copies_installs_and_runs_on_every_worker():
  lines = commands(launch("tpu_pod.sh", "--name=pod", "--zone=us-central2-b", "--accelerator=v4-32",
                          "--spot", "--project=proj", "--dry-run", "--", *TRAIN))
  where = ["--zone=us-central2-b", "--project=proj"]
  assert lines[0] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "pod", *where,
                      "--format=value(state)"]
  assert lines[1] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod", *where,
                      "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]
  # The checkout, as git lists it, goes to every worker.
  assert lines[2][:2] == ["bash", "-c"] and "ls-files" in lines[2][2] and "/tmp/tl_jax-pod.tgz" in lines[2][2]
  assert lines[3] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/tl_jax-pod.tgz",
                      "pod:tl_jax.tgz", *where, "--worker=all"]
  everywhere = ssh_lines(lines, "all")
  assert [remote(l)[0] for l in everywhere] == ["mkdir", "python3", "bash"]
  assert "jax[tpu]" in remote(everywhere[1])
  # The same tl-jax command starts on every worker; worker 0's log is followed.
  assert remote(everywhere[2]) == ["bash", "~/tl_jax/launch/tpu_worker.sh", "start", "--", *TRAIN]
  assert [remote(l) for l in ssh_lines(lines, "0")] == [["bash", "~/tl_jax/launch/tpu_worker.sh", "follow"]]
  assert lines[-1] == ssh_lines(lines, "0")[0]  # no --delete: the slice stays
  assert not any("delete" in l for l in lines)


def test_tpu_pod_queued_multislice_with_setup_and_delete():
  lines = commands(launch("tpu_pod.sh", "--name=ms", "--zone=z", "--accelerator=v5litepod-16",
                          "--version=v2-alpha-tpuv5-lite", "--queued", "--spot", "--num-slices=2",
                          "--setup=sudo mount -t nfs 10.0.0.2:/share /mnt/shared", "--delete",
                          "--dry-run", "--", *TRAIN, "--config.parallel.dcn_data=2"))
  assert ["gcloud", "compute", "tpus", "queued-resources", "create", "ms", "--zone=z",
          "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite",
          "--node-count=2", "--node-prefix=ms", "--spot"] in lines
  # Every step reaches both slices' workers; the run starts on both, process 0 is followed.
  starts = [l for l in ssh_lines(lines, "all") if "start" in remote(l)]
  assert [l[5] for l in starts] == ["ms-0", "ms-1"]
  assert all(remote(l)[-1] == "--config.parallel.dcn_data=2" for l in starts)
  setups = [l for l in ssh_lines(lines, "all") if remote(l)[:2] == ["sudo", "mount"]]
  assert [l[5] for l in setups] == ["ms-0", "ms-1"]
  assert [l[5] for l in ssh_lines(lines, "0")] == ["ms-0"]
  assert lines[-1] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "ms", "--zone=z",
                       "--force", "--quiet"]


def test_tpu_pod_clones_a_repo_and_runs_single_process_commands_on_worker_0():
  lines = commands(launch("tpu_pod.sh", "--name=p", "--zone=z", "--accelerator=v4-8", "--preemptible",
                          "--repo=https://example.org/tl_jax.git", "--ref=v1", "--workers=0",
                          "--dry-run", "--", "tl-jax", "compress", "--config=configs/compress.py:paper",
                          "--workdir=/mnt/shared/ft"))
  assert lines[1][-1] == "--preemptible"
  clone = remote(ssh_lines(lines, "all")[0])
  assert "https://example.org/tl_jax.git" in clone and "v1" in clone
  starts = [remote(l) for l in ssh_lines(lines) if "start" in remote(l)]
  assert starts == [["bash", "~/tl_jax/launch/tpu_worker.sh", "start", "--single", "--", "tl-jax",
                     "compress", "--config=configs/compress.py:paper", "--workdir=/mnt/shared/ft"]]
  assert "--worker=0" in [l for l in ssh_lines(lines) if "start" in remote(l)][0]


@pytest.mark.parametrize("args,fragment", [
    (["--queued", "--preemptible"], "queued resources take --spot, not --preemptible"),
    (["--num-slices=2"], "--num-slices=2 needs --queued"),
    (["--workers=3"], "--workers=3 is not all or 0"),
    (["--bogus"], "unknown option '--bogus'"),
])
def test_tpu_pod_refuses_bad_options(args, fragment):
  result = launch("tpu_pod.sh", "--name=p", "--zone=z", "--accelerator=v4-8", *args, "--dry-run",
                  "--", *TRAIN, check=False)
  assert result.returncode == 2 and fragment in result.stderr, result.stderr
  assert result.stdout == ""


def test_tpu_worker_runs_detached_reports_the_exit_code_and_stops_with_sigterm(tmp_path):
  """launch/tpu_worker.sh as it runs on a worker, with a stand-in for tl-jax."""
  env = environment(TL_JAX_RUN_DIR=str(tmp_path / "run"))
  worker = ["bash", str(LAUNCH / "tpu_worker.sh")]
  run = lambda *a: subprocess.run([*worker, *a], env=env, capture_output=True, text=True, timeout=60)
  assert run("start", "--", "bash", "-c", "echo step $TL_JAX_DISTRIBUTED; sleep 1; exit 3").returncode == 0
  again = run("start", "--", "echo", "another")
  assert "already going" in again.stdout  # a second launch follows the first instead of doubling it
  followed = run("follow")
  assert followed.returncode == 3 and "step on" in followed.stdout and "another" not in followed.stdout

  script = "trap 'echo saved; exit 143' TERM; echo training; while true; do sleep 0.1; done"
  assert run("start", "--", "bash", "-c", script).returncode == 0
  time.sleep(1)
  assert run("stop").returncode == 0
  followed = run("follow")
  assert followed.returncode == 143, followed.stdout + followed.stderr
  assert "training" in followed.stdout and "saved" in followed.stdout
  assert "step on" not in followed.stdout  # only this attempt's part of the log


# ---------------------------------------------------------------------------
# launch/gpu_host.sh


def test_gpu_host_one_process_for_all_gpus(tmp_path):
  # nvidia-smi counts the GPUs when --gpus is not given.
  fake = tmp_path / "bin" / "nvidia-smi"
  fake.parent.mkdir()
  fake.write_text("#!/bin/sh\nprintf 'GPU 0\\nGPU 1\\nGPU 2\\n'\n")
  fake.chmod(0o755)
  env = environment(PATH=f"{fake.parent}:{os.environ['PATH']}")
  assert commands(launch("gpu_host.sh", "--dry-run", "--", *TRAIN, env=env)) == [
      ["env", "TL_JAX_DISTRIBUTED=off", *TRAIN]]
  assert commands(launch("gpu_host.sh", "--gpus=1,3", "--dry-run", "--", *TRAIN)) == [
      ["env", "TL_JAX_DISTRIBUTED=off", "CUDA_VISIBLE_DEVICES=1,3", *TRAIN]]
  per_gpu = commands(launch("gpu_host.sh", "--per-gpu", "--dry-run", "--", *TRAIN, env=env))
  assert len(per_gpu) == 1 + 3  # mkdir, then one process per detected GPU


def test_gpu_host_per_gpu_starts_one_process_per_gpu():
  lines = commands(launch("gpu_host.sh", "--gpus=4", "--per-gpu", "--port=23456", "--log-dir=logs/x",
                          "--dry-run", "--", *TRAIN))
  assert lines[0] == ["mkdir", "-p", "logs/x"]
  for i, line in enumerate(lines[1:]):
    assert line[:6] == ["env", "TL_JAX_COORDINATOR=127.0.0.1:23456", "TL_JAX_NUM_PROCESSES=4",
                        f"TL_JAX_PROCESS_ID={i}", f"JAX_LOCAL_DEVICE_IDS={i}", *TRAIN[:1]]
    assert line[6:6 + len(TRAIN) - 1] == TRAIN[1:]
    assert line[-1] == "&"
  assert "tee" in " ".join(lines[1]) and "logs/x/process-3.log" in lines[4]


@pytest.mark.slow
def test_gpu_host_per_gpu_processes_stop_together_on_sigterm(tmp_path):
  """gpu_host.sh --per-gpu for real, on CPU: two processes of 4 devices train; SIGTERM to the
  launcher reaches both, which save one checkpoint and exit 143, and so does the launcher."""
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  env = environment(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  assert "TL_JAX_CACHE" in env  # the conftest's shared token cache
  port = free_port()
  argv = ["bash", str(LAUNCH / "gpu_host.sh"), "--gpus=2", "--per-gpu", f"--port={port}",
          f"--log-dir={logs}", "--", sys.executable, "-m", "tl_jax.cli", "pretrain",
          f"--workdir={workdir}", "--config=configs/mlm.py:tiny", "--config.train.max_steps=100000",
          "--config.model.num_layers=1", "--config.model.d_model=64", "--config.model.d_ff=256",
          "--config.data.max_train_tokens=200000", "--config.train.log_every=5",
          "--config.eval.every_steps=100000", "--config.eval.num_batches=1",
          "--config.checkpoint.every_steps=100000"]
  with open(tmp_path / "launcher.out", "w") as out:
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + 180
      while not (workdir / "metrics.jsonl").exists() or '"loss"' not in (workdir / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "launcher.out").read_text()
        time.sleep(0.2)
      proc.send_signal(signal.SIGTERM)
      code = proc.wait(timeout=120)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  output = (tmp_path / "launcher.out").read_text()
  assert code == 143, output
  assert "SIGTERM: checkpoint saved" in output  # process 0's last line, through the launcher
  assert "SIGTERM: checkpoint saved" not in (logs / "process-1.log").read_text()
  assert len([p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]) == 1


def free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ---------------------------------------------------------------------------
# launch/slurm.sbatch


def test_slurm_submits_itself_then_sruns_one_process_per_node():
  outside = commands(launch("slurm.sbatch", "--nodes=2", "--gpus-per-node=8", "--time=24:00:00",
                            "--partition=gpu", "--sbatch=--exclusive", "--dry-run", "--", *TRAIN))
  assert outside == [["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8",
                      f"--chdir={REPO}", "--time=24:00:00", "--partition=gpu", "--exclusive",
                      str(LAUNCH / "slurm.sbatch"), "--gpus-per-node=8", "--", *TRAIN]]
  # Inside the job (what sbatch runs): all 8 GPUs for each node's one process.
  env = environment(SLURM_JOB_ID="42", SLURM_JOB_NUM_NODES="2")
  inside = commands(launch("slurm.sbatch", "--gpus-per-node=8", "--dry-run", "--", *TRAIN, env=env))
  assert inside == [["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", "env",
                     "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", *TRAIN]]


def test_slurm_one_process_per_gpu():
  outside = commands(launch("slurm.sbatch", "--nodes=4", "--gpus-per-node=4", "--per-gpu", "--dry-run",
                            "--", *TRAIN))
  assert outside[0][:5] == ["sbatch", "--parsable", "--nodes=4", "--ntasks-per-node=4", "--gpus-per-node=4"]
  assert outside[0][-len(TRAIN) - 3:-len(TRAIN)] == ["--gpus-per-node=4", "--per-gpu", "--"]
  env = environment(SLURM_JOB_ID="42")
  inside = commands(launch("slurm.sbatch", "--gpus-per-node=4", "--per-gpu", "--dry-run", "--", *TRAIN,
                           env=env))
  assert inside == [["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=4", *TRAIN]]


# ---------------------------------------------------------------------------
# launch/sweep.sh: every stage of `tl-jax sweep --print-only` as a job

SWEEP = ["--config=configs/sweeps/demo.py", "--root=/shared/demo"]


def stage_jobs(lines):
  """(stage, argv) of each launched `tl-jax sweep --only=STAGE` job."""
  out = []
  for line in lines:
    if "--only" in " ".join(line):
      [only] = [a for a in line if a.startswith("--only=")]
      out.append((only[len("--only="):], line))
  return out


def test_sweep_on_slurm_chains_the_stages_with_dependencies():
  result = launch("sweep.sh", "--on=slurm", "--nodes=2", "--gpus-per-node=8", "--dry-run", "--", *SWEEP)
  jobs = stage_jobs(commands(result))
  names = [name for name, _ in jobs]
  assert names == [f"{size}/{kind}" for size in ("2x64", "2x128", "4x128")
                   for kind in ("pretrain", "finetune", "compress")]
  ids = {name: f"JOB{i + 1}" for i, name in enumerate(names)}
  for name, line in jobs:
    assert line[0] == "sbatch" and f"--job-name=tl-jax-{name.replace('/', '__')}" in line
    assert line[line.index("--") + 1:] == ["tl-jax", "sweep", *SWEEP, f"--only={name}"]
    size, kind = name.split("/")
    dependency = [a for a in line if a.startswith("--dependency=")]
    expected = {"pretrain": [], "finetune": [f"--dependency=afterok:{ids[size + '/pretrain']}"],
                "compress": [f"--dependency=afterok:{ids[size + '/finetune']}"]}[kind]
    assert dependency == expected, name
    assert ("--nodes=1" in line and "--gpus-per-node=1" in line) == (kind == "compress"), line
  assert f"# stage 2x64/finetune (finetune): its job id is JOB2 below" in result.stdout


def test_sweep_on_tpu_and_gpu_runs_the_stages_in_order():
  lines = commands(launch("sweep.sh", "--on=tpu", "--name=pod", "--zone=z", "--accelerator=v4-32",
                          "--delete", "--dry-run", "--", *SWEEP))
  starts = [remote(l) for l in ssh_lines(lines) if "start" in remote(l)]
  assert [s[-1] for s in starts] == [f"--only={size}/{kind}" for size in ("2x64", "2x128", "4x128")
                                     for kind in ("pretrain", "finetune", "compress")]
  assert all(("--single" in s) == s[-1].endswith("/compress") for s in starts)  # worker 0 alone
  deletes = [l for l in lines if l[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]]
  assert len(deletes) == 1 and lines[-1] == deletes[0]  # after the last stage only

  lines = commands(launch("sweep.sh", "--on=gpu", "--gpus=2", "--per-gpu", "--dry-run", "--", *SWEEP))
  processes = [l for l in lines if "--only" in " ".join(l)]
  per_stage = [sum(1 for l in processes if f"--only={s}" in l) for s in ("2x64/pretrain", "2x64/compress")]
  assert per_stage == [2, 1]  # two processes per training stage, compression as one


def test_sweep_passes_on_a_bad_sweep_as_tl_jax_words_it():
  result = launch("sweep.sh", "--on=slurm", "--dry-run", "--", "--config=configs/sweeps/nope.py",
                  "--root=/tmp/x", check=False)
  assert result.returncode == 2
  assert "tl-jax: error: sweep file 'configs/sweeps/nope.py' does not exist" in result.stderr
  assert not commands(result)
