"""The report's numbers, as pure functions of the runs' records.

Curves are aligned by training seconds (`train_seconds` of the eval lines), never by
line index: runs log and evaluate at different steps. A question "which size is best
after S training seconds" reads each run's last eval at or before S, and a run whose
training stopped short of S is reported as not having reached it, never extrapolated.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from tl_jax.report.runs import SEED_SETTINGS, Run, Shape

T = TypeVar("T")
# Slack for comparing float seconds and byte budgets written with a few digits.
_EPS = 1e-9
# How far past a budget an eval may land and still read as at it: the loop syncs on the step its
# recent pace predicts for a timed eval or budget, and a changing pace makes that a few steps late
# (up to 0.8% of a 10 s mark on an H100, for the fastest size).
READ_SLACK = 0.01


# ---------------------------------------------------------------------------
# Training curves and budgets.


@dataclasses.dataclass(frozen=True)
class Curve:
  """One run's evals of one metric, in training-seconds order."""
  label: str
  seconds: tuple[float, ...]
  steps: tuple[int, ...]
  values: tuple[float, ...]
  reached_seconds: float  # how far training went, eval or not
  shape: Shape | None = None
  size: str = ""  # the size label (several curves may share one)
  step_seconds: float = 0.0  # training seconds per step, over the whole run
  budget_seconds: float = 0.0  # the run's own train.max_train_seconds (0: none)
  group: str = ""  # runs that differ only by seed share it (runs.Run.seed_group); "" = its own

  def reaches(self, budget: float, held_to: float = 0.0) -> bool:
    """Whether training got to `budget` seconds. A run stops at the first sync past its budget,
    so runs held to the same budget end a fraction of a step apart: within one step of
    `budget` counts, and so does any budget up to `held_to`, the furthest a run held to this
    run's own train.max_train_seconds went, if this run stopped at that budget."""
    if self.reached_seconds + self.step_seconds + _EPS >= budget:
      return True
    stopped_at_budget = bool(self.budget_seconds) and self.reached_seconds >= 0.99 * self.budget_seconds
    return stopped_at_budget and budget <= held_to + _EPS


def held_to(curves: Sequence["Curve"]) -> dict[float, float]:
  """{train.max_train_seconds: the furthest a run held to it went}."""
  out: dict[float, float] = {}
  for c in curves:
    if c.budget_seconds:
      out[c.budget_seconds] = max(out.get(c.budget_seconds, 0.0), c.reached_seconds)
  return out


def eval_curve(run: Run, key: str, label: str, size: str = "") -> Curve:
  """`key` (eval_loss, bleu, ...) against training seconds from the run's eval lines."""
  lines = sorted(run.eval_lines(key), key=lambda m: (float(m.get("train_seconds") or 0.0),
                                                     int(m.get("step") or 0)))
  last_step = max((int(m.get("step") or 0) for m in run.metrics), default=0)
  budget = float((run.config.get("train") or {}).get("max_train_seconds") or 0.0)
  return Curve(label=label, seconds=tuple(float(m.get("train_seconds") or 0.0) for m in lines),
               steps=tuple(int(m.get("step") or 0) for m in lines),
               values=tuple(float(m[key]) for m in lines),
               reached_seconds=run.max_train_seconds, shape=run.shape, size=size or label,
               step_seconds=run.max_train_seconds / last_step if last_step else 0.0,
               budget_seconds=budget, group=run.seed_group)


@dataclasses.dataclass(frozen=True)
class Reading:
  """A curve's value at a budget: its last eval at or before the budget."""
  label: str
  value: float
  seconds: float
  step: int
  size: str = ""


def value_at(curve: Curve, budget: float, held: float = 0.0) -> Reading | None:
  """The last eval at or before `budget` seconds; None if training stopped short of it
  (or no eval came before it). The step-0 eval of the untrained model is never a reading; an
  eval up to one step or READ_SLACK of the budget past it (whichever is more) is: it is the eval
  the loop timed for that budget, or the end of a run held to it."""
  if not curve.reaches(budget, held):
    return None
  last = None
  late = max(curve.step_seconds, READ_SLACK * budget)
  for s, step, v in zip(curve.seconds, curve.steps, curve.values):
    if step > 0 and s <= budget + late + _EPS:
      last = Reading(curve.label, v, s, step, curve.size)
  return last


