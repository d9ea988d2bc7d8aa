"""The sections of report.md, one function each.

Every section function takes the `Context` (the loaded runs, OUT, the budgets asked
for, labels and colours), draws its figures into OUT and returns its markdown: a
heading, each figure followed by the table of the numbers behind it, or one line
saying which inputs were missing.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from tl_jax.report import analysis as A
from tl_jax.report import figures as F
from tl_jax.report import markdown as md
from tl_jax.report import regime, scaling
from tl_jax.report.runs import Run, Shape, data_tokens, format_params, size_labels
from tl_jax.tasks.metrics import TASK_METRICS


_TASK_NOUNS = {"finetune": "finetuned", "translate": "translation", "pretrain": "masked LM"}
_LABELS = {m.key: m.label for m in TASK_METRICS.values()}


def _first_upper(text: str) -> str:
  return text[:1].upper() + text[1:]  # str.capitalize would lower the rest: "BLEU" -> "Bleu"


@dataclasses.dataclass
class CompressGroup:
  """The compressed runs of one task and preset, and the metric their grids recorded."""
  task: str
  preset: str
  runs: list[Run]

  @property
  def title(self) -> str:
    return f"{self.preset} ({_TASK_NOUNS.get(self.task, self.task)})"

  @property
  def slug(self) -> str:
    """For figure names: the preset for finetuned runs (as before other tasks compressed)."""
    return md.slug(self.preset if self.task == "finetune" else f"{self.preset}-{self.task}")

  @property
  def metric(self) -> str:
    first = next(iter(self.runs[0].points.values()))
    return str(first.get("metric", "accuracy"))

  @property
  def higher_is_better(self) -> bool:
    first = next(iter(self.runs[0].points.values()))
    return bool(first.get("higher_is_better", True))

  @property
  def label(self) -> str:
    """The metric for axes and tables: 'accuracy', 'BLEU', 'validation loss'."""
    return _LABELS.get(self.metric, self.metric)

  @property
  def direction(self) -> str:
    return "higher is better" if self.higher_is_better else "lower is better"

  def fmt(self, value) -> str:
    return md.num(value, 4) if value is None else (f"{value:.2f}" if self.metric == "bleu"
                                                     else f"{value:.4f}")


@dataclasses.dataclass(frozen=True)
class LawFit:
  points: list  # scaling.Point of every pretraining eval after step 0
  fit: "scaling.Fit | None"  # None: no points, or refused
  refused: str | None  # the sentence saying why no law was fitted


@dataclasses.dataclass
class Context:
  runs: list[Run]
  out: str
  budget_seconds: list[float]  # empty: defaults spread over the runs
  budget_mib: list[float]  # empty: defaults spread over the compressed points
  sizes: dict[Shape, str] = dataclasses.field(default_factory=dict)
  labels: dict[str, str] = dataclasses.field(default_factory=dict)  # workdir -> series label
  colors: dict[str, tuple] = dataclasses.field(default_factory=dict)  # series label -> colour
  figures: list[str] = dataclasses.field(default_factory=list)
  _law: "LawFit | None" = dataclasses.field(default=None, repr=False)

  def law(self) -> "LawFit":
    """The scaling law of the pretraining evals, fitted once for the sections that use it."""
    if self._law is None:
      points = [scaling.Point(self.labels[r.workdir], n, d, loss)
                for r in self.of_task("pretrain") for n, d, loss in regime.eval_points(r)]
      refused = scaling.refusal(points) if points else None
      fit = scaling.fit(points) if points and refused is None else None
      self._law = LawFit(points, fit, refused)
    return self._law

  def of_task(self, task: str) -> list[Run]:
    return A.by_size([r for r in self.runs if r.task == task])

  def compress_groups(self) -> list[CompressGroup]:
    """Runs with compression grids, by task and preset: metrics of different tasks (and
    accuracies of different classification tasks) do not share an axis."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in A.by_size([r for r in self.runs if r.points]):
      groups.setdefault((run.task, run.preset or run.task), []).append(run)
    return [CompressGroup(task, preset, runs) for (task, preset), runs in sorted(groups.items())]

  def figure(self, name: str) -> str:
    path = os.path.join(self.out, name)
    self.figures.append(path)
    return path


def make_context(runs: list[Run], out: str, budget_seconds: Sequence[float] = (),
                 budget_mib: Sequence[float] = ()) -> Context:
  """Labels every run by its size (plus its name where a task group has two of a size)
  and gives every label one colour for all figures."""
  ctx = Context(runs=runs, out=out, budget_seconds=sorted(budget_seconds),
                budget_mib=sorted(budget_mib), sizes=size_labels(runs))
  groups = [ctx.of_task("pretrain"), ctx.of_task("translate")]
  groups += [g.runs for g in ctx.compress_groups()]
  # Finetuned runs without a grid still appear in the overview.
  groups.append([r for r in ctx.of_task("finetune") if not r.points])
  for group in groups:
    ctx.labels.update(A.run_labels(group, ctx.sizes))
  ordered = sorted(runs, key=lambda r: (r.shape.sort_key, r.name))
  # One colour per size; runs sharing a size get shades of it (and line styles in curves).
  base = F.palette(list(dict.fromkeys(ctx.sizes[r.shape] for r in ordered)))
  ctx.colors.update(base)
  shades: dict[str, list[str]] = {}
  for run in ordered:
    size, label = ctx.sizes[run.shape], ctx.labels[run.workdir]
    variants = shades.setdefault(size, [])
    if label != size and label not in variants:
      variants.append(label)
      ctx.colors[label] = F.shade(base[size], len(variants) - 1)
  for group in groups:  # the seeds of a size, drawn as one: the size's own colour
    for label, members in seed_groups(ctx, group):
      ctx.colors.setdefault(label, base[ctx.sizes[members[0].shape]])
  return ctx


def _pages(labels: Sequence[str]) -> list[list[str]]:
  unique = list(dict.fromkeys(labels))
  n = F.MAX_SIZES_PER_PLOT
  return [unique[i:i + n] for i in range(0, len(unique), n)] or [[]]


def _name(base: str, page: int) -> str:
  return f"{base}.png" if page == 0 else f"{base}_{page + 1}.png"


def _paged_note(pages: list) -> str:
  if len(pages) < 2:
    return ""
  return (f"(More than {F.MAX_SIZES_PER_PLOT} sizes: the curves are split over {len(pages)} "
          "figures, every table covers all of them.)")


def _figures(ctx: Context, labels: Sequence[str], base: str, alt: str, draw) -> list[str]:
  """One figure per page of sizes (`draw(page, path) -> path`), as markdown images, then a note
  where the sizes were split over several figures."""
  pages = _pages(labels)
  out = [md.image(draw(page, ctx.figure(_name(base, i))), alt) for i, page in enumerate(pages)]
  if note := _paged_note(pages):
    out.append(note)
  return out


