"""The report's figures: one PNG per function, drawn with matplotlib's Agg canvas.

Each function takes plain data (curves, points, series) and a path, draws, saves at
150 dpi and returns the path. Figures are built as `matplotlib.figure.Figure` objects,
not through pyplot, so no global backend state is touched; matplotlib is imported
inside the functions so that importing tl_jax stays light. A size keeps its colour
across every figure (`palette`).
"""

from __future__ import annotations

from collections.abc import Sequence

from tl_jax.report.analysis import Band, Compressed, Curve, LayerErrors

DPI = 150
MAX_SIZES_PER_PLOT = 8  # more curves than this stop being readable; callers page them
_LINESTYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))
_LEVEL = ":"  # reference levels (uncompressed accuracy, budgets); never a data line's style
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def palette(sizes: Sequence[str]) -> dict[str, tuple]:
  """{size label: colour}, in the given order (tab10, then tab20 beyond ten sizes)."""
  from matplotlib import colormaps
  cmap = colormaps["tab10" if len(sizes) <= 10 else "tab20"]
  return {s: cmap(i % cmap.N) for i, s in enumerate(sizes)}


def shade(color, k: int) -> tuple:
  """The k-th variant of a colour: itself, then alternately darker and lighter."""
  if k == 0:
    return tuple(color)
  toward = 0.0 if k % 2 else 1.0
  amount = min(0.25 * ((k + 1) // 2), 0.6)
  r, g, b = color[:3]
  return tuple(c + (toward - c) * amount for c in (r, g, b)) + (1.0,)


def _figure(ncols: int, title: str, width: float = 6.0, height: float = 4.6):
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width * ncols, height), dpi=DPI, layout="constrained")
  axes = fig.subplots(1, ncols, squeeze=False)[0]
  fig.suptitle(title, fontsize=13)
  for ax in axes:
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
  return fig, axes


def _save(fig, path: str) -> str:
  fig.savefig(path, dpi=DPI)
  return path


def positive_x(xs, *columns):
  """(xs, *columns) without the points at x <= 0: the step-0 eval has no compute, and a log axis
  would draw it far off to the left, as a flat line into the first real point."""
  keep = [i for i, x in enumerate(xs) if x > 0]
  return tuple([col[i] for i in keep] for col in (xs, *columns))


def _styles(curves: Sequence[Curve], colors: dict) -> list[dict]:
  """Colour by run (shades of its size's colour); runs sharing a size also differ by line
  style."""
  seen: dict[str, int] = {}
  out = []
  for c in curves:
    k = seen.get(c.size, 0)
    seen[c.size] = k + 1
    out.append({"color": colors.get(c.label, colors.get(c.size, "black")),
                "linestyle": _LINESTYLES[k % len(_LINESTYLES)]})
  return out