@dataclasses.dataclass(frozen=True)
class BudgetAnswer:
  budget: float
  ranking: tuple[Reading, ...]  # best first
  not_reached: tuple[str, ...]  # labels of runs whose training stopped before the budget
  no_eval: tuple[str, ...] = ()  # labels of runs that got there but had not evaluated yet

  @property
  def best(self) -> Reading | None:
    return self.ranking[0] if self.ranking else None

  @property
  def runner_up(self) -> Reading | None:
    """The best run of another size (runs of the best run's size are no alternative)."""
    best = self.best
    return next((r for r in self.ranking[1:] if r.size != best.size), None) if best else None

  @property
  def margin(self) -> float | None:
    """How much better the best is than the runner-up (always >= 0)."""
    if self.runner_up is None:
      return None
    return abs(self.best.value - self.runner_up.value)


def best_at_budget(curves: Sequence[Curve], budget: float,
                   higher_is_better: bool = False) -> BudgetAnswer:
  """Ranks the runs by their last eval at or before `budget` training seconds."""
  readings, not_reached, no_eval = [], [], []
  held = held_to(curves)
  for curve in curves:
    allowed = held.get(curve.budget_seconds, 0.0)
    reading = value_at(curve, budget, allowed)
    if reading is not None:
      readings.append(reading)
    elif not curve.reaches(budget, allowed):
      not_reached.append(curve.label)
    else:
      no_eval.append(curve.label)
  sign = -1.0 if higher_is_better else 1.0
  readings.sort(key=lambda r: (sign * r.value, r.seconds, r.label))
  return BudgetAnswer(budget, tuple(readings), tuple(not_reached), tuple(no_eval))


@dataclasses.dataclass(frozen=True)
class Spread:
  """The mean of one quantity over the seeds of a group, its sample standard deviation (None
  with one seed: the spread is unknown, not zero) and its range over the seeds (what the
  figures' bands and error bars span)."""
  mean: float
  std: float | None
  n: int
  lo: float | None = None  # the smallest seed's value (None where not known)
  hi: float | None = None

  @classmethod
  def of(cls, values: Sequence[float]) -> "Spread":
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return cls(mean, std, n, min(values), max(values))


def verdict(best: Spread, runner_up: Spread | None) -> str:
  """'winner' when the margin exceeds the spread of both (the sum of their standard
  deviations), 'tie within noise' when it does not, and 'one seed' when a spread is unknown."""
  if runner_up is None:
    return "no other size"
  if best.std is None or runner_up.std is None:
    return "one seed: spread unknown"
  return "winner" if abs(best.mean - runner_up.mean) > best.std + runner_up.std else "tie within noise"


