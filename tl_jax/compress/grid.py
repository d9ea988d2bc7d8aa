"""`tl-jax compress`: a grid of compression points over the parameters of any task's model.

The grid knows nothing of tasks. It is handed a `Target` (built by tl_jax/tasks/compression.py
from a workdir): flat parameters, their layouts, and `evaluate(params) -> metrics` judged by a
named metric (accuracy, BLEU, eval loss). Each point prunes and/or quantizes the parameters
(compress/apply.py), is evaluated, and appends one JSON line to WORKDIR/compress.jsonl: the
settings, the bytes the compressed model takes (compress/memory.py), the metric and its drop
from the uncompressed model, the output KL from it, the per-layer relative weight error and the
weight statistics of RQ5. With `export`, the point is also written as packed arrays
(compress/packed.py), loaded back and evaluated again, which must give exactly the same metric.

A re-run on the same workdir resumes: a point whose line already holds the same settings, the
same parameters and the same evaluation (`measured_as`) is skipped, so a grid killed midway
continues where it stopped and a finished one adds nothing; `rerun` measures every point again.
The uncompressed point is always evaluated, as the reference for drops and KL.

Bits and sparsity reach the compiled transform as values, so it compiles once per quantizer/
pruner combination, and the target's evaluation once per batch shape of its eval set (one with
padded rows; one per length bucket with `data.length_buckets`); the counts are logged and
recorded. Calibrated quantizers (GPTQ) get the Hessians of every dense layer's inputs over the
target's calibration batches, collected once per grid.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import config as config_lib
from tl_jax.compress import analysis, apply, hessians, memory, packed
from tl_jax.compress.methods import quantizer
from tl_jax.config import CompressConfig, PruneConfig, QuantConfig

RESULTS = "compress.jsonl"
EXPORTS = "compressed"
MATRIX_GROUPS = ("attention", "ffn", "embedding", "head")

# How often each transform was traced (= compiled).
COMPILES: collections.Counter = collections.Counter()


# ---------------------------------------------------------------------------
# What is compressed.


@dataclasses.dataclass
class Target:
  """A model's parameters and how to score them; the grid needs nothing else."""
  workdir: str  # compress.jsonl and compressed/ go here
  described: str  # where the parameters came from, for the log and each line
  params: dict  # flat {path: float32 array} on one device
  layouts: dict  # flat {path: Layout}
  metric: str  # the key of `evaluate`'s result that judges a point
  higher_is_better: bool
  evaluate: Callable[[dict], dict]  # flat params -> metrics; "kl" from the first params evaluated
  split: str  # what `evaluate` scores, for the log and the lines
  examples: int
  model: dict  # name, num_layers, d_model, decoder_layers, params: recorded on every line
  frozen_masks: dict = dataclasses.field(default_factory=dict)  # pruned while training: kept
  # () -> (forward(params_tree, batch), batches, positions(batch) -> [B, S] 0/1 or None): the
  # task's calibration data, read only when a calibrated quantizer is in the grid.
  calibration: Callable[[], tuple[Callable, list]] | None = None
  compiles: Callable[[], dict] = dict  # traces of the evaluation so far, by function

  def num_params(self) -> int:
    return sum(l.size for l in self.layouts.values())

  def drop(self, reference: float, value: float) -> float:
    """How much worse `value` is than `reference` (positive = worse)."""
    return reference - value if self.higher_is_better else value - reference


# ---------------------------------------------------------------------------
# The grid.


@dataclasses.dataclass
class Point:
  quant: QuantConfig
  prune: PruneConfig

  @property
  def name(self) -> str:
    q, p = self.quant, self.prune
    parts = []
    if p.method == "magnitude":
      parts.append(f"prune{p.sparsity:g}-{p.scope}")
    elif p.method == "nm":
      parts.append(f"{p.n}of{p.m}")
    if q.method != "none":
      parts.append(quantizer(q.method).label(q))
    return "+".join(parts) or "float32"

  @property
  def calibrated(self) -> bool:
    return self.quant.method != "none" and quantizer(self.quant.method).calibrated

  def static_key(self) -> tuple:
    """What the compiled transform depends on (everything but bits and sparsity)."""
    q, p = self.quant, self.prune
    method = quantizer(q.method).static_key(q) if q.method != "none" else ("none",)
    return (method, q.targets, p.method, p.scope, p.n, p.m, p.targets)

  def settings(self) -> dict:
    q, p = self.quant, self.prune
    out = {"bits": q.bits if q.method != "none" else 32,
           "sparsity": p.sparsity if p.method == "magnitude" else (1 - p.n / p.m if p.method == "nm" else 0.0)}
    out["quant"] = ({k: v for k, v in dataclasses.asdict(q).items()} if q.method != "none" else None)
    out["prune"] = ({k: getattr(p, k) for k in ("method", "sparsity", "scope", "n", "m", "targets")}
                    if p.method != "none" else None)
    return out


