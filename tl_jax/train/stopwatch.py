"""Honest wall-clock: where the seconds of a run went, kept across restarts.

`train` counts only synchronised step time (dispatch, data and device work up
to a block on the result), so curves against training seconds exclude compile,
evaluation and checkpoint time, which are counted separately. `elapsed` is the
run's wall time from a fresh state's initialisation (or a restore's end) to the end,
summed over every session of a resumed run; data preparation comes before it.
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class Stopwatch:
  train: float = 0.0
  eval: float = 0.0
  checkpoint: float = 0.0
  compile: float = 0.0
  elapsed_before: float = 0.0  # elapsed seconds of earlier sessions of this run
  _session_start: float = dataclasses.field(default_factory=time.perf_counter, repr=False)

  def elapsed(self) -> float:
    return self.elapsed_before + time.perf_counter() - self._session_start

  def to_dict(self) -> dict:
    return {"train_seconds": self.train, "eval_seconds": self.eval,
            "checkpoint_seconds": self.checkpoint, "compile_seconds": self.compile,
            "elapsed_seconds": self.elapsed()}

  @classmethod
  def from_dict(cls, d: dict) -> "Stopwatch":
    """Continues a run: its elapsed time so far becomes `elapsed_before`."""
    return cls(train=d["train_seconds"], eval=d["eval_seconds"], checkpoint=d["checkpoint_seconds"],
               compile=d["compile_seconds"], elapsed_before=d["elapsed_seconds"])


class Timer:
  """`with Timer() as t: ...; t.seconds`."""

  def __enter__(self):
    self._start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self._start
