"""Directories that appear whole or not at all (tokenizers, token caches, packed pairs)."""

from __future__ import annotations

import os
import shutil
from typing import Callable


def publish_dir(out_dir: str, fill: Callable[[str], None]) -> None:
  """Builds `out_dir` with `fill(tmp)` in a temporary sibling, then renames it into place.

  A reader never sees a half-built directory, a killed build leaves only the
  sibling, and when another process publishes first its copy is kept. Does
  nothing if `out_dir` already exists.
  """
  if os.path.exists(out_dir):
    return
  tmp = f"{out_dir}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    fill(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  try:
    os.rename(tmp, out_dir)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