def welch_p(a: Spread, b: Spread) -> float | None:
  """Two-sided p-value of Welch's t-test that the two groups' means are equal (unequal
  variances); None where a spread is unknown or both are zero. With two seeds a side it has 1 to
  2 degrees of freedom: a margin of both standard deviations together gives p = 1 - 2/sqrt(6)
  (0.18) where they are equal, more where they differ."""
  if a.std is None or b.std is None or (a.std == 0 and b.std == 0):
    return None
  from scipy import stats  # a dependency of jax
  return float(stats.ttest_ind_from_stats(a.mean, a.std, a.n, b.mean, b.std, b.n,
                                          equal_var=False).pvalue)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Two seed groups of one task and size whose configs differ in exactly one setting: each
  side's setting value, run names and final readings (its runs' last evals)."""
  setting: str
  values: tuple[object, object]
  names: tuple[tuple[str, ...], tuple[str, ...]]
  spreads: tuple[Spread, Spread]


# Settings the report compares in their own sections: the data size (RQ4's gap against data) and
# the training budget (the RQ1 curves, read at equal seconds). A sweep over either would fill the
# A/B table with every pair of its values.
COMPARED_ELSEWHERE = ("data.max_train_tokens", "train.max_train_seconds")


def one_setting_comparisons(runs: Sequence[Run], key: str) -> list[Comparison]:
  """A/B pairs among `runs` (one task, one size): seed groups whose configs differ in one
  setting besides SEED_SETTINGS (and not one of COMPARED_ELSEWHERE), compared by each run's last
  eval of `key`. Runs without such an eval are left out."""
  groups: dict[str, list[tuple[str, dict, float]]] = {}
  for run in runs:
    evals = run.eval_lines(key)
    if evals:
      settings = run.settings
      for name in SEED_SETTINGS:
        settings.pop(name, None)
      groups.setdefault(run.seed_group, []).append((run.name, settings, float(evals[-1][key])))
  out = []
  members = list(groups.values())
  for i, a in enumerate(members):
    for b in members[i + 1:]:
      settings_a, settings_b = a[0][1], b[0][1]
      differ = [k for k in sorted(set(settings_a) | set(settings_b))
                if settings_a.get(k) != settings_b.get(k)]
      if len(differ) != 1 or differ[0] in COMPARED_ELSEWHERE:
        continue
      k = differ[0]
      sides = sorted([a, b], key=lambda g: str(g[0][1].get(k)))
      out.append(Comparison(
          k, tuple(side[0][1].get(k) for side in sides),
          tuple(tuple(name for name, _, _ in side) for side in sides),
          tuple(Spread.of([value for _, _, value in side]) for side in sides)))
  return sorted(out, key=lambda c: (c.setting, str(c.values)))


@dataclasses.dataclass(frozen=True)
class GroupReading:
  """The readings of the seeds of one group at a budget."""
  size: str
  label: str  # the first run's label
  readings: tuple[Reading, ...]

  @property
  def spread(self) -> Spread:
    return Spread.of([r.value for r in self.readings])


def groups_at_budget(answer: BudgetAnswer, curves: Sequence[Curve],
                     higher_is_better: bool = False) -> list[GroupReading]:
  """`answer`'s readings gathered by seed group, best mean first."""
  group_of = {c.label: c.group or c.label for c in curves}
  gathered: dict[str, list[Reading]] = {}
  for reading in answer.ranking:
    gathered.setdefault(group_of.get(reading.label, reading.label), []).append(reading)
  out = [GroupReading(rs[0].size, rs[0].label, tuple(rs)) for rs in gathered.values()]
  sign = -1.0 if higher_is_better else 1.0
  return sorted(out, key=lambda g: (sign * g.spread.mean, g.label))


@dataclasses.dataclass(frozen=True)
class Band:
  """The seeds of one size drawn as one curve: their mean at each eval, with the smallest and
  largest seed's value (the band). `aligned` says how the seeds' evals were matched: "step"
  where every seed evaluated at the same steps (their seconds are averaged), "seconds" where
  they did not (timed evals): each seed's curve is then interpolated linearly at the first
  seed's eval seconds, within the span every seed covers (its end stretched by the reading
  slack)."""
  label: str  # 'size (n seeds)'
  size: str
  seeds: int
  seconds: tuple[float, ...]
  steps: tuple[float, ...]
  values: tuple[float, ...]  # the mean over the seeds
  lo: tuple[float, ...]
  hi: tuple[float, ...]
  aligned: str
  members: tuple[str, ...] = ()  # the seeds' curve labels


def seed_bands(curves: Sequence[Curve]) -> tuple[list[Curve], list[Band]]:
  """(the curves of single-seed runs as they are, a Band per group of several seeds), each in
  the order of its first curve."""
  groups: dict[str, list[Curve]] = {}
  for c in curves:
    groups.setdefault(c.group or c.label, []).append(c)
  singles, bands = [], []
  for members in groups.values():
    if len(members) == 1 or any(not c.values for c in members):
      singles += members
      continue
    first = members[0]
    if all(c.steps == first.steps for c in members):
      seconds = np.mean([c.seconds for c in members], axis=0)
      steps, values, aligned = np.asarray(first.steps, float), np.array([c.values for c in members]), "step"
    else:
      start = max(c.seconds[0] for c in members)
      # Seeds held to one budget end a step or two apart: the first seed's last eval counts
      # where it is within the reading slack of every seed's end (the others' values are then
      # their last evals), as a budget reads it.
      stop = min(c.seconds[-1] for c in members)
      stop += max(max(c.step_seconds for c in members), READ_SLACK * stop)
      seconds = np.array([s for s in first.seconds if start - _EPS <= s <= stop + _EPS])
      if not len(seconds):
        singles += members
        continue
      steps = np.mean([np.interp(seconds, c.seconds, c.steps) for c in members], axis=0)
      values = np.array([np.interp(seconds, c.seconds, c.values) for c in members])
      aligned = "seconds"
    bands.append(Band(f"{first.size} ({len(members)} seeds)", first.size, len(members),
                      tuple(map(float, seconds)), tuple(map(float, steps)),
                      tuple(map(float, values.mean(axis=0))), tuple(map(float, values.min(axis=0))),
                      tuple(map(float, values.max(axis=0))), aligned,
                      tuple(c.label for c in members)))
  return singles, bands