# ---------------------------------------------------------------------------
# Overview.


def overview(ctx: Context) -> str:
  rows = []
  for run in sorted(ctx.runs, key=lambda r: (r.task, r.shape.sort_key, r.name)):
    final = "—"
    if run.task == "pretrain" and run.eval_lines("eval_loss"):
      final = f"eval loss {run.eval_lines('eval_loss')[-1]['eval_loss']:.4f}"
    elif run.task == "translate" and run.eval_lines("bleu"):
      final = f"BLEU {run.eval_lines('bleu')[-1]['bleu']:.2f}"
    elif run.task == "finetune" and run.best and isinstance(
        run.best.get(run.best.get("metric", "")), (int, float)):
      metric = run.best["metric"]
      final = f"best {metric} {run.best[metric]:.4f} (step {run.best.get('step', '?')})"
      if metric == "accuracy":
        final += _binomial(run.best[metric], run)
    # Every line carries eval_seconds (a timer); eval lines are those with a metric.
    evals = len([m for m in run.metrics if any(k in m for k in ("eval_loss", "bleu", "accuracy"))])
    rows.append([run.name, run.task, run.preset or "—", ctx.sizes[run.shape], evals,
                 md.seconds(run.max_train_seconds), final, len(run.points) or "—"])
  return "\n\n".join([
      "## Runs", f"{len(ctx.runs)} workdirs were read. Training seconds are `train_seconds` of "
      "metrics.jsonl: time spent training, without compilation, evaluation or checkpointing. "
      "Sizes are layers x width (encoder+decoder layers x width for translation), with the "
      "parameter count: as training logged it (metrics.jsonl `params`), else a masked LM's "
      "counted from its config, else where a compression grid recorded it. A best "
      "accuracy's 95% interval is the eval set's binomial error, p ± 1.96 √(p(1−p)/n), n = "
      "`eval_examples` of its eval lines.",
      md.table(["workdir", "task", "preset", "size", "evals", "train s", "final",
                "compressed points"], rows)] + repeated_seeds(ctx.runs) + devices_note(ctx.runs)
      + regime_table(ctx))


def devices_note(runs: Sequence[Run], compared: str = "") -> list[str]:
  """What the runs trained on (metrics.jsonl's `devices`), with a warning where that differs
  between runs or between the sessions of one: a training second on one device is not one on
  another. With `compared` (what the caller sets side by side), only the warning, if any."""
  by_devices = collections.defaultdict(list)
  for run in runs:
    by_devices[" then ".join(run.devices) or "not recorded"].append(run.name)
  known = [d for d in by_devices if d != "not recorded"]
  differ = len(known) > 1 or any(len(run.devices) > 1 for run in runs)
  listed = "; ".join(f"{d}: {', '.join(names)}" for d, names in sorted(by_devices.items()))
  if compared:
    return [f"**These {compared} set runs of different devices side by side** ({listed}): "
            "compare their seconds only within one device."] if differ else []
  if not known:
    return []
  if not differ:
    return [f"Every run trained on {known[0]} (metrics.jsonl's `devices`)." if len(by_devices) == 1
            else f"Devices (metrics.jsonl's `devices`; *not recorded* before 2026-12-06): {listed}."]
  return ["**The runs trained on different devices** (metrics.jsonl's `devices`; *not recorded* "
          f"before 2026-12-06): {listed}. Training seconds measure the device as much as the "
          "model: compare runs by seconds only within one device."]


def repeated_seeds(runs: Sequence[Run]) -> list[str]:
  """A note naming runs of one seed group that share a seed and an --init path (a run repeated,
  e.g. read from two folders): the spreads count each as one more seed, though it shares its
  seed's initial weights and data order, so a spread over such runs is run-to-run variation
  (timing), not seed-to-seed. Finetunes of different pretraining runs with one finetuning seed
  differ by their --init, so they are not repeats."""
  by_seed = collections.defaultdict(list)
  for run in runs:
    seed = (run.config.get("train") or {}).get("seed")
    by_seed[(run.seed_group, seed, run.init_workdir)].append(run.workdir)
  # Paths from the folder the repeats share: their names alone may be equal (two DIRs).
  named = lambda dirs: sorted(os.path.relpath(d, os.path.commonpath(dirs)) for d in dirs)
  repeats = [f"{', '.join(f'`{n}`' for n in named(dirs))} (seed {seed})"
             for (_, seed, _), dirs in sorted(by_seed.items(), key=lambda kv: sorted(kv[1]))
             if len(dirs) > 1]
  if not repeats:
    return []
  return ["Repeated seeds: " + "; ".join(repeats) + ". The runs of each list have one config, "
          "one seed and one --init; the spreads below count every run as a seed of its size, so "
          "where these runs are in a group its spread is run-to-run variation, not seed-to-seed."]


def eval_examples(run: Run) -> int | None:
  """The eval examples of a run's primary split, as its evaluations logged them (eval_examples,
  written since the report's accuracy intervals); None in older files."""
  return next((int(m["eval_examples"]) for m in run.metrics
               if isinstance(m.get("eval_examples"), (int, float)) and m["eval_examples"] > 0), None)


def _binomial(accuracy: float, run: Run) -> str:
  """', 95% interval a to b (n = N)' for one run's accuracy, or a note that n is not known."""
  n = eval_examples(run)
  interval = A.accuracy_interval(accuracy, n)
  if interval is None:
    return ", no interval (eval examples not logged)"
  return f", 95% interval {interval[0]:.4f} to {interval[1]:.4f} (n = {n:,})"


def _group_name(group: A.GroupReading) -> str:
  n = len(group.readings)
  return group.label if n == 1 else f"{group.size} ({n} seeds)"


def _mean_spread(metric, spread: A.Spread) -> str:
  if spread.std is None:
    return metric.format(spread.mean)
  return f"{metric.format(spread.mean)} ± {metric.format(spread.std)}"


def _verdict(best: A.Spread, runner: A.Spread | None) -> str:
  """The verdict, with Welch's p-value of the margin where both spreads are known."""
  word = A.verdict(best, runner)
  p = A.welch_p(best, runner) if runner is not None else None
  return word if p is None else f"{word} (p = {p:.2g})"


def _read_at(group: A.GroupReading) -> str:
  return "; ".join(f"step {r.step} at {md.seconds(r.seconds)} s" for r in group.readings)


