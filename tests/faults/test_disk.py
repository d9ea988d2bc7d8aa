"""A full disk or a directory that cannot be written: one sentence, and nothing saved is hurt.

A full disk is a file-size limit on the run (RLIMIT_FSIZE, with SIGXFSZ ignored so that the
write fails with EFBIG, as it fails with ENOSPC on a full disk). A read-only directory is
chmod 555; tests often run as root, whom permission bits do not stop, so a root run first
loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. Both are set by a small launcher that then
execs the command (no Python runs between fork and exec in this multithreaded process).
"""

import os
import stat
import sys

import pytest

from faults.harness import SMALL, assert_one_sentence, checkpoint_steps, run, snapshot, tl_jax

pytestmark = pytest.mark.slow
TO_40 = [*SMALL, "--config.train.max_steps=40", "--override"]
_LAUNCHER = """
import ctypes, os, resource, signal, sys
size, drop = int(sys.argv[1]), sys.argv[2] == "1"
if size >= 0:
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # kept through exec: a write past it fails
  resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
if drop:
  libc = ctypes.CDLL(None, use_errno=True)
  for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped by PR_CAPBSET_DROP (24)
    if libc.prctl(24, cap, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), "cannot drop CAP_DAC_OVERRIDE (needs CAP_SETPCAP)")
os.execv(sys.executable, [sys.executable] + sys.argv[3:])
"""


def limited(command: list[str], file_size: int = -1, unprivileged: bool = False) -> list[str]:
  """`command` (a tl_jax(...) list) run with at most `file_size` bytes a file and, if
  `unprivileged`, subject to permission bits even as root."""
  drop = unprivileged and os.geteuid() == 0
  return [sys.executable, "-c", _LAUNCHER, str(file_size), "1" if drop else "0", *command[1:]]


def without_compile_cache(env: dict) -> dict:
  # The limits would also stop writes to the shared compilation cache, which jax reports.
  # An empty JAX_COMPILATION_CACHE_DIR turns off tl-jax's default cache as well.
  env = {k: v for k, v in env.items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                           "JAX_PERSISTENT_CACHE"))}
  return {**env, "JAX_COMPILATION_CACHE_DIR": ""}


def saved(workdir) -> dict:
  """The complete checkpoints' files (what must survive)."""
  return {step: snapshot(workdir / "checkpoints" / str(step)) for step in checkpoint_steps(workdir)}


def test_full_disk_while_writing_a_checkpoint(copy_of_finished, env, reliability):
  workdir = copy_of_finished
  before = saved(workdir)
  full = run(limited(tl_jax("pretrain", f"--workdir={workdir}", *TO_40), file_size=512 * 1024),
             without_compile_cache(env))
  message = assert_one_sentence(full, "checkpoint 30 could not be written", "File too large",
                                "free space", "resumes from checkpoint 20")
  assert saved(workdir) == before
  reliability("Disk and permissions", "disk full (file-size limit 512 KiB) while the asynchronous "
              "checkpoint 30 is written", f"exit 2, checkpoints 10 and 20 intact: `{message}`")

  again = run(tl_jax("pretrain", f"--workdir={workdir}", *TO_40), env)
  assert again.returncode == 0, again.stdout + again.stderr
  assert "resumed from step 20 " in again.stdout
  assert checkpoint_steps(workdir)[-1] == 40
  reliability("Disk and permissions", "the same command once there is space again",
              "resumes from checkpoint 20 (the half-written 30 is discarded) and finishes")


def test_read_only_checkpoint_directory(copy_of_finished, env, reliability):
  workdir = copy_of_finished
  before = snapshot(workdir)
  checkpoints = workdir / "checkpoints"
  checkpoints.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
  try:
    result = run(limited(tl_jax("pretrain", f"--workdir={workdir}", *TO_40), unprivileged=True), env)
  finally:
    checkpoints.chmod(0o755)
  message = assert_one_sentence(result, f"checkpoints cannot be written to {checkpoints}",
                                "Permission denied", "writable")
  assert snapshot(workdir) == before  # refused before config.json, metrics or anything else
  reliability("Disk and permissions", "write permission removed from the checkpoint directory of "
              "a run being resumed", f"exit 2 before compiling, workdir untouched: `{message}`")


def test_new_workdir_in_a_read_only_directory(tmp_path, env, reliability):
  parent = tmp_path / "read-only"
  parent.mkdir(mode=0o555)
  try:
    result = run(limited(tl_jax("pretrain", f"--workdir={parent / 'run'}", *SMALL),
                         unprivileged=True), env)
  finally:
    parent.chmod(0o755)
  message = assert_one_sentence(result, str(parent / "run"), "Permission denied")
  assert not (parent / "run").exists()
  reliability("Disk and permissions", "a new --workdir inside a directory without write permission",
              f"exit 2 before any work: `{message}`")


def test_full_disk_at_the_first_write_of_a_new_run(tmp_path, env, reliability):
  workdir = tmp_path / "run"
  result = run(limited(tl_jax("pretrain", f"--workdir={workdir}", *SMALL), file_size=0),
               without_compile_cache(env))
  message = assert_one_sentence(result, str(workdir), "File too large")
  assert not (workdir / "config.json").exists()  # the next attempt starts clean
  reliability("Disk and permissions", "disk full from the start of a new run (file-size limit 0)",
              f"exit 2 at the first write (the workdir's tokenizer), no config.json: `{message}`")