def training_curves(curves: Sequence[Curve], path: str, *, colors: dict, title: str, ylabel: str,
                    log_y: bool = False, perplexity_axis: bool = False,
                    budgets: Sequence[float] = (), bands: Sequence[Band] = (),
                    compute: dict | None = None) -> str:
  """Eval metric against training seconds (left) and steps (middle), one curve per run, and
  per group of seeds their mean with a shaded band from the lowest to the highest seed.

  `perplexity_axis` adds exp(loss) on the right of the panels; `budgets` are drawn as dotted
  verticals on the seconds panel. `compute` ({"per_step": {curve or band label: training
  FLOPs per step}, "frontier": (flops, losses)}) adds a third panel against training FLOPs with
  the fitted law's compute-optimal frontier, dashed: a prediction.
  """
  fig, axes = _figure(3 if compute else 2, title)
  by_time, by_step = axes[0], axes[1]
  per_step = (compute or {}).get("per_step", {})
  for curve, style in zip(curves, _styles(curves, colors)):
    kw = dict(style, marker="o", markersize=3, linewidth=1.6, label=curve.label)
    by_time.plot(curve.seconds, curve.values, **kw)
    by_step.plot(curve.steps, curve.values, **kw)
    if curve.label in per_step:
      axes[2].plot(*positive_x([per_step[curve.label] * s for s in curve.steps], curve.values), **kw)
  for band in bands:
    color = colors.get(band.size, "black")
    label = f"{band.label}: mean, band min..max"
    panels = [(by_time, band.seconds, band.values, band.lo, band.hi),
              (by_step, band.steps, band.values, band.lo, band.hi)]
    if band.label in per_step:
      panels.append((axes[2], *positive_x([per_step[band.label] * s for s in band.steps],
                                           band.values, band.lo, band.hi)))
    for ax, xs, values, lo, hi in panels:
      ax.plot(xs, values, color=color, marker="o", markersize=3, linewidth=1.8, label=label)
      ax.fill_between(xs, lo, hi, color=color, alpha=0.22, linewidth=0)
  for b in budgets:
    by_time.axvline(b, color="0.45", linestyle=_LEVEL, linewidth=1.0)
  if budgets:
    by_time.plot([], [], color="0.45", linestyle=_LEVEL, label="budgets (section 2)")
  by_time.set_xlabel("training seconds (s)")
  by_step.set_xlabel("optimizer steps")
  if compute:
    flops, losses = compute["frontier"]
    axes[2].plot(flops, losses, color="black", linestyle="--", linewidth=1.4)
    by_time.plot([], [], color="black", linestyle="--",
                 label="compute-optimal frontier of the fitted law (prediction; third panel)")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("training compute C = 6 N D (N non-embedding, FLOPs, log scale)")
  for ax in axes:
    ax.set_ylabel(ylabel)
    if log_y:
      ax.set_yscale("log")
      _plain_log_ticks(ax.yaxis)
    if perplexity_axis:
      right = ax.secondary_yaxis("right", functions=(_safe_exp, _safe_log))
      right.set_ylabel("perplexity")
      if log_y:
        right.set_yscale("log")
        _plain_log_ticks(right.yaxis)
  # Below the panels, so that no curve hides behind it.
  handles, labels = by_time.get_legend_handles_labels()
  fig.legend(handles, labels, fontsize=8, loc="outside lower center",
             ncol=min(len(handles), 4 if max(map(len, labels), default=0) < 40 else 2))
  return _save(fig, path)


def _safe_exp(x):
  import numpy as np
  return np.exp(np.minimum(x, 700.0))  # axis limits may probe far beyond any loss


def _safe_log(x):
  import numpy as np
  return np.log(np.maximum(x, 1e-12))


def _plain_log_ticks(axis) -> None:
  """Log-scaled axes with numbers written out (2, 3, 5, ...), not 10^x."""
  from matplotlib.ticker import FuncFormatter, LogLocator
  axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
  axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
  axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _size_and_style_legend(ax, colors: dict, sizes: Sequence[str], styles: dict[str, dict],
                           loc: str = "lower left") -> None:
  """One legend: a colour per size, then a black sample per method/kind."""
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], color=colors[s], linewidth=3, label=s) for s in sizes]
  handles += [Line2D([], [], color="black", label=name, **style) for name, style in styles.items()]
  ax.legend(handles=handles, fontsize=8, loc=loc)