def _regime_note(ctx: Context) -> list[str]:
  """Which regime the budget advice above was measured in (the runs table has the numbers)."""
  found = [(ctx.labels[r.workdir], regime.of_run(r)) for r in ctx.of_task("pretrain")]
  found = [(label, r) for label, r in found if r is not None]
  if not found:
    return []
  repeated = [label for label, r in found if r.passes is not None and r.passes > 1.0]
  past = [label for label, r in found if r.tokens_per_param > regime.OPTIMAL_TOKENS_PER_PARAM]
  if not repeated and not past:
    return [f"Regime: all {len(found)} runs saw their data at most once and stayed below "
            f"{regime.OPTIMAL_TOKENS_PER_PARAM:g} tokens per parameter, the compute-bound regime "
            "in which the paper makes its RQ1 claim."]
  parts = []
  if repeated:
    parts.append(f"{len(repeated)} of {len(found)} runs repeated their data ({', '.join(repeated)})")
  if past:
    parts.append(f"{len(past)} of {len(found)} ran past {regime.OPTIMAL_TOKENS_PER_PARAM:g} tokens "
                 f"per parameter ({', '.join(past)})")
  return [f"Regime: {'; '.join(parts)}. Those runs are data-bound or past compute-optimal, "
          "where the paper does not claim that larger models win; read their rows as RQ4 "
          "(data size), not as a test of RQ1."]


def regime_table(ctx: Context) -> list[str]:
  """The compute regime of each pretraining run (report/regime.py)."""
  rows = []
  for run in sorted(ctx.of_task("pretrain"), key=lambda r: (r.shape.sort_key, r.name)):
    r = regime.of_run(run)
    if r is None:
      continue
    rows.append([ctx.labels[run.workdir], format_params(r.params), format_params(r.non_embedding),
                 f"{r.steps:,}", f"{r.tokens_seen:,}", f"{r.data_tokens:,}" if r.data_tokens else "—",
                 md.num(r.passes, 3), md.num(r.tokens_per_param, 3), f"{r.flops:.3g}",
                 "; ".join([*r.flags, *filter(None, [run.unfinished])]) or "—"])
  if not rows:
    return []
  return ["### Compute regime of the pretraining runs",
          "Tokens seen = steps x batch rows x sequence length; passes = tokens seen / training "
          "data tokens; training FLOPs = 6 x matrix weights x tokens + attention (the MFU "
          f"convention). Compute-optimal training is near {regime.OPTIMAL_TOKENS_PER_PARAM:g} tokens "
          "per parameter (Chinchilla, Hoffmann et al. 2022): RQ1's claim that larger models reach a "
          "loss sooner is about runs well below it, on data that does not repeat. A run that "
          "repeats its data is in RQ4's data-bound regime, where that claim need not hold.",
          md.table(["run", "params", "non-embedding", "steps", "tokens seen", "data tokens",
                    "passes", "tokens/param", "training FLOPs", "flags"], rows)]


# ---------------------------------------------------------------------------
# 1. RQ1: curves against training seconds.


def _curves(ctx: Context, runs: list[Run], key: str) -> list[A.Curve]:
  return [A.eval_curve(r, key, ctx.labels[r.workdir], ctx.sizes[r.shape])
          for r in runs if r.eval_lines(key)]


def seconds_budgets(ctx: Context, curves: Sequence[A.Curve]) -> list[float]:
  return ctx.budget_seconds or A.default_budgets(curves)


def pretraining(ctx: Context) -> str:
  out = ["## 1. RQ1: validation loss against training time",
         "Each curve is one run's evaluations placed at the training seconds they were taken "
         "(x = `train_seconds` of the eval lines), so runs that evaluate at different steps "
         "line up by wall-clock training time. The right axis reads the loss as perplexity."]
  runs = ctx.of_task("pretrain")
  perplexity = lambda m: md.num(m.get("eval_perplexity") or math.exp(min(m["eval_loss"], 700.0)), 5)
  compute, frontier_text = _compute_panel(ctx, runs)
  block = _rq1_curves(ctx, runs, "eval_loss", "rq1_pretrain_loss", "validation loss",
                      "Masked-LM pretraining: validation loss by model size",
                      "validation loss (nats per masked token, log scale)", "pretraining",
                      ["eval loss", "perplexity"], lambda m: [f"{m['eval_loss']:.4f}", perplexity(m)],
                      compute=compute, log_y=True, perplexity_axis=True)
  out += block or ["No pretraining workdir with eval lines (`eval_loss` in metrics.jsonl) was found, "
                   "so there are no pretraining curves."]
  if block:
    out += frontier_text
  skipped = [r.name for r in runs if not r.eval_lines("eval_loss")]
  if skipped:
    out.append(f"Pretraining workdirs without evals (left out): {', '.join(skipped)}.")

  runs = ctx.of_task("translate")
  block = _rq1_curves(ctx, runs, "bleu", "rq1_translate_bleu", "BLEU",
                      "Translation: validation BLEU by model size", "validation BLEU", "translation",
                      ["BLEU", "eval loss"], lambda m: [f"{m['bleu']:.2f}", md.fixed(m.get("eval_loss"), 4)])
  if block:
    out += ["### Translation: BLEU against training time"] + block
  elif runs:
    out.append("Translation workdirs were found but none logged BLEU yet, so there are no BLEU curves.")
  return "\n\n".join(out)


FRONTIER_POINTS = 60
FRONTIER_PAST = 4.0  # the frontier runs on to this many times the largest compute measured


def _compute_panel(ctx: Context, runs: list[Run]) -> tuple[dict | None, list[str]]:
  """The RQ1 figure's panel against training compute, with the fitted law's compute-optimal
  frontier (figures.training_curves' `compute`), and the text and table behind it; (None, [a
  sentence]) where no usable law was fitted."""
  law_fit = ctx.law()
  fit = law_fit.fit
  if fit is None:
    return None, ([f"No compute-optimal frontier is drawn: {law_fit.refused[0].lower()}"
                   f"{law_fit.refused[1:]}"] if law_fit.refused else [])
  if fit.at_bounds:
    return None, [f"No compute-optimal frontier is drawn: the fitted law put "
                  f"{' and '.join(fit.at_bounds)} at a bound of its range (see the scaling law below)."]
  per_step = {}
  for run in runs:
    r = regime.of_run(run)
    if r is not None:
      per_step[ctx.labels[run.workdir]] = 6 * r.non_embedding * r.tokens_seen / r.steps
  flops = [6 * p.params * p.tokens for p in fit.points]
  grid = np.geomspace(min(flops), FRONTIER_PAST * max(flops), FRONTIER_POINTS)
  params, tokens, losses = fit.law.frontier(grid)
  shown = np.unique(np.round(np.linspace(0, FRONTIER_POINTS - 1, 6)).astype(int))
  rows = [[f"{grid[i]:.3g}", md.num(float(params[i]), 3), md.num(float(tokens[i]), 3),
           f"prediction {md.num(float(losses[i]), 4)}"] for i in shown]
  text = [f"The third panel places the same evals at their training compute C = 6 N D (N = "
          f"non-embedding parameters, D = tokens seen), the scaling law's units. The dashed line is "
          f"the fitted law's loss at the compute-optimal size for each C (N_opt from Chinchilla's "
          f"eq. 4, D_opt = C / 6 N_opt), from the smallest compute of an eval to {FRONTIER_PAST:g}x "
          f"the largest: a **prediction** of the law, not a measurement. Runs whose evals lie above "
          f"it were not at their compute-optimal size.",
          md.details("The compute-optimal frontier (predictions of the fitted law)",
                     md.table(["C = 6ND (FLOPs)", "N_opt (non-embedding)", "D_opt (tokens)",
                               "predicted loss"], rows))]
  return {"per_step": per_step, "frontier": (grid, losses)}, text