def _round_sig(x: float, digits: int = 2, how: Callable[[float], float] = round) -> float:
  if x <= 0:
    return 0.0
  scale = 10 ** (math.floor(math.log10(x)) - digits + 1)
  return float(how(x / scale) * scale)


def default_budgets(curves: Sequence[Curve], count: int = 4) -> list[float]:
  """Training-second budgets every compared run reached, spread geometrically from the first
  at which each has an eval after step 0 to where the shortest run stopped. The ends are
  exact; those between are rounded to three digits."""
  curves = [c for c in curves if any(step > 0 for step in c.steps)]
  hi = min((c.reached_seconds for c in curves), default=0.0)
  if hi <= 0:
    return []
  firsts = [next(s for s, step in zip(c.seconds, c.steps) if step > 0) for c in curves]
  lo = min(max(firsts), hi)
  if count < 2 or hi <= lo * (1 + 1e-6):
    return [hi]
  ratio = (hi / lo) ** (1 / (count - 1))
  between = {_round_sig(lo * ratio ** k, 3) for k in range(1, count - 1)}
  return sorted(between | {lo, hi})


def default_memory_budgets(mib: Sequence[float], count: int = 4) -> list[float]:
  """MiB budgets spread geometrically over the compressed points, smallest excluded
  (only the smallest point fits it), rounded to two significant digits."""
  values = [m for m in mib if m > 0]
  if not values:
    return []
  lo, hi = min(values), max(values)
  if hi <= lo * (1 + 1e-6):
    return [_round_sig(hi, how=math.ceil)]
  ratio = (hi / lo) ** (1 / count)
  return sorted({_round_sig(lo * ratio ** k, how=math.ceil) for k in range(1, count + 1)})


# ---------------------------------------------------------------------------
# Compressed points.


@dataclasses.dataclass(frozen=True)
class Compressed:
  """One point of a compression grid (a compress.jsonl line), labelled by model size.

  `value` is the grid's metric (`metric`: accuracy, bleu, eval_loss, ...) and `drop` how much
  worse it is than the uncompressed model's (positive = worse); `score` orders points the same
  way for every metric (larger is better)."""
  size: str
  run: str
  point: str
  bits: int
  sparsity: float  # achieved where recorded, else requested
  value: float
  drop: float | None
  memory_bytes: float
  quant: str | None  # a method label (quant_label), None when not quantized
  prune: str | None  # a method label (prune_label), None when not pruned
  metric: str = "accuracy"
  higher_is_better: bool = True
  record: dict = dataclasses.field(compare=False, repr=False, hash=False, default_factory=dict)
  spread: "Spread | None" = dataclasses.field(compare=False, default=None)  # over seeds
  drop_spread: "Spread | None" = dataclasses.field(compare=False, default=None)
  examples: int | None = None  # the evaluation's examples, where the line records them

  @property
  def mib(self) -> float:
    return self.memory_bytes / 2 ** 20

  @property
  def score(self) -> float:
    return self.value if self.higher_is_better else -self.value


def point_value(record: dict) -> float | None:
  """A compress.jsonl line's metric value (lines written before the metric was named hold
  `accuracy`)."""
  value = record.get("value", record.get("accuracy"))
  return float(value) if _number(value) else None


def point_drop(record: dict) -> float | None:
  drop = record.get("drop", record.get("accuracy_drop"))
  return float(drop) if _number(drop) else None


def quant_label(quant: dict | None) -> str | None:
  if not quant or quant.get("method", "none") == "none":
    return None
  if quant["method"] == "kmeans":
    return "k-means"
  granularity = quant.get("granularity", "channel")
  if granularity == "group":
    granularity = f"group{quant.get('group_size', '')}"
  kind = "sym" if quant.get("symmetric", True) else "asym"
  return f"{quant['method']} {kind} {granularity}"


