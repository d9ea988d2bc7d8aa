"""Which metric judges each task's runs, and in which direction: one table for the loop's
`best/`, the compression grid, the sweep and the report (no jax here)."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Metric:
  key: str  # as logged in metrics.jsonl and compress.jsonl
  higher_is_better: bool
  label: str  # for axes and tables

  def better(self, a: float, b: float) -> bool:
    """Whether `a` beats `b`."""
    return a > b if self.higher_is_better else a < b

  def drop(self, reference: float, value: float) -> float:
    """How much worse `value` is than `reference` (positive = worse), in the metric's units."""
    return reference - value if self.higher_is_better else value - reference

  def score(self, value: float) -> float:
    """A number that is larger when better, for ranking and Pareto frontiers."""
    return value if self.higher_is_better else -value

  def format(self, value: float | None) -> str:
    if value is None or not math.isfinite(value):
      return "—"
    return f"{value:.2f}" if self.key == "bleu" else f"{value:.4f}"


# The metric that picks `best/` for each task (config.task).
TASK_METRICS = {
    "pretrain": Metric("eval_loss", False, "validation loss"),
    "translate": Metric("bleu", True, "BLEU"),
    "finetune": Metric("accuracy", True, "accuracy"),
}
COMMANDS = tuple(TASK_METRICS)


def metric_of(task: str) -> Metric:
  return TASK_METRICS[task]