def _rq1_curves(ctx: Context, runs: list[Run], key: str, base: str, what: str, title: str,
                ylabel: str, kind: str, columns: list[str], cells, compute: dict | None = None,
                **figure) -> list[str]:
  """The figures of `key` against training seconds and steps (the seeds of a size as their mean
  with a min..max band; with `compute`, a panel against training FLOPs as well), the table of
  the bands and the table of every eval (`cells(line)` gives the `columns`); [] where no run
  logged `key`."""
  curves = _curves(ctx, runs, key)
  if not curves:
    return []
  # Budgets past every run are predictions (section 2), not places on these curves.
  budgets = [b for b in seconds_budgets(ctx, curves) if any(c.reaches(b) for c in curves)]
  singles, bands = A.seed_bands(curves)
  if compute:  # a band is drawn at its seeds' (equal) compute per step
    per_step = compute["per_step"]
    per_step.update({b.label: per_step[b.members[0]] for b in bands if b.members[0] in per_step})
  out = _figures(ctx, [c.size for c in curves], base, f"{what} against training seconds and steps",
                 lambda page, path: F.training_curves(
                     [c for c in singles if c.size in page], path, colors=ctx.colors, title=title,
                     ylabel=ylabel, budgets=budgets, bands=[b for b in bands if b.size in page],
                     compute=compute, **figure))
  if bands:
    out.append("Sizes trained with several seeds are drawn as the mean of their seeds, shaded from "
               "the lowest seed's value to the highest (min..max, not a standard deviation).")
    rows = [[b.label, b.aligned, md.num(step, 6), md.seconds(sec), f"{v:.4f}", f"{lo:.4f}", f"{hi:.4f}"]
            for b in bands for step, sec, v, lo, hi in zip(b.steps, b.seconds, b.values, b.lo, b.hi)]
    out.append(md.details(f"Seed means and ranges behind the bands ({len(rows)} rows)",
                          md.table(["size", "seeds aligned by", "step", "train s", f"mean {what}",
                                    "min", "max"], rows)))
  rows = [[ctx.sizes[run.shape], run.name, m.get("step", 0),
           md.seconds(float(m.get("train_seconds") or 0.0))] + cells(m)
          for run in runs for m in _by_time(run.eval_lines(key))]
  out.append(md.details(f"Eval points of {len(curves)} {kind} run(s) ({len(rows)} rows)",
                        md.table(["size", "workdir", "step", "train s"] + columns, rows)))
  return out


def _by_time(lines: list[dict]) -> list[dict]:
  return sorted(lines, key=lambda m: (m.get("train_seconds") or 0.0, m.get("step") or 0))


# ---------------------------------------------------------------------------
# 2. Budget advice.


def budgets(ctx: Context) -> str:
  out = ["## 2. Which size to train and deploy under a budget",
         "For a training budget of S seconds each run counts with its last eval after step 0 at or "
         "before S training seconds, or up to one step or "
         f"{A.READ_SLACK:.0%} of S past it, where an eval timed for "
         "S lands (the row names the step and second of each reading); a run "
         "within one step of S, or held to S by its own train.max_train_seconds, reached it, and one "
         "whose training stopped earlier is listed as *not reached* and never extrapolated. The "
         "runner-up is the best run of another size, and the margin how much the best run beats it "
         "by. Runs that differ only by their seed (train.seed) count as one, by their mean ± "
         "standard deviation; a size is called the winner only when its margin exceeds the two "
         "standard deviations together, else the row says *tie within noise* (and *one seed* where "
         "a spread is unknown). Beside it, p is Welch's two-sided t-test of the two means over "
         "their seeds: were the two sizes equal, how often seed noise alone would give a margin at "
         "least this large. With two seeds a size it has one to two degrees of freedom, so a "
         "margin of both standard deviations together gives p = 0.18 where the two are equal, "
         "more where they differ: read *winner* with its p."]
  any_training = False
  for task in ("pretrain", "translate"):
    metric = TASK_METRICS[task]
    curves = _curves(ctx, ctx.of_task(task), metric.key)
    if not curves:
      continue
    any_training = True
    budgets_s = seconds_budgets(ctx, curves)
    origin = "as asked (--budget-seconds)" if ctx.budget_seconds else \
        "spread up to where the shortest run stopped (set them with --budget-seconds)"
    out.append(f"### Training budgets: best {metric.label} ({_TASK_NOUNS[task]})")
    out.append(f"Budgets {origin}; {'higher' if metric.higher_is_better else 'lower'} is better.")
    out += devices_note(ctx.of_task(task), "rows")
    rows, past_all = [], []
    for b in budgets_s:
      ans = A.best_at_budget(curves, b, higher_is_better=metric.higher_is_better)
      if len(ans.not_reached) == len(curves):  # a row of every run's name and nothing measured
        past_all.append(md.num(b, 4))
        continue
      groups = A.groups_at_budget(ans, curves, higher_is_better=metric.higher_is_better)
      best = groups[0] if groups else None
      runner = next((g for g in groups[1:] if g.size != best.size), None) if best else None
      rows.append([
          md.num(b, 4),
          _group_name(best) if best else "no run reached it",
          _mean_spread(metric, best.spread) if best else "—",
          _read_at(best) if best else "—",
          _group_name(runner) if runner else ("no other size" if best else "—"),
          f"{_mean_spread(metric, runner.spread)} ({_read_at(runner)})" if runner else "—",
          metric.format(abs(best.spread.mean - runner.spread.mean)) if runner else "—",
          ", ".join(ans.not_reached) or "—",
          ", ".join(ans.no_eval) or "—",
          _verdict(best.spread, runner.spread if runner else None) if best else "—"])
    if rows:
      out.append(md.table(["budget (train s)", "best", metric.label, "read at", "runner-up",
                           f"runner-up {metric.label}", "margin", "not reached", "no eval by then",
                           "verdict"], rows))
    if past_all:
      out.append(f"No run reached {', '.join(past_all)} s"
                 + (": see the predictions below." if task == "pretrain" else "."))
    if task == "pretrain":
      out.extend(_regime_note(ctx))
      out.extend(budget_predictions(ctx, curves))
  if not any_training:
    out.append("No pretraining or translation run with evals was found, so there is no "
               "training-budget advice.")

  groups = ctx.compress_groups()
  if not groups:
    out.append(_NO_GRIDS.format(what="memory-budget advice"))
  for group in groups:
    points = _group_points(ctx, group.runs)
    budgets_mib = ctx.budget_mib or A.default_memory_budgets([p.mib for p in points])
    origin = "as asked (--budget-mib)" if ctx.budget_mib else \
        "spread over the compressed points (set them with --budget-mib)"
    out.append(f"### Memory budgets: best compressed model by {group.label} ({group.title})")
    out.append(f"Budgets {origin}; {group.direction}. The runner-up is the best point of another "
               "size within the same budget.")
    rows = []
    accuracy = group.metric == "accuracy"
    for b in budgets_mib:
      ans = A.best_within_memory(points, b)
      best, runner = ans.best, ans.runner_up
      spread = lambda p: p.spread or A.Spread(p.value, None, 1)
      blank = ["—"] * len(_value_columns(group))
      rows.append([md.num(b, 4),
                   f"{best.size}: {best.point}" if best else "nothing fits",
                   *(_value_cells(group, best) if best else blank), md.num(best.mib, 4) if best else "—",
                   f"{runner.size}: {runner.point}" if runner else
                   ("no other size fits" if best else "—"),
                   *(_value_cells(group, runner) if runner else blank),
                   md.num(runner.mib, 4) if runner else "—",
                   group.fmt(ans.margin) if ans.margin is not None else "—",
                   _verdict(spread(best), spread(runner) if runner else None) if best else "—"])
    out.append(md.table(["budget (MiB)", "best point", *_value_columns(group), "MiB",
                         "runner-up (other size)", f"runner-up {group.label}",
                         *(["runner-up 95% interval"] if accuracy else []), "runner-up MiB", "margin",
                         "verdict"], rows))
    if accuracy:
      out.append(_INTERVAL_NOTE)
  return "\n\n".join(out)