def prune_label(prune: dict | None) -> str | None:
  if not prune or prune.get("method", "none") == "none":
    return None
  if prune["method"] == "nm":
    return f"{prune.get('n', 2)}:{prune.get('m', 4)}"
  return f"{prune['method']} {prune.get('scope', 'global')}"


def point_examples(record: dict) -> int | None:
  """How many examples a compress.jsonl line's metric was computed over: `measured_as.examples`
  (written by compress/grid.py since grids resume), else an `eval_examples` the evaluation
  logged; None in older lines."""
  for value in ((record.get("measured_as") or {}).get("examples"), record.get("eval_examples")):
    if _number(value) and value > 0:
      return int(value)
  return None


def compressed_points(run: Run, size: str) -> list[Compressed]:
  """The run's compress.jsonl points (newest line per point), in grid order."""
  out = []
  for name, r in run.points.items():
    value = point_value(r)
    if value is None or r.get("memory_bytes") is None:
      continue
    sparsity = r.get("achieved_sparsity", r.get("sparsity", 0.0)) or 0.0
    out.append(Compressed(size=size, run=run.name, point=name, bits=int(r.get("bits", 32)),
                          sparsity=float(sparsity), value=value, drop=point_drop(r),
                          memory_bytes=float(r["memory_bytes"]), quant=quant_label(r.get("quant")),
                          prune=prune_label(r.get("prune")), metric=str(r.get("metric", "accuracy")),
                          higher_is_better=bool(r.get("higher_is_better", True)), record=r,
                          examples=point_examples(r)))
  return out


def seed_means(runs_points: Sequence[Sequence[Compressed]], label: str) -> list[Compressed]:
  """The points of several seeds of one size as one model: each point measured in every seed,
  with its mean value, drop and memory and the spread of its value and drop, labelled `label`.
  One seed: its points as they are."""
  if len(runs_points) == 1:
    return list(runs_points[0])
  by_name = [{p.point: p for p in points} for points in runs_points]
  out = []
  for first in runs_points[0]:
    same = [points.get(first.point) for points in by_name]
    if any(p is None for p in same):
      continue
    mean = lambda xs: sum(xs) / len(xs)
    drops = [p.drop for p in same]
    examples = [p.examples for p in same]
    out.append(dataclasses.replace(
        first, size=label, run=label, value=mean([p.value for p in same]),
        drop=None if None in drops else mean(drops), memory_bytes=mean([p.memory_bytes for p in same]),
        spread=Spread.of([p.value for p in same]),
        drop_spread=None if None in drops else Spread.of(drops),
        examples=None if None in examples else min(examples)))
  return out


# A 95% interval from a normal approximation.
Z95 = 1.959964


def accuracy_interval(accuracy: float, examples: int | None,
                      seeds: Spread | None = None) -> tuple[float, float] | None:
  """A 95% interval for an accuracy (a mean over seeds, or one run's): p ± 1.96 sqrt(s^2/k +
  p(1-p)/n), with s the seeds' standard deviation, k their number and n the eval examples.
  The first term is the training noise of the seeds' mean, the second the eval set's binomial
  error, which does not shrink with seeds: every seed is scored on the same examples. One
  seed: the binomial term alone; without n: the seeds' term alone; neither: None. Clipped to
  [0, 1]."""
  variance, known = 0.0, False
  if seeds is not None and seeds.std is not None:
    variance += seeds.std ** 2 / seeds.n
    known = True
  if examples:
    variance += accuracy * (1 - accuracy) / examples
    known = True
  if not known:
    return None
  half = Z95 * math.sqrt(variance)
  return max(0.0, accuracy - half), min(1.0, accuracy + half)


def pareto_frontier(points: Sequence[T], memory: Callable[[T], float] = lambda p: p.memory_bytes,
                    score: Callable[[T], float] = lambda p: p.score) -> list[T]:
  """The points no other point dominates, by memory ascending.

  q dominates p when memory(q) <= memory(p) and score(q) >= score(p), one of them strictly;
  so two points with equal memory and score are both on the frontier.
  """
  keyed = [(memory(p), score(p), p) for p in points]
  front = [(m, a, p) for m, a, p in keyed
           if not any(mq <= m and aq >= a and (mq < m or aq > a) for mq, aq, _ in keyed)]
  front.sort(key=lambda t: (t[0], -t[1]))
  return [p for _, _, p in front]