def compression_sweeps(quant: dict[tuple[str, str], list[Compressed]],
                       prune: dict[tuple[str, str], list[Compressed]],
                       baselines: dict[str, float], path: str, *, colors: dict, title: str,
                       ylabel: str = "accuracy (first eval split)",
                       higher_is_better: bool = True) -> str:
  """The metric against bits (quantization only, left) and against sparsity (pruning only,
  right): a line per size and method; the uncompressed value is a dashed level. A metric
  where lower is better (a loss) is drawn on an inverted axis, so up is better in every figure."""
  fig, (by_bits, by_sparsity) = _figure(2, title)
  sizes = [s for s in colors if s in {k[0] for k in (*quant, *prune)} or s in baselines]
  qstyles = _method_styles(sorted({m for _, m in quant}))
  pstyles = _method_styles(sorted({m for _, m in prune if ":" not in m}))
  nm_marker = {m: _MARKERS[(i + 4) % len(_MARKERS)] for i, m in
               enumerate(sorted({m for _, m in prune if ":" in m}))}
  for (size, method), pts in quant.items():
    by_bits.plot([p.bits for p in pts], [p.value for p in pts], color=colors[size],
                 markersize=5, linewidth=1.6, **qstyles[method])
    _error_bars(by_bits, [p.bits for p in pts], pts, colors[size])
  for (size, method), pts in prune.items():
    _error_bars(by_sparsity, [100 * p.sparsity for p in pts], pts, colors[size])
    if method in nm_marker:  # N:M is one sparsity: a marker, not a line
      by_sparsity.plot([100 * p.sparsity for p in pts], [p.value for p in pts], linestyle="none",
                       marker=nm_marker[method], markersize=9, color=colors[size],
                       markeredgecolor="black")
      continue
    xs, ys = [100 * p.sparsity for p in pts], [p.value for p in pts]
    if size in baselines:  # magnitude pruning starts from the dense model
      xs, ys = [0.0] + xs, [baselines[size]] + ys
    by_sparsity.plot(xs, ys, color=colors[size], markersize=5, linewidth=1.6, **pstyles[method])
  for size, acc in baselines.items():
    for ax in (by_bits, by_sparsity):
      ax.axhline(acc, color=colors[size], linestyle=_LEVEL, linewidth=1.2, alpha=0.8)
  bits = sorted({p.bits for pts in quant.values() for p in pts})
  if bits:
    by_bits.set_xticks(bits)
  by_bits.set_xlabel("bits per weight (quantized matrices)")
  by_sparsity.set_xlabel("weights pruned (% of the pruned matrices)")
  for ax in (by_bits, by_sparsity):
    ax.set_ylabel(ylabel)
    if not higher_is_better:
      ax.invert_yaxis()
  by_bits.set_title("quantization only", fontsize=10)
  by_sparsity.set_title("pruning only", fontsize=10)
  bars = _SEED_BARS if any(p.spread is not None and p.spread.n > 1 for pts in (*quant.values(),
                                                                            *prune.values())
                           for p in pts) else {}
  _size_and_style_legend(by_bits, colors, sizes,
                         {**qstyles, "uncompressed": {"linestyle": _LEVEL}, **bars}, loc="lower right")
  nm_styles = {m: {"linestyle": "none", "marker": mk, "markersize": 8} for m, mk in nm_marker.items()}
  _size_and_style_legend(by_sparsity, colors, sizes,
                         {**pstyles, **nm_styles, "uncompressed": {"linestyle": _LEVEL}, **bars},
                         loc="lower left")
  return _save(fig, path)


_SEED_BARS = {"error bars: min..max over seeds": {"linestyle": "none", "marker": "|", "markersize": 10}}


def seed_errors(values: Sequence[float], spreads: Sequence) -> list[list[float]] | None:
  """[[below], [above]] for matplotlib's yerr: from each value down to its lowest seed and up to
  its highest (0 for single-seed points); None where no point has several seeds."""
  if not any(s is not None and s.n > 1 for s in spreads):
    return None
  several = [s is not None and s.n > 1 for s in spreads]
  return [[v - s.lo if ok else 0.0 for v, s, ok in zip(values, spreads, several)],
          [s.hi - v if ok else 0.0 for v, s, ok in zip(values, spreads, several)]]


def _error_bars(ax, xs: Sequence[float], points: Sequence[Compressed], color) -> None:
  """Bars over the seeds' range (min..max) at points that average several seeds."""
  err = seed_errors([p.value for p in points], [p.spread for p in points])
  if err is not None:
    ax.errorbar(xs, [p.value for p in points], yerr=err, fmt="none", ecolor=color, elinewidth=1.0,
                capsize=3, zorder=2)