def settings_compared(ctx: Context) -> str:
  """A/B: runs of one task and size that differ in a single setting (report/analysis.py)."""
  rows = []
  for task, metric in TASK_METRICS.items():
    by_shape: dict = {}
    for run in ctx.of_task(task):
      by_shape.setdefault(run.shape, []).append(run)
    for shape, runs in by_shape.items():
      for c in A.one_setting_comparisons(runs, metric.key):
        ahead = max((0, 1), key=lambda i: metric.score(c.spreads[i].mean))
        side = lambda i: [f"`{c.values[i]}`", ", ".join(c.names[i]), _mean_spread(metric, c.spreads[i])]
        rows.append([_TASK_NOUNS[task], ctx.sizes[shape], f"`{c.setting}`", *side(0), *side(1),
                     metric.format(c.spreads[1].mean - c.spreads[0].mean), f"`{c.values[ahead]}`",
                     _verdict(c.spreads[ahead], c.spreads[1 - ahead])])
  if not rows:
    return ""
  return "\n\n".join([
      "## Settings compared",
      "Runs of one task and size whose configs differ in exactly one setting (besides train.seed "
      "and --init's path; a training budget or data size is compared in the RQ1 and RQ4 "
      "sections instead), each side's seeds as one: the mean ± standard deviation of the runs' "
      "last evals (validation loss, BLEU or accuracy), the difference B − A, the side ahead, and "
      "the verdict and Welch p-value as in the budget advice. Runs stopped at different times "
      "are compared as they ended; the budget tables above compare sizes at equal seconds.",
      md.table(["task", "size", "setting", "A", "A runs", "A final", "B", "B runs", "B final",
                "B − A", "ahead", "verdict"], rows)])


PREDICT_PAST = (2.0, 4.0)  # default prediction budgets: these multiples of the longest run


def prediction_budgets(ctx: Context, curves: Sequence[A.Curve]) -> list[float]:
  """Training-seconds budgets past the longest run: those asked for (--budget-seconds), else
  PREDICT_PAST times the longest run's training seconds."""
  longest = max(c.reached_seconds for c in curves)
  if longest <= 0:  # no run logged its training seconds: nothing to extrapolate from
    return []
  asked = [b for b in ctx.budget_seconds if b > longest + max(c.step_seconds for c in curves)]
  return asked if ctx.budget_seconds else [k * longest for k in PREDICT_PAST]


def budget_predictions(ctx: Context, curves: Sequence[A.Curve]) -> list[str]:
  """The training-budget advice past the longest run: the fitted law's loss for each size, in a
  table of its own, every row a prediction with its 90% bootstrap interval."""
  fit = ctx.law().fit
  budgets_s = prediction_budgets(ctx, curves)
  if not budgets_s:
    return []
  heading = "#### Predictions past the longest run (not measurements)"
  if fit is None:
    return [heading, "No predictions: no scaling law was fitted (see the scaling law section)."]
  sizes, left_out = [], []
  for label, group in seed_groups(ctx, ctx.of_task("pretrain")):
    found = [(regime.of_run(r), r.max_train_seconds) for r in group]
    paces = [reg.tokens_seen / seconds for reg, seconds in found if reg is not None and seconds > 0]
    if len(paces) < len(group):
      left_out.append(label)
      continue
    sizes.append(scaling.Size(label, found[0][0].non_embedding, sum(paces) / len(paces)))
  if not sizes:
    return [heading, "No predictions: no pretraining run records its batch shape and pace."]
  rows = []
  for predictions in scaling.predict_budgets(fit, sizes, budgets_s):
    for rank, p in enumerate(predictions, 1):
      pace = next(s.tokens_per_second for s in sizes if s.label == p.size)
      rows.append(["prediction", md.num(p.seconds, 4), rank, p.size, md.num(pace, 4),
                   f"{p.tokens:.3g}", md.num(p.loss, 4),
                   f"{md.num(p.interval[0], 4)} to {md.num(p.interval[1], 4)}", md.percent(p.wins, 0)])
  origin = ("as asked, --budget-seconds" if ctx.budget_seconds else
            " and ".join(f"{k:g}x" for k in PREDICT_PAST) + " its training seconds")
  out = [heading,
         f"The fitted scaling law's validation loss for each size at budgets past the longest run "
         f"({origin}). "
         "Seconds become tokens at each size's own pace, tokens seen / training seconds over its "
         "whole run (the mean over its seeds), assumed to hold past its last step; the law assumes "
         "data that does not repeat and a schedule laid out for the longer budget, neither of which "
         "these runs measured. The interval is the 5th-95th percentile over the bootstrap fits; "
         "*lowest in* is the share of them under which the size has the lowest loss at that budget "
         "(the sizes' predictions share each fit, so this, not overlapping intervals, says how sure "
         "the ranking is).",
         md.table(["kind", "budget (train s)", "rank", "size", "tokens/s (measured)",
                   "tokens at budget", "predicted loss", "90% interval", "lowest in"], rows)]
  if fit.at_bounds:
    out.append(f"The fit put {' and '.join(fit.at_bounds)} at a bound of its range: do not rely on "
               "these predictions.")
  if left_out:
    out.append(f"Left out (no batch shape or pace in their files): {', '.join(left_out)}.")
  return out