@dataclasses.dataclass(frozen=True)
class MemoryAnswer:
  budget_mib: float
  best: Compressed | None
  runner_up: Compressed | None  # the best point of another size within the budget

  @property
  def margin(self) -> float | None:
    """How much better the best point is than the runner-up, in the metric's units (>= 0)."""
    if self.best is None or self.runner_up is None:
      return None
    return self.best.score - self.runner_up.score


def best_within_memory(points: Sequence[Compressed], mib: float) -> MemoryAnswer:
  """The best-scoring point taking at most `mib` MiB (ties: the smaller), and the best point
  of another size within the same budget."""
  fits = sorted((p for p in points if p.mib <= mib * (1 + _EPS)),
                key=lambda p: (-p.score, p.memory_bytes, p.size, p.point))
  if not fits:
    return MemoryAnswer(mib, None, None)
  best = fits[0]
  runner_up = next((p for p in fits if p.size != best.size), None)
  return MemoryAnswer(mib, best, runner_up)


def series(points: Sequence[Compressed], kind: str) -> dict[tuple[str, str], list[Compressed]]:
  """{(size, method): points} of one kind, for the metric against bits or sparsity: `kind`
  "quant" keeps the quantization-only points ordered by bits, "prune" the pruning-only ones by
  sparsity."""
  other, order = ("prune", "bits") if kind == "quant" else ("quant", "sparsity")
  out: dict[tuple[str, str], list[Compressed]] = {}
  for p in points:
    if getattr(p, kind) and not getattr(p, other):
      out.setdefault((p.size, getattr(p, kind)), []).append(p)
  return {k: sorted(v, key=lambda p: getattr(p, order)) for k, v in out.items()}


def baseline(points: Sequence[Compressed], size: str) -> Compressed | None:
  """The size's uncompressed point (neither quantized nor pruned)."""
  return next((p for p in points if p.size == size and not p.quant and not p.prune), None)


# ---------------------------------------------------------------------------
# RQ4: train/validation gap.


@dataclasses.dataclass(frozen=True)
class Gap:
  eval_loss: float  # the final eval
  train_loss: float  # mean over the last `tail` of the train lines
  train_lines: int  # how many train lines that mean is over

  @property
  def gap(self) -> float:
    return self.eval_loss - self.train_loss


def generalization_gap(metrics: Sequence[dict], tail: float = 0.1) -> Gap | None:
  """Final eval_loss minus the mean train loss over the last `tail` (10%) of train lines
  (at least one); None for a run without both."""
  ordered = sorted(enumerate(metrics), key=lambda im: (int(im[1].get("step") or 0), im[0]))
  evals = [m["eval_loss"] for _, m in ordered if _number(m.get("eval_loss"))]
  train = [m["loss"] for _, m in ordered if _number(m.get("loss"))]
  if not evals or not train:
    return None
  n = max(1, math.ceil(tail * len(train)))
  return Gap(float(evals[-1]), float(sum(train[-n:]) / n), n)


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------
# RQ5: compressibility.

# Fixed compressions at which sizes are compared: (title, test on a point).
REFERENCE_COMPRESSIONS: tuple[tuple[str, Callable[[Compressed], bool]], ...] = (
    ("uniform 3-bit", lambda p: bool(p.quant) and p.quant.startswith("uniform") and p.bits == 3
     and not p.prune),
    ("uniform 2-bit", lambda p: bool(p.quant) and p.quant.startswith("uniform") and p.bits == 2
     and not p.prune),
    ("k-means 2-bit", lambda p: p.quant == "k-means" and p.bits == 2 and not p.prune),
    ("50% pruning", lambda p: bool(p.prune) and p.prune.startswith("magnitude") and not p.quant
     and abs(p.sparsity - 0.5) < 0.02),
    ("90% pruning", lambda p: bool(p.prune) and p.prune.startswith("magnitude") and not p.quant
     and abs(p.sparsity - 0.9) < 0.02),
)


