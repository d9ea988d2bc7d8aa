"""One job per workdir: WORKDIR/lock.json, held from before the job's first write to its exit.

Two jobs writing one workdir (a command started twice, a second host by mistake) would mix
checkpoints and metrics.jsonl lines without either noticing. The lock is a file created with
O_CREAT | O_EXCL, which is atomic on local disks and on the shared file systems
docs/LAUNCHING.md names for workdirs (NFS v3 and later, Filestore, Lustre). It records the
holder (host, pid, start time, command) and a heartbeat: the holder touches the file every
HEARTBEAT_SECONDS. A lock is stale, and is taken over with a warning, when its process is gone
(same host, pid not running) or its heartbeat is older than STALE_SECONDS (any host: a job on
another machine cannot be asked whether it still runs).

A multi-process job is one job: process 0 takes the lock, and every process learns whether
it did, so all of them stop together when another job holds it. gcsfuse does not promise an
exclusive create across hosts, so there two jobs started within moments of each other on
different machines may both start; one started while another runs is still refused.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time

from tl_jax.errors import UserError

LOCK = "lock.json"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten heartbeats missed: the holder is gone (killed, host lost)


def _read(path: str) -> tuple[dict | None, float | None]:
  """(the holder recorded in `path` or None if unreadable, seconds since its heartbeat or None
  if there is no file)."""
  try:
    age = time.time() - os.stat(path).st_mtime
  except FileNotFoundError:
    return None, None
  try:
    with open(path) as f:
      holder = json.load(f)
    return (holder if isinstance(holder, dict) else None), age
  except (OSError, ValueError):
    return None, age


def _gone(holder: dict | None, age: float) -> str | None:
  """Why the lock's holder is no longer running, or None if it may be."""
  if age > STALE_SECONDS:
    return f"no heartbeat for {age:.0f}s"
  if holder is None:  # written by a process killed while creating it, or being written now
    return "its file is unreadable" if age > 5 else None
  if holder.get("host") == socket.gethostname():
    try:
      os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
      return f"pid {holder['pid']} is not running on this host"
    except (PermissionError, KeyError, TypeError, ValueError):
      return None  # a pid of another user is running
  return None


def describe(holder: dict | None) -> str:
  if holder is None:
    return "another tl-jax job"
  return (f"`{holder.get('command', 'tl-jax')}` (pid {holder.get('pid')} on host "
          f"{holder.get('host')}, started {holder.get('started')})")


class WorkdirLock:
  """The lock of one workdir, held by this process once `acquire` returned."""

  def __init__(self, workdir: str, command: str):
    self.path = os.path.join(workdir, LOCK)
    self.record = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                   "started": datetime.datetime.now().isoformat(timespec="seconds"),
                   "token": os.urandom(8).hex()}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> None:
    """Takes the lock (a stale one with a warning) or raises UserError naming its holder."""
    for _ in range(3):  # another process may take over a stale lock at the same moment
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder, age = _read(self.path)
        if age is None:  # released meanwhile
          continue
        why = _gone(holder, age)
        if why is None:
          raise UserError(
              f"workdir {os.path.dirname(self.path)} is in use by {describe(holder)}; wait for "
              "that job to end or stop it, or use another --workdir (if it is not running, "
              f"delete {self.path}).")
        print(f"tl-jax: taking over the lock of {describe(holder)}, which is gone ({why})",
              flush=True)
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self.record, f)
        f.flush()
        os.fsync(f.fileno())
      self._thread = threading.Thread(target=self._beat, name="tl-jax-lock", daemon=True)
      self._thread.start()
      return
    raise UserError(f"could not take the lock {self.path}: other jobs keep taking it; start one "
                    "job per workdir.")

  def mine(self) -> bool:
    holder, _ = _read(self.path)
    return holder is not None and holder.get("token") == self.record["token"]

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      if self.mine():
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)


@contextlib.contextmanager
def hold(workdir: str, command: str):
  """The workdir's lock for the body of the `with`, for every process of the job."""
  import jax
  from tl_jax.parallel import distributed
  lock, error = WorkdirLock(workdir, command), None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except UserError as e:
      error = e
  refused = distributed.agree({}, {"refused": error is not None})["refused"]
  if refused:
    raise error or UserError(f"workdir {workdir} is in use by another job (process 0 says which); "
                             "wait for it to end, or use another --workdir.")
  try:
    yield lock
  finally:
    lock.release()