_NO_GRIDS = ("No compress.jsonl was found in any workdir (run `tl-jax compress` on a finetuned, "
             "translation or pretraining workdir), so there is no {what}.")


# ---------------------------------------------------------------------------
# 3. RQ2: the metric against bits and sparsity.


def seed_groups(ctx: Context, runs: Sequence[Run]) -> list[tuple[str, list[Run]]]:
  """[(label, runs)]: runs that differ only by their seed as one, labelled by their size (the
  run's own label for a single seed), in the order of their first run."""
  seeds: dict[str, list[Run]] = {}
  for run in runs:
    seeds.setdefault(run.seed_group, []).append(run)
  return [(ctx.labels[group[0].workdir] if len(group) == 1
           else f"{ctx.sizes[group[0].shape]} ({len(group)} seeds)", group) for group in seeds.values()]


def _group_points(ctx: Context, runs: list[Run]) -> list[A.Compressed]:
  """The runs' points, the seeds of a size as one model (their means, with spread)."""
  out = []
  for label, group in seed_groups(ctx, runs):
    out += A.seed_means([A.compressed_points(r, ctx.labels[r.workdir]) for r in group], label)
  return out


def _sized_labels(ctx: Context, runs: list[Run]) -> list[str]:
  """The labels the grouped points carry (a size for several seeds), for paging figures."""
  return [label for label, _ in seed_groups(ctx, runs)]


_INTERVAL_NOTE = ("95% interval of an accuracy p: p ± 1.96 √(s²/k + p(1−p)/n), with s the standard "
                  "deviation over k seeds (training noise of their mean) and n the eval examples "
                  "(`measured_as.examples` of compress.jsonl; the eval set's binomial error, the same "
                  "for every seed, so it does not shrink with k); one seed: the binomial term alone. "
                  "Sizes scored on the same eval set share that binomial error, so their difference "
                  "is known better than two overlapping intervals suggest.")


def _seed_notes(group: "CompressGroup", points: Sequence[A.Compressed]) -> list[str]:
  """What the ± and the error bars of a grid's points mean, where some average several seeds;
  the interval's formula for accuracies."""
  out = []
  if any(p.spread is not None and p.spread.n > 1 for p in points):
    out.append("Points of sizes trained with several seeds are their mean (the table: ± the "
               "standard deviation over the seeds; the figure: error bars from the lowest seed to "
               "the highest).")
  if group.metric == "accuracy":
    out.append(_INTERVAL_NOTE)
  return out


def _with_spread(group: "CompressGroup", p: A.Compressed) -> str:
  """The value, with ± the seeds' standard deviation where it averages several."""
  if p.spread is not None and p.spread.std is not None:
    return f"{group.fmt(p.value)} ± {group.fmt(p.spread.std)}"
  return group.fmt(p.value)


def _interval(p: A.Compressed) -> str:
  interval = A.accuracy_interval(p.value, p.examples, p.spread)
  return "—" if interval is None else f"{interval[0]:.4f} to {interval[1]:.4f}"


def _value_columns(group: "CompressGroup") -> list[str]:
  """The value's column headers: with a 95% interval for accuracies."""
  return [group.label] + (["95% interval"] if group.metric == "accuracy" else [])


def _value_cells(group: "CompressGroup", p: A.Compressed) -> list[str]:
  return [_with_spread(group, p)] + ([_interval(p)] if group.metric == "accuracy" else [])


def quantization_pruning(ctx: Context) -> str:
  def body(group: CompressGroup) -> list[str]:
    points = _group_points(ctx, group.runs)
    quant, prune = A.series(points, "quant"), A.series(points, "prune")
    if not quant and not prune:
      return ["The grids hold no quantization-only or pruning-only points."]
    labels = _sized_labels(ctx, group.runs)
    out = _figures(ctx, labels, f"rq2_{group.slug}",
                   f"{group.label} against bits and sparsity",
                   lambda page, path: F.compression_sweeps(
                       {k: v for k, v in quant.items() if k[0] in page},
                       {k: v for k, v in prune.items() if k[0] in page},
                       {s: b.value for s in page if (b := A.baseline(points, s))}, path,
                       colors={s: ctx.colors[s] for s in page},
                       title=f"{_first_upper(group.label)} under quantization and pruning ({group.title})",
                       ylabel=f"{group.label} ({group.direction})",
                       higher_is_better=group.higher_is_better))
    rows = []
    for (size, method), pts in list(quant.items()) + list(prune.items()):
      for p in pts:
        rows.append([size, method, p.point, p.bits if p.bits < 32 else "32 (float)",
                     md.percent(p.sparsity), *_value_cells(group, p), group.fmt(p.drop),
                     md.num(p.mib, 4)])
    base_rows = [[s, "uncompressed", b.point, 32, "0.0%", *_value_cells(group, b), group.fmt(0.0),
                  md.num(b.mib, 4)] for s in labels if (b := A.baseline(points, s))]
    out.append(md.table(["size", "method", "point", "bits", "sparsity", *_value_columns(group),
                         "drop (+ = worse)", "MiB"], base_rows + rows))
    out += _seed_notes(group, points)
    return out

  return _per_group(ctx, "## 3. RQ2: the metric against bits and sparsity",
                    "Quantization-only points against bits per weight and pruning-only points "
                    "against the achieved sparsity of the pruned matrices, one line per size and "
                    "method, judged by each grid's metric (accuracy, BLEU, validation loss). Dotted "
                    "levels: each size's uncompressed value.", body)


def _per_group(ctx: Context, heading: str, intro: str, body) -> str:
  """A section with a subsection per group of compressed runs: `body(group) -> [markdown]`."""
  out = [heading, intro]
  groups = ctx.compress_groups()
  if not groups:
    out.append(_NO_GRIDS.format(what="such section"))
  for group in groups:
    out.append(f"### {group.title}")
    out += body(group)
  return "\n\n".join(out)


# ---------------------------------------------------------------------------
# 4. RQ3: the metric against memory.