def _method_styles(methods: Sequence[str]) -> dict[str, dict]:
  return {m: {"linestyle": _LINESTYLES[i % len(_LINESTYLES)], "marker": _MARKERS[i % len(_MARKERS)]}
          for i, m in enumerate(methods)}


def _kind(p: Compressed) -> str:
  if p.quant and p.prune:
    return "pruned + quantized"
  if p.quant:
    return "quantized"
  if p.prune:
    return "pruned"
  return "float32"


_KIND_MARKERS = {"float32": "s", "quantized": "o", "pruned": "^", "pruned + quantized": "D"}


def memory_frontier(points: Sequence[Compressed], frontier: Sequence[Compressed], path: str, *,
                    colors: dict, title: str, budgets_mib: Sequence[float] = (),
                    ylabel: str = "accuracy (first eval split)") -> str:
  """The metric against memory (MiB, log scale) for every point; the frontier (the best value
  for at most that much memory) as a black staircase with its points ringed. A metric where
  lower is better is drawn on an inverted axis."""
  fig, (ax,) = _figure(1, title, width=10.0, height=5.6)
  for size in colors:
    for kind, marker in _KIND_MARKERS.items():
      pts = [p for p in points if p.size == size and _kind(p) == kind]
      if pts:
        ax.scatter([p.mib for p in pts], [p.value for p in pts], color=colors[size],
                   marker=marker, s=30, alpha=0.85, edgecolors="none")
        _error_bars(ax, [p.mib for p in pts], pts, colors[size])
  if frontier:
    xs = [p.mib for p in frontier]
    ys = [p.value for p in frontier]
    right = max(p.mib for p in points) if points else xs[-1]
    # The staircase runs on to the largest point: beyond its last step nothing does better.
    ax.plot(xs + [right], ys + [ys[-1]], color="black", linewidth=1.2, drawstyle="steps-post",
            zorder=3)
    ax.scatter(xs, ys, s=90, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
  for b in budgets_mib:
    ax.axvline(b, color="0.45", linestyle=_LEVEL, linewidth=1.0)
  ax.set_xscale("log")
  _plain_log_ticks(ax.xaxis)
  ax.set_xlabel("model memory (MiB, log scale)")
  ax.set_ylabel(ylabel)
  below = _set_value_limits(ax, points, frontier)
  if below:
    # Collapsed points (e.g. 90% pruned) would squash the frontier: they sit on the bottom
    # edge as open down-triangles and are listed in the table.
    low = ax.get_ylim()[0]
    ax.scatter([p.mib for p in below], [low] * len(below), marker="v", s=45, clip_on=False,
               facecolors="none", edgecolors=[colors[p.size] for p in below], zorder=5)
    worse = "below" if points[0].higher_is_better else "above"
    ax.text(0.01, 0.015, f"{len(below)} point(s) {worse} {low:.3f} drawn on the bottom edge (see table)",
            transform=ax.transAxes, fontsize=8, color="0.25")
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], color=colors[s], linewidth=3, label=s)
             for s in colors if any(p.size == s for p in points)]
  handles += [Line2D([], [], color="0.3", marker=m, linestyle="none", label=k)
              for k, m in _KIND_MARKERS.items() if any(_kind(p) == k for p in points)]
  handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none",
                        label="Pareto frontier"))
  if any(p.spread is not None and p.spread.n > 1 for p in points):
    (name, style), = _SEED_BARS.items()
    handles.append(Line2D([], [], color="0.3", label=name, **style))
  if budgets_mib:
    handles.append(Line2D([], [], color="0.45", linestyle=":", label="memory budgets (section 2)"))
  # Beside the axes: points fill the plot's corners.
  fig.legend(handles=handles, fontsize=8, loc="outside right upper")
  return _save(fig, path)


