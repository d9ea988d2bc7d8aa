"""The sections of report.md, one function each.

Every section function takes the `Context` (the loaded runs, OUT, the budgets asked
for, labels and colours), draws its figures into OUT and returns its markdown: a
heading, each figure followed by the table of the numbers behind it, or one line
saying which inputs were missing.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

from tl_jax.report import analysis as A
from tl_jax.report import figures as F
from tl_jax.report import markdown as md
from tl_jax.report.runs import Run, Shape, data_tokens, size_labels


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

  def of_task(self, task: str) -> list[Run]:
    return A.by_size([r for r in self.runs if r.task == task])

  def finetune_groups(self) -> list[tuple[str, list[Run]]]:
    """Finetuned runs with compression grids, by finetuning preset: accuracies of
    different tasks do not share an axis."""
    groups: dict[str, list[Run]] = {}
    for run in self.of_task("finetune"):
      if run.points:
        groups.setdefault(run.preset or "finetune", []).append(run)
    return sorted(groups.items())

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
  groups += [g for _, g in ctx.finetune_groups()]
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
    # Every line carries eval_seconds (a timer); eval lines are those with a metric.
    evals = len([m for m in run.metrics if any(k in m for k in ("eval_loss", "bleu", "accuracy"))])
    rows.append([run.name, run.task, run.preset or "—", ctx.sizes[run.shape], evals,
                 md.seconds(run.max_train_seconds), final, len(run.points) or "—"])
  return "\n\n".join([
      "## Runs", f"{len(ctx.runs)} workdirs were read. Training seconds are `train_seconds` of "
      "metrics.jsonl: time spent training, without compilation, evaluation or checkpointing. "
      "Sizes are layers x width (encoder+decoder layers x width for translation), with the "
      "parameter count where a compression grid recorded it.",
      md.table(["workdir", "task", "preset", "size", "evals", "train s", "final",
                "compressed points"], rows)])


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
  curves = _curves(ctx, runs, "eval_loss")
  if not curves:
    out.append("No pretraining workdir with eval lines (`eval_loss` in metrics.jsonl) was found, "
               "so there are no pretraining curves.")
  else:
    pages = _pages([c.size for c in curves])
    budgets = seconds_budgets(ctx, curves)
    for i, page in enumerate(pages):
      path = F.training_curves([c for c in curves if c.size in page],
                               ctx.figure(_name("rq1_pretrain_loss", i)), colors=ctx.colors,
                               title="Masked-LM pretraining: validation loss by model size",
                               ylabel="validation loss (nats per masked token, log scale)",
                               log_y=True, perplexity_axis=True, budgets=budgets)
      out.append(md.image(path, "validation loss against training seconds and steps"))
    if note := _paged_note(pages):
      out.append(note)
    rows = []
    for run in runs:
      for m in sorted(run.eval_lines("eval_loss"), key=lambda m: (m.get("train_seconds") or 0.0,
                                                                  m.get("step") or 0)):
        ppl = m.get("eval_perplexity") or math.exp(min(m["eval_loss"], 700.0))
        rows.append([ctx.sizes[run.shape], run.name, m.get("step", 0),
                     md.seconds(float(m.get("train_seconds") or 0.0)), f"{m['eval_loss']:.4f}",
                     md.num(ppl, 5)])
    out.append(md.details(f"Eval points of {len(curves)} pretraining run(s) ({len(rows)} rows)",
                          md.table(["size", "workdir", "step", "train s", "eval loss", "perplexity"],
                                   rows)))
  skipped = [r.name for r in runs if not r.eval_lines("eval_loss")]
  if skipped:
    out.append(f"Pretraining workdirs without evals (left out): {', '.join(skipped)}.")

  runs = ctx.of_task("translate")
  curves = _curves(ctx, runs, "bleu")
  if curves:
    out.append("### Translation: BLEU against training time")
    pages = _pages([c.size for c in curves])
    budgets = seconds_budgets(ctx, curves)
    for i, page in enumerate(pages):
      path = F.training_curves([c for c in curves if c.size in page],
                               ctx.figure(_name("rq1_translate_bleu", i)), colors=ctx.colors,
                               title="Translation: validation BLEU by model size",
                               ylabel="validation BLEU", budgets=budgets)
      out.append(md.image(path, "BLEU against training seconds and steps"))
    if note := _paged_note(pages):
      out.append(note)
    rows = []
    for run in runs:
      for m in sorted(run.eval_lines("bleu"), key=lambda m: (m.get("train_seconds") or 0.0,
                                                             m.get("step") or 0)):
        rows.append([ctx.sizes[run.shape], run.name, m.get("step", 0),
                     md.seconds(float(m.get("train_seconds") or 0.0)), f"{m['bleu']:.2f}",
                     md.fixed(m.get("eval_loss"), 4)])
    out.append(md.details(f"Eval points of {len(curves)} translation run(s) ({len(rows)} rows)",
                          md.table(["size", "workdir", "step", "train s", "BLEU", "eval loss"], rows)))
  elif runs:
    out.append("Translation workdirs were found but none logged BLEU yet, so there are no BLEU curves.")
  return "\n\n".join(out)


# ---------------------------------------------------------------------------
# 2. Budget advice.


def budgets(ctx: Context) -> str:
  out = ["## 2. Which size to train and deploy under a budget",
         "For a training budget of S seconds each run counts with its last eval at or before S "
         "training seconds; a run whose training stopped before S is listed as *not reached* and "
         "never extrapolated. The runner-up is the best run of another size, and the margin how much "
         "the best run beats it by."]
  any_training = False
  for task, key, higher, what, fmt in (("pretrain", "eval_loss", False, "validation loss", "{:.4f}"),
                                       ("translate", "bleu", True, "BLEU", "{:.2f}")):
    curves = _curves(ctx, ctx.of_task(task), key)
    if not curves:
      continue
    any_training = True
    budgets_s = seconds_budgets(ctx, curves)
    origin = "as asked (--budget-seconds)" if ctx.budget_seconds else \
        "spread up to the longest run (set them with --budget-seconds)"
    kind = "pretraining" if task == "pretrain" else "translation"
    out.append(f"### Training budgets: best {what} ({kind})")
    out.append(f"Budgets {origin}; {'higher' if higher else 'lower'} is better.")
    rows = []
    for b in budgets_s:
      ans = A.best_at_budget(curves, b, higher_is_better=higher)
      best, runner = ans.best, ans.runner_up
      rows.append([
          md.num(b, 4),
          best.label if best else "no run reached it",
          fmt.format(best.value) if best else "—",
          f"step {best.step} at {md.seconds(best.seconds)} s" if best else "—",
          runner.label if runner else ("no other size" if best else "—"),
          fmt.format(runner.value) if runner else "—",
          fmt.format(ans.margin) if ans.margin is not None else "—",
          ", ".join(ans.not_reached) or "—",
          ", ".join(ans.no_eval) or "—"])
    out.append(md.table(["budget (train s)", "best", what, "read at", "runner-up", f"runner-up {what}",
                         "margin", "not reached", "no eval by then"], rows))
  if not any_training:
    out.append("No pretraining or translation run with evals was found, so there is no "
               "training-budget advice.")

  groups = ctx.finetune_groups()
  if not groups:
    out.append("No compress.jsonl was found in a finetuned workdir, so there is no memory-budget "
               "advice.")
  for task, runs in groups:
    points = [p for r in runs for p in A.compressed_points(r, ctx.labels[r.workdir])]
    budgets_mib = ctx.budget_mib or A.default_memory_budgets([p.mib for p in points])
    origin = "as asked (--budget-mib)" if ctx.budget_mib else \
        "spread over the compressed points (set them with --budget-mib)"
    out.append(f"### Memory budgets: most accurate compressed model ({task})")
    out.append(f"Budgets {origin}. The runner-up is the most accurate point of another size "
               "within the same budget.")
    rows = []
    for b in budgets_mib:
      ans = A.best_within_memory(points, b)
      best, runner = ans.best, ans.runner_up
      rows.append([md.num(b, 4),
                   f"{best.size}: {best.point}" if best else "nothing fits",
                   f"{best.accuracy:.4f}" if best else "—", md.num(best.mib, 4) if best else "—",
                   f"{runner.size}: {runner.point}" if runner else
                   ("no other size fits" if best else "—"),
                   f"{runner.accuracy:.4f}" if runner else "—",
                   md.num(runner.mib, 4) if runner else "—",
                   f"{ans.margin:+.4f}" if ans.margin is not None else "—"])
    out.append(md.table(["budget (MiB)", "best point", "accuracy", "MiB", "runner-up (other size)",
                         "runner-up accuracy", "runner-up MiB", "margin"], rows))
  return "\n\n".join(out)


# ---------------------------------------------------------------------------
# 3. RQ2: accuracy against bits and sparsity.


def _group_points(ctx: Context, runs: list[Run]) -> list[A.Compressed]:
  return [p for r in runs for p in A.compressed_points(r, ctx.labels[r.workdir])]


def quantization_pruning(ctx: Context) -> str:
  out = ["## 3. RQ2: accuracy against bits and sparsity",
         "Quantization-only points against bits per weight and pruning-only points against the "
         "achieved sparsity of the pruned matrices, one line per size and method. Dotted levels: "
         "each size's uncompressed accuracy."]
  groups = ctx.finetune_groups()
  if not groups:
    out.append("No compress.jsonl was found in a finetuned workdir, so this section is empty.")
  for task, runs in groups:
    points = _group_points(ctx, runs)
    quant, prune = A.quant_series(points), A.prune_series(points)
    out.append(f"### {task}")
    if not quant and not prune:
      out.append("The grids hold no quantization-only or pruning-only points.")
      continue
    labels = [ctx.labels[r.workdir] for r in runs]
    pages = _pages(labels)
    for i, page in enumerate(pages):
      baselines = {s: b.accuracy for s in page if (b := A.baseline(points, s))}
      path = F.compression_sweeps({k: v for k, v in quant.items() if k[0] in page},
                                  {k: v for k, v in prune.items() if k[0] in page}, baselines,
                                  ctx.figure(_name(f"rq2_{md.slug(task)}", i)),
                                  colors={s: ctx.colors[s] for s in page},
                                  title=f"Accuracy under quantization and pruning ({task})")
      out.append(md.image(path, "accuracy against bits and sparsity"))
    if note := _paged_note(pages):
      out.append(note)
    rows = []
    for (size, method), pts in list(quant.items()) + list(prune.items()):
      for p in pts:
        rows.append([size, method, p.point, p.bits if p.bits < 32 else "32 (float)",
                     md.percent(p.sparsity), f"{p.accuracy:.4f}", md.fixed(p.accuracy_drop, 4),
                     md.num(p.mib, 4)])
    base_rows = [[s, "uncompressed", b.point, 32, "0.0%", f"{b.accuracy:.4f}", "0.0000",
                  md.num(b.mib, 4)] for s in labels if (b := A.baseline(points, s))]
    out.append(md.table(["size", "method", "point", "bits", "sparsity", "accuracy", "drop", "MiB"],
                        base_rows + rows))
  return "\n\n".join(out)


# ---------------------------------------------------------------------------
# 4. RQ3: accuracy against memory.


def memory_frontier(ctx: Context) -> str:
  out = ["## 4. RQ3: accuracy against memory",
         "Every compressed point of every size (quantized, pruned, both, and float32) at the memory "
         "it takes (compress.jsonl `memory_bytes`: stored values, indices or bitmasks, scales and "
         "codebooks). The black staircase is the Pareto frontier: the best accuracy reachable within "
         "each memory; a point is on it iff no other point takes no more memory and is at least as "
         "accurate, one of the two strictly."]
  groups = ctx.finetune_groups()
  if not groups:
    out.append("No compress.jsonl was found in a finetuned workdir, so this section is empty.")
  for task, runs in groups:
    points = _group_points(ctx, runs)
    frontier = A.pareto_frontier(points)
    out.append(f"### {task}")
    labels = [ctx.labels[r.workdir] for r in runs]
    pages = _pages(labels)
    mib_budgets = ctx.budget_mib or A.default_memory_budgets([p.mib for p in points])
    for i, page in enumerate(pages):
      path = F.memory_frontier([p for p in points if p.size in page], frontier,
                               ctx.figure(_name(f"rq3_{md.slug(task)}", i)),
                               colors={s: ctx.colors[s] for s in page},
                               title=f"Accuracy against memory, all sizes ({task})",
                               budgets_mib=mib_budgets)
      out.append(md.image(path, "accuracy against memory with the Pareto frontier"))
    if note := _paged_note(pages):
      out.append(note + " Each figure draws the frontier of all sizes.")
    out.append(f"Pareto frontier ({len(frontier)} of {len(points)} points):")
    out.append(md.table(["size", "point", "bits", "sparsity", "MiB", "of float32", "accuracy"],
                        [[p.size, p.point, p.bits, md.percent(p.sparsity), md.num(p.mib, 4),
                          md.percent(p.record.get("memory_ratio")), f"{p.accuracy:.4f}"]
                         for p in frontier]))
    all_rows = [[p.size, p.point, p.bits, md.percent(p.sparsity), md.num(p.mib, 4),
                 md.percent(p.record.get("memory_ratio")), f"{p.accuracy:.4f}",
                 "yes" if p in frontier else ""] for p in sorted(points, key=lambda p: p.memory_bytes)]
    out.append(md.details(f"All {len(points)} points",
                          md.table(["size", "point", "bits", "sparsity", "MiB", "of float32",
                                    "accuracy", "on frontier"], all_rows)))
  return "\n\n".join(out)


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
  for i, page in enumerate(_pages(list(series))):
    path = F.gap_vs_data({s: series[s] for s in page}, ctx.figure(_name("rq4_gap", i)),
                         colors=ctx.colors, title="Generalization gap against training data, by size")
    out.append(md.image(path, "train/validation gap against training tokens"))
  out.append(md.table(["size", "workdir", "train tokens", "from", "final eval loss",
                       "train loss (last 10%)", "train lines averaged", "gap"],
                      [[ctx.sizes[run.shape], run.name, f"{tokens:,}", source, f"{g.eval_loss:.4f}",
                        f"{g.train_loss:.4f}", g.train_lines, f"{g.gap:+.4f}"]
                       for run, tokens, source, g in rows]))
  if left_out:
    out.append(left_out)
  return "\n\n".join(out)


# ---------------------------------------------------------------------------
# 6. RQ5: compressibility.


def compressibility(ctx: Context) -> str:
  out = ["## 6. RQ5: why larger models compress better",
         "Weight statistics of each uncompressed model (means over its matrices: excess kurtosis, "
         "0 for a Gaussian; share of weights beyond 3 standard deviations, 0.27% for a Gaussian) "
         "against the accuracy it loses at fixed compressions; then the relative weight error "
         "of one compression point, layer by layer."]
  groups = ctx.finetune_groups()
  if not groups:
    out.append("No compress.jsonl was found in a finetuned workdir, so this section is empty.")
  for task, runs in groups:
    out.append(f"### {task}")
    by_size = {ctx.labels[r.workdir]: A.compressed_points(r, ctx.labels[r.workdir]) for r in runs}
    rows = []
    for size, points in by_size.items():
      summary = A.weight_summary(points)
      if summary is None:
        continue
      drops = {k: p.accuracy_drop for k, p in A.reference_drops(points).items()}
      rows.append({"size": size, **summary, "drops": drops})
    if not rows:
      out.append("The grids carry no weight statistics (run `tl-jax compress` with analysis=true).")
    else:
      refs = list(dict.fromkeys(k for row in rows for k in row["drops"]))
      if refs:
        for i, page in enumerate(_pages([r["size"] for r in rows])):
          path = F.compressibility([r for r in rows if r["size"] in page],
                                   ctx.figure(_name(f"rq5_{md.slug(task)}_weights", i)),
                                   colors=ctx.colors,
                                   title=f"Weight statistics against accuracy drop ({task})")
          out.append(md.image(path, "accuracy drop against kurtosis and outlier fraction"))
      else:
        out.append("None of the fixed compressions (" + ", ".join(t for t, _ in A.REFERENCE_COMPRESSIONS)
                   + ") is in the grids, so only the statistics are listed.")
      out.append(md.table(["size", "mean kurtosis", "outliers (>3σ)"] +
                          [f"drop at {r} (pp)" for r in refs],
                          [[r["size"], f"{r['kurtosis']:.4f}", md.percent(r["outliers"], 3)] +
                           [md.fixed(100 * r["drops"][k], 2) if k in r["drops"] else "—" for k in refs]
                           for r in rows]))
    point = A.layer_error_point(by_size)
    if point is None:
      out.append("The grids carry no per-layer errors, so there is no per-layer comparison.")
      continue
    errors = {}
    for size, points in by_size.items():
      match = next((p for p in points if p.point == point), None)
      if match and match.record.get("layer_error"):
        errors[size] = A.layer_errors(match.record["layer_error"])
    out.append(f"Relative weight error ||W - W_c|| / ||W|| at `{point}` "
               f"({', '.join(errors)}):")
    for i, page in enumerate(_pages(list(errors))):
      path = F.layer_error_plot({s: errors[s] for s in page},
                                ctx.figure(_name(f"rq5_{md.slug(task)}_layers", i)),
                                colors=ctx.colors, title=f"Per-layer weight error at {point} ({task})")
      out.append(md.image(path, "relative weight error per layer"))
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
  return "\n\n".join(out)


SECTIONS = (overview, pretraining, budgets, quantization_pruning, memory_frontier, data_size,
            compressibility)
