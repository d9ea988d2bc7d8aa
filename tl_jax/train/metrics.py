"""Where metrics go: metrics.jsonl, TensorBoard event files, a console line."""

from __future__ import annotations

import json
import math
import os
import sys

_JSONL = "metrics.jsonl"


def truncate_after(workdir: str, step: int) -> None:
  """Drops lines past `step` (from a run killed after its last checkpoint) before resuming."""
  path = os.path.join(workdir, _JSONL)
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line).get("step", 0) <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
      except json.JSONDecodeError:
        pass  # a line cut short by a kill
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def read(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, _JSONL)) as f:
    return [json.loads(line) for line in f if line.strip()]


def last_devices(workdir: str) -> str | None:
  """The devices the run's latest session that recorded them trained on (each session's first
  line names them); None where no line does or there are no lines."""
  if not os.path.exists(os.path.join(workdir, _JSONL)):
    return None
  return next((line["devices"] for line in reversed(read(workdir)) if line.get("devices")), None)


class MetricWriter:
  """Appends JSON lines and TensorBoard scalars; only process 0 writes."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self._file = open(os.path.join(workdir, _JSONL), "a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "events"))
    except ImportError:
      print("tl-jax: tensorboardX is not installed, so no TensorBoard events are written "
            "(pip install tensorboardX).", file=sys.stderr)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    self._file.write(json.dumps(clean) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(key, value, record["step"])

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()


def format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