def points(config: CompressConfig) -> list[Point]:
  """The grid's points, uncompressed first (the reference for KL and drops)."""
  none_q = dataclasses.replace(config.quant, method="none")
  none_p = dataclasses.replace(config.prune, method="none", sparsity=0.0)
  methods = [m.strip() for m in config.quant_methods.split(",") if m.strip()]
  bits = config_lib.parse_list(config.bits, int, "bits")
  out = [Point(none_q, none_p)]
  out += [Point(dataclasses.replace(config.quant, method=m, bits=b), none_p) for m in methods for b in bits]
  magnitude = lambda s: dataclasses.replace(config.prune, method="magnitude", sparsity=s)
  out += [Point(none_q, magnitude(s))
          for s in config_lib.parse_list(config.sparsities, float, "sparsities") if s > 0]
  if config.nm:
    out.append(Point(none_q, dataclasses.replace(config.prune, method="nm")))
  for s in config_lib.parse_list(config.combined_sparsities, float, "combined_sparsities"):
    for b in config_lib.parse_list(config.combined_bits, int, "combined_bits"):
      out += [Point(dataclasses.replace(config.quant, method=m, bits=b), magnitude(s)) for m in methods]
  return out


# ---------------------------------------------------------------------------
# The compiled transform and memory.


def _compress_point(params, masks, bits, sparsity, hessians, *, layouts, quant, prune, analysed):
  COMPILES["compress"] += 1
  compressed, parts = apply.compress(params, layouts, quant, prune, bits, sparsity,
                                     masks=masks if prune.method == "none" and masks else None,
                                     hessians=hessians)
  counts = {p: jnp.sum(part["mask"]) for p, part in parts.items() if part.get("mask") is not None}
  errors = apply.relative_errors(params, compressed, layouts, analysed)
  return compressed, parts, counts, errors


def storages(layouts: dict, point: Point, parts: dict, counts: dict) -> list[memory.TensorStorage]:
  """How each parameter is stored at this point: compressed parts, the rest float32."""
  out = []
  for path, layout in sorted(layouts.items()):
    if path not in parts:
      out.append(memory.TensorStorage.uncompressed(path, layout.shape))
      continue
    part, nnz = parts[path], int(counts.get(path, layout.size))
    if "codes" in part:
      out.append(quantizer(point.quant.method).storage(path, layout, part, point.quant.bits,
                                                       point.quant, nnz))
    else:  # pruned, float32 values
      s, i, o = layout.view
      out.append(memory.TensorStorage(path, layout.shape, layout.size, nnz, rows=s * o,
                                      row_length=i))
  return out


def _layer_errors(errors: dict, layouts: dict) -> dict:
  out = {}
  for path, values in errors.items():
    out.update(zip(layouts[path].layer_names, (round(float(v), 6) for v in np.asarray(values))))
  return out


# ---------------------------------------------------------------------------
# The command.


def measured_as(config: CompressConfig, target: Target, point: Point) -> dict:
  """What a point's measurement depends on beyond its name; equal ones are not measured again."""
  return {**point.settings(), "checkpoint": target.described, "split": target.split,
          "examples": target.examples, "analysis": config.analysis, "export": config.export,
          "calibration_batches": config.calibration_batches if point.calibrated else None}