def memory_frontier(ctx: Context) -> str:
  def body(group: CompressGroup) -> list[str]:
    points = _group_points(ctx, group.runs)
    frontier = A.pareto_frontier(points)
    labels = _sized_labels(ctx, group.runs)
    mib_budgets = ctx.budget_mib or A.default_memory_budgets([p.mib for p in points])
    out = _figures(ctx, labels, f"rq3_{group.slug}",
                   f"{group.label} against memory with the Pareto frontier",
                   lambda page, path: F.memory_frontier(
                       [p for p in points if p.size in page], frontier, path,
                       colors={s: ctx.colors[s] for s in page},
                       title=f"{_first_upper(group.label)} against memory, all sizes ({group.title})",
                       ylabel=f"{group.label} ({group.direction})", budgets_mib=mib_budgets))
    if len(out) > len(_pages(labels)):
      out[-1] += " Each figure draws the frontier of all sizes."
    out.append(f"Pareto frontier ({len(frontier)} of {len(points)} points):")
    out.append(md.table(["size", "point", "bits", "sparsity", "MiB", "of float32",
                         *_value_columns(group)],
                        [[p.size, p.point, p.bits, md.percent(p.sparsity), md.num(p.mib, 4),
                          md.percent(p.record.get("memory_ratio")), *_value_cells(group, p)]
                         for p in frontier]))
    all_rows = [[p.size, p.point, p.bits, md.percent(p.sparsity), md.num(p.mib, 4),
                 md.percent(p.record.get("memory_ratio")), *_value_cells(group, p),
                 "yes" if p in frontier else ""] for p in sorted(points, key=lambda p: p.memory_bytes)]
    out.append(md.details(f"All {len(points)} points",
                          md.table(["size", "point", "bits", "sparsity", "MiB", "of float32",
                                    *_value_columns(group), "on frontier"], all_rows)))
    out += _seed_notes(group, points)
    return out

  return _per_group(ctx, "## 4. RQ3: the metric against memory",
                    "Every compressed point of every size (quantized, pruned, both, and float32) at "
                    "the memory it takes (compress.jsonl `memory_bytes`: stored values, indices or "
                    "bitmasks, scales and codebooks). The black staircase is the Pareto frontier: the "
                    "best value reachable within each memory; a point is on it iff no other point "
                    "takes no more memory and is at least as good, one of the two strictly.", body)


# ---------------------------------------------------------------------------
# 5. RQ4: train/validation gap against data size.


def data_size(ctx: Context) -> str:
  out = ["## 5. RQ4: train/validation gap against training data"]
  rows, unknown = [], []  # rows: (run, tokens, where the count comes from, gap)
  for run in ctx.of_task("pretrain"):
    gap = A.generalization_gap(run.metrics)
    if gap is None:
      continue
    tokens, source = data_tokens(run)
    if tokens is None:
      unknown.append(run.name)
    else:
      rows.append((run, tokens, source, gap))
  left_out = (f"Left out: {', '.join(unknown)} (the whole source was read and its token count "
              "was not logged)." if unknown else "")
  if len({tokens for _, tokens, _, _ in rows}) < 2:
    out.append("No two pretraining runs differ in training data size (`data.max_train_tokens`), so "
               "there is no gap-against-data curve; sweep the data size to fill this section.")
    return "\n\n".join(out + ([left_out] if left_out else []))
  out.append("Gap = final validation loss minus the mean training loss over the last 10% of the "
             "train lines; data size = `data.max_train_tokens` (or the token count the run logged "
             "where it read the whole source). One line per model size: its runs with different "
             "data sizes.")
  rows.sort(key=lambda r: (r[0].shape.sort_key, r[1], r[0].name))
  series: dict[str, list[tuple[int, float]]] = {}
  for run, tokens, _, gap in rows:
    series.setdefault(ctx.sizes[run.shape], []).append((tokens, gap.gap))
  out += _figures(ctx, list(series), "rq4_gap", "train/validation gap against training tokens",
                  lambda page, path: F.gap_vs_data(
                      {s: series[s] for s in page}, path, colors=ctx.colors,
                      title="Generalization gap against training data, by size"))
  out.append(md.table(["size", "workdir", "train tokens", "from", "final eval loss",
                       "train loss (last 10%)", "train lines averaged", "gap"],
                      [[ctx.sizes[run.shape],
                        run.name + (f" ({cut}; its last eval, not its end)"
                                    if (cut := run.unfinished) else ""), f"{tokens:,}", source,
                        f"{g.eval_loss:.4f}",
                        f"{g.train_loss:.4f}", g.train_lines, f"{g.gap:+.4f}"]
                       for run, tokens, source, g in rows]))
  if left_out:
    out.append(left_out)
  return "\n\n".join(out)


# ---------------------------------------------------------------------------
# 6. RQ5: compressibility.


def compressibility(ctx: Context) -> str:
  def body(group: CompressGroup) -> list[str]:
    out = []
    seeds = {label: [A.compressed_points(r, ctx.labels[r.workdir]) for r in members]
             for label, members in seed_groups(ctx, group.runs)}
    # Accuracy drops read best in percentage points; BLEU and losses in their own units.
    scale, unit = (100.0, "percentage points") if group.metric == "accuracy" else (1.0, group.label)
    rows = [row for size, per_seed in seeds.items() if (row := _weights_row(size, per_seed))]
    if not rows:
      out.append("The grids carry no weight statistics (run `tl-jax compress` with analysis=true).")
    else:
      refs = list(dict.fromkeys(k for row in rows for k in row["drops"]))
      if refs:
        out += _figures(ctx, [r["size"] for r in rows], f"rq5_{group.slug}_weights",
                        f"{group.label} drop against kurtosis and outlier fraction",
                        lambda page, path: F.compressibility(
                            [r for r in rows if r["size"] in page], path, colors=ctx.colors,
                            title=f"Weight statistics against the drop in {group.label} ({group.title})",
                            drop_label=f"drop in {group.label} ({unit}, + = worse, symlog)",
                            drop_scale=scale))
      else:
        out.append("None of the fixed compressions (" + ", ".join(t for t, _ in A.REFERENCE_COMPRESSIONS)
                   + ") is in the grids, so only the statistics are listed.")
      digits = 2 if scale == 100 else 4
      drop = lambda r, k: (md.fixed(scale * r["drops"][k], digits) + (
          f" ± {md.fixed(scale * r['drop_spreads'][k].std, digits)}"
          if r["drop_spreads"][k].std is not None else "")) if k in r["drops"] else "—"
      out.append(md.table(["size", "seeds", "mean kurtosis", "outliers (>3σ)"] +
                          [f"drop at {r} ({'pp' if scale == 100 else group.label})" for r in refs],
                          [[r["size"], r["seeds"], f"{r['kurtosis']:.4f}", md.percent(r["outliers"], 3)] +
                           [drop(r, k) for k in refs] for r in rows]))
      if any(r["seeds"] > 1 for r in rows):
        out.append("Sizes trained with several seeds: the means of their seeds' statistics and "
                   "drops (the table: ± the standard deviation over the seeds; the figure: error "
                   "bars from the lowest seed's drop to the highest).")
    return out + _layer_error_comparison(ctx, group, seeds)

  return _per_group(ctx, "## 6. RQ5: why larger models compress better",
                    "Weight statistics of each uncompressed model (means over its matrices: excess "
                    "kurtosis, 0 for a Gaussian; share of weights beyond 3 standard deviations, 0.27% "
                    "for a Gaussian) against what it loses at fixed compressions; then the relative "
                    "weight error of one compression point, layer by layer.", body)