def _set_value_limits(ax, points: Sequence[Compressed], frontier: Sequence[Compressed]) -> list:
  """Y limits from the frontier's range, as far again past its worst point when some points
  are much worse (those are returned, to be marked on the bottom edge). Worked out on scores
  (larger is better); a metric where lower is better gets an inverted axis."""
  scores = [p.score for p in points]
  if not scores:
    return []
  top = max(scores)
  front_low = min((p.score for p in frontier), default=min(scores))
  span = max(top - front_low, 1e-3)
  low = front_low - span
  if min(scores) >= front_low - 3 * span:  # nothing far below: show every point
    low = min(scores)
  pad = 0.04 * max(top - low, 1e-3)
  sign = 1.0 if points[0].higher_is_better else -1.0
  ax.set_ylim(sign * (low - pad), sign * (top + pad))
  return [p for p in points if p.score < low - pad]


def gap_vs_data(series: dict[str, list[tuple[int, float]]], path: str, *, colors: dict,
                title: str) -> str:
  """Train/validation gap against training tokens (log x), a line per size."""
  fig, (ax,) = _figure(1, title, width=7.5)
  for size, pts in series.items():
    pts = sorted(pts)
    ax.plot([t for t, _ in pts], [g for _, g in pts], color=colors[size], marker="o",
            linewidth=1.6, label=size)
  ax.axhline(0.0, color="0.3", linewidth=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("training data (tokens, log scale)")
  ax.set_ylabel("final eval loss - mean train loss (nats)")
  ax.legend(fontsize=8)
  return _save(fig, path)


def compressibility(rows: Sequence[dict], path: str, *, colors: dict, title: str,
                    drop_label: str = "accuracy drop (percentage points, symlog)",
                    drop_scale: float = 100.0) -> str:
  """The drop in the metric at fixed compressions (times `drop_scale`: 100 shows accuracy in
  percentage points) against the weights' mean kurtosis (left) and outlier fraction (right).
  `rows`: {size, kurtosis, outliers, drops: {compression: drop}}, and for sizes of several seeds
  `drop_spreads`: {compression: Spread}, drawn as bars from the lowest seed's drop to the
  highest's."""
  from matplotlib.lines import Line2D
  fig, axes = _figure(2, title)
  refs = [r for r in dict.fromkeys(k for row in rows for k in row["drops"])]
  markers = {r: _MARKERS[i % len(_MARKERS)] for i, r in enumerate(refs)}
  for ax, key, xlabel, scale in ((axes[0], "kurtosis", "mean excess kurtosis of the weights", 1.0),
                                 (axes[1], "outliers", "weights beyond 3 sigma (%)", 100.0)):
    for ref in refs:
      pts = sorted((row[key] * scale, drop_scale * row["drops"][ref], row["size"]) for row in rows
                   if ref in row["drops"])
      if len(pts) > 1:
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], color="0.6", linewidth=0.8,
                linestyle="--", zorder=1)
      for x, y, size in pts:
        ax.scatter([x], [y], color=colors[size], marker=markers[ref], s=60, zorder=2,
                   edgecolors="black", linewidths=0.5)
      for row in rows:  # sizes of several seeds: their mean, with a bar over the seeds' range
        spread = (row.get("drop_spreads") or {}).get(ref)
        if spread is not None and spread.n > 1:
          y = drop_scale * row["drops"][ref]
          ax.errorbar([row[key] * scale], [y], yerr=[[y - drop_scale * spread.lo],
                                                       [drop_scale * spread.hi - y]],
                      fmt="none", ecolor=colors[row["size"]], capsize=3, zorder=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(drop_label)
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    # Drops span 0.1 to 30 points: linear below 1 point, logarithmic above, so small and
    # collapsed compressions both stay readable.
    ax.set_yscale("symlog", linthresh=1.0, linscale=1.0)
    _drop_axis(ax, [drop_scale * d for row in rows for d in row["drops"].values()])
  if any(row["outliers"] > 0 for row in rows):
    axes[1].axvline(0.27, color="0.5", linestyle=_LEVEL, linewidth=1.0)  # a Gaussian's 3-sigma share
    axes[1].annotate("Gaussian", (0.27, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                     textcoords="offset points", fontsize=8, color="0.4")
  handles = [Line2D([], [], color=colors[r["size"]], linewidth=3, label=r["size"]) for r in rows]
  handles += [Line2D([], [], color="0.3", marker=m, linestyle="none", label=r)
              for r, m in markers.items()]
  if any(s.n > 1 for row in rows for s in (row.get("drop_spreads") or {}).values()):
    (name, style), = _SEED_BARS.items()
    handles.append(Line2D([], [], color="0.3", label=name, **style))
  # Below the panels: points sit anywhere, so a legend inside would hide some.
  fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=min(len(handles), 7))
  return _save(fig, path)


def _drop_axis(ax, drops: Sequence[float]) -> None:
  """Limits and plain ticks for a symlog axis of drops (accuracy in percentage points, BLEU,
  nats)."""
  from matplotlib.ticker import FixedLocator, FuncFormatter
  if not drops:
    return
  lo, hi = min(min(drops), 0.0), max(max(drops), 0.0)
  below = lo * 1.5 - 0.1 if lo < 0 else -0.1
  above = hi * 1.6 if hi > 1 else hi + 0.3
  ax.set_ylim(below, above)
  ticks = [t for t in (-50, -20, -10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10, 20, 50, 100)
           if below <= t <= above]
  ax.yaxis.set_major_locator(FixedLocator(ticks))
  ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def layer_error_plot(errors: dict[str, LayerErrors], path: str, *, colors: dict, title: str) -> str:
  """Relative weight error of one compression point: per Transformer layer (left, a line
  per size) and per matrix averaged over layers (right, bars grouped by matrix)."""
  import numpy as np
  fig, (by_layer, by_kind) = _figure(2, title)
  for size, e in errors.items():
    if e.by_layer:
      by_layer.plot(list(e.by_layer), list(e.by_layer.values()), color=colors[size], marker="o",
                    markersize=4, linewidth=1.6, label=size)
  by_layer.set_xlabel("Transformer layer (0 = next to the embeddings)")
  by_layer.set_ylabel("relative weight error ||W - Wc|| / ||W||")
  by_layer.xaxis.get_major_locator().set_params(integer=True)
  values = [v for e in errors.values() for v in e.by_layer.values()]
  if values:  # at least +-5% around the middle: autoscale would blow 1e-4 wiggles up to full height
    lo, hi = min(values), max(values)
    mid, half = (lo + hi) / 2, max((hi - lo) / 2 * 1.15, 0.05 * abs((lo + hi) / 2), 1e-6)
    by_layer.set_ylim(mid - half, mid + half)
  if any(e.by_layer for e in errors.values()):
    by_layer.legend(fontsize=8)
  # Matrices of the Transformer layers first, then embeddings and head.
  layer_parts = ("attention", "mlp", "ffn", "self_attention", "cross_attention")
  in_layers = lambda k: k.split("/")[0] in layer_parts
  kinds = sorted(dict.fromkeys(k for e in errors.values() for k in e.by_kind),
                 key=lambda k: (not in_layers(k), k))
  width = 0.8 / max(len(errors), 1)
  x = np.arange(len(kinds))
  for i, (size, e) in enumerate(errors.items()):
    by_kind.bar(x + (i - (len(errors) - 1) / 2) * width, [e.by_kind.get(k, np.nan) for k in kinds],
                width=width, color=colors[size], label=size)
  by_kind.set_xticks(x, kinds, rotation=35, ha="right", fontsize=8)
  by_kind.set_ylabel("relative weight error (mean over layers)")
  top = max((v for e in errors.values() for v in e.by_kind.values()), default=1.0)
  by_kind.set_ylim(0, 1.2 * top)  # room for the legend above the bars
  by_kind.set_xlabel("matrix")
  by_kind.legend(fontsize=8)
  return _save(fig, path)