def measured(path: str) -> dict[str, dict]:
  """{point name: its newest line's `measured_as`} in the results file at `path`.

  A last line cut short by a kill is cut off the file (its point is measured again), so that
  the next line appended starts a line of its own.
  """
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    data = f.read()
  complete = data.rfind(b"\n") + 1
  if complete < len(data):
    log(f"{path}: its last line was cut short (a run killed while writing it); dropped")
    with open(path, "r+b") as f:
      f.truncate(complete)
  out = {}
  for text in data[:complete].splitlines():
    try:
      line = json.loads(text)
    except ValueError:
      continue
    if isinstance(line, dict) and "measured_as" in line:
      out[line["point"]] = line["measured_as"]
  return out


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def run(config: CompressConfig, target: Target) -> int:
  grid = points(config)
  for point in grid:  # shape conditions, before anything compiles
    apply.check_shapes(target.layouts, point.quant, point.prune)
  calibrated_paths = sorted({p for point in grid if point.calibrated
                             for p in apply.quant_targets(target.layouts, point.quant)})
  if calibrated_paths:
    hessians.check_unscanned(target.layouts, calibrated_paths)
  log(f"compressing {target.described}: {target.num_params():,} parameters, {len(grid)} points, "
      f"{target.metric} on {target.split} ({target.examples:,} examples)")

  analysed = sorted(p for p, l in target.layouts.items() if l.group in MATRIX_GROUPS)
  transforms: dict[tuple, Any] = {}
  compiled_before = COMPILES["compress"]
  with_stats = analysis.weight_statistics(jax.device_get(target.params), target.layouts, analysed) \
      if config.analysis else {}
  calibration = _calibrate(config, target, calibrated_paths) if calibrated_paths else None
  results_path = os.path.join(target.workdir, RESULTS)
  done = {} if config.rerun else measured(results_path)
  baseline, skipped = None, 0
  for n, point in enumerate(grid, 1):
    start = time.perf_counter()
    settings = measured_as(config, target, point)
    repeat = done.get(point.name) == settings
    if repeat and n > 1:
      skipped += 1
      log(f"[{n}/{len(grid)}] {point.name}: measured already with these settings "
          f"({RESULTS}), skipped")
      continue
    key = point.static_key()
    if key not in transforms:
      transforms[key] = jax.jit(functools.partial(
          _compress_point, layouts=target.layouts, quant=point.quant, prune=point.prune,
          analysed=analysed))
    used_hessians = calibration["hessians"] if point.calibrated else None
    compressed, parts, counts, errors = transforms[key](
        target.params, target.frozen_masks, jnp.float32(point.quant.bits),
        jnp.float32(point.prune.sparsity), used_hessians)
    metrics = target.evaluate(compressed)
    baseline = baseline or metrics
    counts = jax.device_get(counts)
    accounted = memory.account(storages(target.layouts, point, parts, counts))
    value = metrics[target.metric]
    line = {"point": point.name, **point.settings(), "workdir": os.path.abspath(target.workdir),
            "checkpoint": target.described, "split": target.split, "model": target.model,
            **metrics, "metric": target.metric, "higher_is_better": target.higher_is_better,
            "value": value, "drop": target.drop(baseline[target.metric], value),
            "memory_bytes": accounted["total_bytes"], "float32_bytes": accounted["float32_bytes"],
            "memory_ratio": accounted["ratio"],
            "memory": {k: v for k, v in accounted.items() if k != "tensors"},
            "measured_as": settings}
    pruned = [p for p in parts if p in counts]
    if pruned:
      kept = sum(int(counts[p]) for p in pruned)
      total = sum(target.layouts[p].size for p in pruned)
      line["achieved_sparsity"] = 1 - kept / total
    if point.calibrated:
      line["calibration"] = calibration["summary"]
    if config.export:
      line["export"] = _export_and_reload(target, point, compressed, parts, value, accounted)
    if config.analysis:
      line["layer_error"] = _layer_errors(jax.device_get(errors), target.layouts)
      line["weights"] = {"summary": analysis.summarize(with_stats), "layers": with_stats}
    line["seconds"] = round(time.perf_counter() - start, 3)
    line["compiles"] = {**target.compiles(), "compress": COMPILES["compress"] - compiled_before}
    if not repeat:  # the reference, evaluated again for this run's drops and KL
      with open(results_path, "a") as f:
        f.write(json.dumps(line) + "\n")
    log(f"[{n}/{len(grid)}] {point.name}: {target.metric} {value:.4f}, "
        f"{accounted['total_bytes'] / 2**20:.2f} MiB ({accounted['ratio']:.1%} of float32), "
        f"KL {metrics.get('kl', 0.0):.4g}, {line['seconds']:.1f}s")
  compiled = ", ".join(f"{k} {v}x" for k, v in target.compiles().items())
  resumed = (f"; {skipped} measured earlier with the same settings were skipped "
             "(--config.rerun=True measures them again)") if skipped else ""
  log(f"compiled: {compiled}, compression {COMPILES['compress'] - compiled_before}x ({len(transforms)} quantizer/"
      f"pruner combinations) for {len(grid)} points; results appended to {results_path}{resumed}")
  return 0


def _calibrate(config: CompressConfig, target: Target, paths: list[str]) -> dict:
  """The Hessians of the calibrated targets' inputs, and a summary for the lines."""
  start = time.perf_counter()
  forward, batches, real = target.calibration()
  found = hessians.collect(forward, apply.unflat(target.params), batches, target.layouts, paths,
                           positions=real)
  fallback = sorted(set(paths) - set(found))
  positions = sum(int(np.sum(real(b))) if real(b) is not None else
                  max(int(np.prod(x.shape)) for x in jax.tree.leaves(b)) for b in batches)
  log(f"calibration: Hessians of {len(found)} layer inputs from {len(batches)} training batches "
      f"({positions:,} positions) in {time.perf_counter() - start:.1f}s"
      + (f"; round to nearest for {', '.join(fallback)} (no matrix-product inputs)" if fallback else ""))
  return {"hessians": found,
          "summary": {"batches": len(batches), "positions": positions, "layers": len(found),
                      "round_to_nearest": fallback}}


def _export_and_reload(target: Target, point: Point, compressed: dict, parts: dict, value: float,
                       accounted: dict) -> dict:
  directory = os.path.join(target.workdir, EXPORTS, point.name)
  packed.save_model(directory, jax.device_get(compressed), jax.device_get(parts), target.layouts,
                    point.quant, {"point": point.name, "checkpoint": target.described})
  loaded = packed.load_model(directory, target.layouts)
  reloaded = target.evaluate(jax.device_put(loaded))[target.metric]
  if reloaded != value:
    raise RuntimeError(f"the export in {directory} evaluates to {target.metric} {reloaded} but the "
                       f"compressed model to {value}: a packing bug.")
  files = packed.export.file_bytes(directory)
  return {"directory": directory, "file_bytes": files,
          "file_vs_accounted": files / accounted["total_bytes"], target.metric: reloaded}