def _weights_row(size: str, per_seed: list[list[A.Compressed]]) -> dict | None:
  """RQ5's row of one size: weight statistics and drops at the fixed compressions, as means over
  its seeds, with the drops' spread; None where a seed's grid has no weight statistics."""
  summaries = [A.weight_summary(points) for points in per_seed]
  if any(s is None for s in summaries):
    return None
  drops = [{k: p.drop for k, p in A.reference_drops(points).items()} for points in per_seed]
  spreads = {k: A.Spread.of([d[k] for d in drops]) for k in drops[0] if all(k in d for d in drops)}
  mean = lambda key: sum(s[key] for s in summaries) / len(summaries)
  return {"size": size, "seeds": len(per_seed), "kurtosis": mean("kurtosis"),
          "outliers": mean("outliers"), "drops": {k: s.mean for k, s in spreads.items()},
          "drop_spreads": spreads}


def _layer_error_comparison(ctx: Context, group: CompressGroup,
                            seeds: dict[str, list[list[A.Compressed]]]) -> list[str]:
  """Per-layer errors at one point for every size, the mean over a size's seeds."""
  point = A.layer_error_point({size: [p for pts in per_seed for p in pts]
                               for size, per_seed in seeds.items()})
  if point is None:
    return ["The grids carry no per-layer errors, so there is no per-layer comparison."]
  errors = {}
  for size, per_seed in seeds.items():
    matches = [next((p for p in points if p.point == point), None) for points in per_seed]
    if all(m is not None and m.record.get("layer_error") for m in matches):
      values = [m.record["layer_error"] for m in matches]
      names = [n for n in values[0] if all(isinstance(v.get(n), (int, float)) for v in values)]
      errors[size] = A.layer_errors({n: sum(v[n] for v in values) / len(values) for n in names})
  out = [f"Relative weight error ||W - W_c|| / ||W|| at `{point}` ({', '.join(errors)}"
         + ("; sizes of several seeds: the mean over them" if any(len(v) > 1 for v in seeds.values())
            else "") + "):"]
  out += _figures(ctx, list(errors), f"rq5_{group.slug}_layers",
                  "relative weight error per layer",
                  lambda page, path: F.layer_error_plot(
                      {s: errors[s] for s in page}, path, colors=ctx.colors,
                      title=f"Per-layer weight error at {point} ({group.title})"))
  sizes = list(errors)
  layers = sorted({i for e in errors.values() for i in e.by_layer})
  if layers:
    out.append(md.table(["layer"] + sizes,
                        [[i] + [md.fixed(errors[s].by_layer.get(i), 4) if i in errors[s].by_layer
                                else "—" for s in sizes] for i in layers]))
  kinds = list(dict.fromkeys(k for e in errors.values() for k in e.by_kind))
  out.append(md.table(["matrix (mean over layers)"] + sizes,
                      [[k] + [md.fixed(errors[s].by_kind.get(k), 4) if k in errors[s].by_kind
                              else "—" for s in sizes] for k in kinds]))
  return out


def _predicted(fit: scaling.Fit, params: float, tokens: float) -> str:
  """'prediction 3.123 (3.101 to 3.150)': the law's loss with its 90% bootstrap interval."""
  lo, hi = fit.interval(params, tokens)
  return (f"prediction {md.num(float(fit.law.loss(params, tokens)), 4)} "
          f"({md.num(lo, 4)} to {md.num(hi, 4)})")


def scaling_law(ctx: Context) -> str:
  """The Chinchilla-form law fitted to every pretraining eval (report/scaling.py)."""
  runs = ctx.of_task("pretrain")
  law_fit = ctx.law()
  points = law_fit.points
  if not points:
    return ""
  out = ["### A fitted scaling law (pretraining)",
         "L(N, D) = E + A / N^alpha + B / D^beta, fitted as Chinchilla's approach 3 (Huber loss on "
         "log-loss, L-BFGS) to every eval after step 0: N = non-embedding parameters, D = tokens "
         "seen at the eval. Intervals are the 5th-95th percentiles over fits to the evals "
         "resampled with replacement. The law describes this sweep's data and recipe; where runs repeat "
         "their data (the regime table) D overstates what they learned from."]
  if law_fit.refused:
    return "\n\n".join(out + [law_fit.refused])
  fit = law_fit.fit
  law = fit.law
  out.append(md.table(["parameter", "fitted", "90% interval"],
                      [[name, md.num(getattr(law, name), 4),
                        f"{md.num(lo, 4)} to {md.num(hi, 4)}"]
                       for name, (lo, hi) in fit.intervals.items()]))
  out.append(f"{len(points)} evals of {len({p.run for p in points})} runs ({fit.resamples} "
             f"resamples); root-mean-square residual {fit.rmse:.4f} in log-loss.")
  if fit.at_bounds:
    out.append(f"The fit put {' and '.join(fit.at_bounds)} at a bound of its range: these runs' "
               "losses do not fall with model size and data as the law assumes (larger models "
               "are not ahead here), so the compute-optimal sizes and predictions below are not "
               "to be relied on.")
  rows = []
  for run in sorted(runs, key=lambda r: (r.shape.sort_key, r.name)):
    r = regime.of_run(run)
    mine = [i for i, p in enumerate(fit.points) if p.run == ctx.labels[run.workdir]]
    if r is None or not mine:
      continue
    last = max(mine, key=lambda i: fit.points[i].tokens)
    optimal = law.optimal_params(6 * r.non_embedding * fit.points[last].tokens)
    predicted = [_predicted(fit, r.non_embedding, k * fit.points[last].tokens) for k in (2, 4)]
    rows.append([ctx.labels[run.workdir], format_params(r.non_embedding),
                 md.num(fit.points[last].loss, 4), md.num(float(np.mean(fit.residuals[mine])), 3),
                 md.num(optimal, 3), md.num(r.non_embedding / optimal, 3)] + predicted)
  out.append("Each run against the law: its last measured loss, its mean residual, the "
             "compute-optimal size for the compute it used (C = 6ND), and **predictions** (not "
             "measurements) of its loss with 2x and 4x its tokens, with their 90% bootstrap "
             "interval.")
  out.append(md.table(["run", "N", "last loss (measured)", "mean residual", "compute-optimal N",
                       "N / optimal", "predicted at 2x tokens", "predicted at 4x tokens"], rows))
  return "\n\n".join(out)


SECTIONS = (overview, pretraining, scaling_law, budgets, settings_compared, quantization_pruning,
            memory_frontier, data_size, compressibility)
