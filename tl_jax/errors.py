"""The one exception type for problems the user can fix, and how a failed write reads.

The command line prints a UserError's message as a single sentence and exits
with its `exit_code` (2 unless said otherwise), with no traceback; anything else
reaching the top is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re


class UserError(Exception):
  """Bad input (config, data, checkpoint, mesh): the message names cause and fix."""
  exit_code = 2


class TrainingDiverged(UserError):
  """The loss or the parameters became non-finite; the run stopped and kept its last good
  checkpoint. Exit code 1: the input was valid, the training was not."""
  exit_code = 1


# What a full disk, a quota, a size limit or a read-only place look like to a writer.
_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)
_NOT_DIRECTORY = (errno.ENOTDIR, errno.EEXIST, errno.EISDIR)
# TensorStore (under orbax) reports the OS error inside its message, not as an OSError.
_TENSORSTORE_CODE = re.compile(r"os_error_code='?(\d+)")
_TENSORSTORE_PATH = re.compile(r'(?:Failed writing|Error writing|Failed to open|local file): "([^"]+)"')


def io_failure(exc: BaseException) -> tuple[int, str | None] | None:
  """(errno, path or None) when `exc` (or what caused it) is a storage failure the user can fix."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _SPACE + _ACCESS + _NOT_DIRECTORY:
      return exc.errno, exc.filename
    match = _TENSORSTORE_CODE.search(str(exc))
    if match and int(match.group(1)) in _SPACE + _ACCESS:
      path = _TENSORSTORE_PATH.search(str(exc))
      return int(match.group(1)), path.group(1) if path else None
    exc = exc.__cause__ or exc.__context__
  return None


def io_fix(code: int) -> str:
  """What to do about a storage failure with this errno."""
  if code in _SPACE:
    return "free space on that disk (or raise the quota or file-size limit)"
  if code in _ACCESS:
    return "make that place writable or choose another --workdir"
  return "move the file that stands where a directory is needed, or choose another --workdir"


def io_error(exc: BaseException, directory: str | None = None) -> UserError | None:
  """A one-sentence UserError for a storage failure anywhere in a command, or None. Some
  failures do not carry the path (a failed copy): `directory` then says where it happened."""
  failure = io_failure(exc)
  if failure is None:
    return None
  code, path = failure
  where = f" {path}" if path else (f" in {directory}" if directory else "")
  return UserError(f"could not write{where} ({os.strerror(code)}); {io_fix(code)}, then re-run the "
                   "same command: what was saved before is intact and a run resumes from its last "
                   "checkpoint.")