def weight_summary(points: Sequence[Compressed]) -> dict | None:
  """{kurtosis, outliers}: means over the uncompressed model's matrices (any point has it)."""
  for p in points:
    summary = (p.record.get("weights") or {}).get("summary")
    if summary and _number(summary.get("kurtosis")) and _number(summary.get("outliers")):
      return {"kurtosis": float(summary["kurtosis"]), "outliers": float(summary["outliers"])}
  return None


def reference_drops(points: Sequence[Compressed]) -> dict[str, Compressed]:
  """{reference title: the size's first point matching it} (see REFERENCE_COMPRESSIONS)."""
  out = {}
  for title, test in REFERENCE_COMPRESSIONS:
    match = next((p for p in points if test(p) and p.drop is not None), None)
    if match is not None:
      out[title] = match
  return out


_LAYER = re.compile(r"(?:^|/)layer_(\d+)(?:/|$)")
_STACKED = re.compile(r"^(.*)\[(\d+)\]$")


def split_layer_name(name: str) -> tuple[int | None, str]:
  """'encoder/layer_3/attention/key/kernel' -> (3, 'attention/key'); scanned layers
  ('encoder/layers/mlp/wi/kernel[3]') alike; (None, 'token_embed') outside the layers."""
  index = None
  stacked = _STACKED.match(name)
  if stacked:
    name, index = stacked.group(1), int(stacked.group(2))
    name = re.sub(r"(?:^|/)layers(?=/|$)", "", name)
  match = _LAYER.search(name)
  if match:
    index = int(match.group(1))
    name = name[:match.start()] + "/" + name[match.end():]
  parts = [p for p in name.split("/") if p and p not in ("encoder", "kernel", "embedding")]
  return index, "/".join(parts) or name


@dataclasses.dataclass(frozen=True)
class LayerErrors:
  by_layer: dict[int, float]  # mean relative error over each Transformer layer's matrices
  by_kind: dict[str, float]  # mean over layers for each matrix (attention/query, mlp/wi, ...)


def layer_errors(layer_error: dict[str, float]) -> LayerErrors:
  per_layer: dict[int, list[float]] = {}
  per_kind: dict[str, list[float]] = {}
  for name, err in layer_error.items():
    if not _number(err):
      continue
    index, kind = split_layer_name(name)
    if index is not None:
      per_layer.setdefault(index, []).append(float(err))
    per_kind.setdefault(kind, []).append(float(err))
  mean = lambda xs: sum(xs) / len(xs)
  return LayerErrors({i: mean(v) for i, v in sorted(per_layer.items())},
                     {k: mean(v) for k, v in sorted(per_kind.items())})


def layer_error_point(points_by_size: dict[str, Sequence[Compressed]]) -> str | None:
  """The point to compare per-layer errors at: a quantization-only point present for the
  most sizes, fewest bits first, uniform before k-means; else any compressed point."""
  counts: dict[str, int] = {}
  example: dict[str, Compressed] = {}
  for points in points_by_size.values():
    for p in points:
      if (p.quant or p.prune) and any(_number(v) and v > 0 for v in
                                      (p.record.get("layer_error") or {}).values()):
        counts[p.point] = counts.get(p.point, 0) + 1
        example.setdefault(p.point, p)
  if not counts:
    return None

  def rank(name: str):
    p = example[name]
    quant_only = bool(p.quant) and not p.prune
    return (-counts[name], not quant_only, p.bits, p.quant != "uniform sym channel", name)

  return min(counts, key=rank)


# ---------------------------------------------------------------------------
# Labels.


def run_labels(runs: Sequence[Run], sizes: dict[Shape, str]) -> dict[str, str]:
  """{workdir: label}: the size label, plus the run's name where several runs share a size."""
  count: dict[Shape, int] = {}
  for run in runs:
    count[run.shape] = count.get(run.shape, 0) + 1
  return {run.workdir: (sizes[run.shape] if count[run.shape] == 1
                        else f"{sizes[run.shape]} {run.name}") for run in runs}


def by_size(runs: Sequence[Run]) -> list[Run]:
  """Runs ordered by model size, then name."""
  return sorted(runs, key=lambda r: (r.shape.sort_key, r.name))
