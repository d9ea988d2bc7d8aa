"""`tl-jax compress`: a grid of compression points over one finetuned classifier.

Each point prunes and/or quantizes the finetuned parameters (compress/apply.py),
evaluates the result on the first eval split, and appends one JSON line to
WORKDIR/compress.jsonl: the settings, the bytes the compressed model takes
(compress/memory.py), accuracy, the output KL from the uncompressed model, the
per-layer relative weight error and the weight statistics of RQ5. With `export`,
the point is also written as packed arrays (compress/packed.py), loaded back and
evaluated again, which must give exactly the same accuracy.

Bits and sparsity reach the compiled functions as values, so the evaluation
compiles once per grid and each quantizer/pruner combination once; the counts are
logged and recorded.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tl_jax import config as config_lib
from tl_jax.compress import analysis, apply, packed
from tl_jax.compress import layout as layout_lib
from tl_jax.compress import memory
from tl_jax.config import CompressConfig, FinetuneConfig, PruneConfig, QuantConfig
from tl_jax.data.classification import encode, make_classification_source
from tl_jax.data.tokenizer import load_tokenizer
from tl_jax.errors import UserError
from tl_jax.models.classifier import Classifier
from tl_jax.models.encoder import padded_vocab
from tl_jax.train import finetune
from tl_jax.train.best import BestParams
from tl_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from tl_jax.train.loop import log
from tl_jax.train.optimizer import optimizer
from tl_jax.train.state import init_state

RESULTS = "compress.jsonl"
MATRIX_GROUPS = ("attention", "ffn", "embedding", "head")

# How often each function was traced (= compiled): the grid's promise is one evaluation.
COMPILES: collections.Counter = collections.Counter()


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
    if q.method == "kmeans":
      parts.append(f"kmeans{q.bits}b")
    elif q.method == "uniform":
      kind = "sym" if q.symmetric else "asym"
      granularity = f"group{q.group_size}" if q.granularity == "group" else q.granularity
      parts.append(f"uniform{q.bits}b-{kind}-{granularity}")
    return "+".join(parts) or "float32"

  def static_key(self) -> tuple:
    """What the compiled transform depends on (everything but bits and sparsity)."""
    q, p = self.quant, self.prune
    return (q.method, q.symmetric, q.granularity, q.group_size, q.kmeans_iters, q.targets,
            p.method, p.scope, p.n, p.m, p.targets)

  def settings(self) -> dict:
    q, p = self.quant, self.prune
    out = {"bits": q.bits if q.method != "none" else 32,
           "sparsity": p.sparsity if p.method == "magnitude" else (1 - p.n / p.m if p.method == "nm" else 0.0)}
    out["quant"] = ({k: v for k, v in dataclasses.asdict(q).items()} if q.method != "none" else None)
    out["prune"] = ({k: getattr(p, k) for k in ("method", "sparsity", "scope", "n", "m", "targets")}
                    if p.method != "none" else None)
    return out


def points(config: CompressConfig) -> list[Point]:
  """The grid's points, uncompressed first (the reference for KL and accuracy drops)."""
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
# The finetuned model.


@dataclasses.dataclass
class Finetuned:
  """A `tl-jax finetune` workdir: its model, parameters (flat, on the default device), the
  layouts of those parameters, and the batches of its first eval split."""
  workdir: str
  config: FinetuneConfig
  model: Classifier
  params: dict
  layouts: dict
  masks: dict  # pruned while finetuning: {path: mask} read off the zeros; else {}
  described: str
  split: str
  batches: list
  pad_id: int

  @classmethod
  def open(cls, workdir: str, checkpoint: str, batch_size: int, max_examples: int) -> "Finetuned":
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
      raise UserError(f"--workdir={workdir} holds no config.json; point it at a `tl-jax finetune` "
                      "workdir.")
    config = config_lib.load(path)
    if config.task != "finetune":
      raise UserError(f"--workdir={workdir} is a `tl-jax {config.task}` run; compress a "
                      "`tl-jax finetune` workdir (its classifier is what gets evaluated).")
    best = BestParams(workdir, "accuracy", higher_is_better=True)
    checkpoints = os.path.join(os.path.abspath(workdir), "checkpoints")
    if checkpoint == "best" and not best.exists():
      raise UserError(f"--workdir={workdir} has no finetuned parameters yet (no best/best.json); "
                      "let `tl-jax finetune` evaluate at least once there, or set checkpoint=latest.")
    if checkpoint == "latest" and not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
      raise UserError(f"--workdir={workdir} has no checkpoints yet; finish `tl-jax finetune` there "
                      "first.")

    tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer"))
    source = make_classification_source(config.data)
    source.check()
    split = source.eval_splits[0]
    data = config.data
    rows, _ = encode(source.examples(split), tokenizer, data.seq_len, data.truncation,
                     config.model.type_vocab_size >= 2)
    if max_examples:
      rows = {k: v[:max_examples] for k, v in rows.items()}
    batches = finetune.eval_batches(rows, batch_size, finetune.filler_row(tokenizer, data.seq_len))

    model = Classifier(config.model, padded_vocab(tokenizer.vocab_size), len(source.label_names),
                       config.head.pooling)
    example = np.zeros((1, data.seq_len), np.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), example))["params"]
    layouts = apply.flat_layouts(layout_lib.layouts(boxed))
    if checkpoint == "best":
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      params = best.restore(jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nn.meta.unbox(boxed)))
      described = best.describe()
    else:
      state = restore_state(workdir, config, model)
      params, described = state.params, f"the newest checkpoint (step {int(state.step)})"
    params = apply.flat(params)
    masks = {}
    if config.prune.method != "none":  # pruned while finetuning: its zeros stay zeros
      masks = {p: params[p] != 0 for p in apply.prune_targets(layouts, config.prune)}
    return cls(os.path.abspath(workdir), config, model, params, layouts, masks,
               f"{described} of {workdir}", split, batches, tokenizer.pad_id)

  def num_params(self) -> int:
    return sum(l.size for l in self.layouts.values())


def restore_state(workdir: str, config: FinetuneConfig, model, step: int | None = None):
  """The finetuning train state of the newest checkpoint (or of `step`), on one device."""
  seq_len = config.data.seq_len
  compression = finetune.training_compression(config, model, seq_len, config.train.max_steps)
  init_fn = functools.partial(init_state, model, optimizer(config.train), 0,
                              np.zeros((1, seq_len), np.int32),
                              compression.masked if compression else None)
  abstract = nn.meta.unbox(jax.eval_shape(init_fn))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                      keep=config.checkpoint.keep, async_save=False)
  state, _ = ckpt.restore(abstract_with_shardings(abstract, jax.tree.map(lambda _: device, abstract)),
                          step)
  ckpt.close()
  return state


# ---------------------------------------------------------------------------
# Compiled pieces.


def _eval_point(params: dict, batch: dict, reference: jax.Array, *, model, pad_id: int):
  """Loss, correct and KL(reference || compressed) sums over the rows of weight 1, and the
  log-probabilities (the uncompressed model's become the reference)."""
  COMPILES["evaluate"] += 1
  logits = finetune._logits(model, apply.unflat(params), batch, pad_id, True)
  logprobs = jax.nn.log_softmax(logits)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32)
  kl = jnp.sum(jnp.exp(reference) * (reference - logprobs), axis=-1)
  w = batch["weight"]
  return jnp.stack([jnp.sum(losses * w), jnp.sum(correct * w), jnp.sum(w), jnp.sum(kl * w)]), logprobs


def _compress_point(params, masks, bits, sparsity, *, layouts, quant, prune, analysed):
  COMPILES["compress"] += 1
  compressed, parts = apply.compress(params, layouts, quant, prune, bits, sparsity,
                                     masks=masks if prune.method == "none" and masks else None)
  counts = {p: jnp.sum(part["mask"]) for p, part in parts.items() if part.get("mask") is not None}
  errors = apply.relative_errors(params, compressed, layouts, analysed)
  return compressed, parts, counts, errors


class Evaluator:
  """Runs points against one finetuned model with one compiled evaluation."""

  def __init__(self, finetuned: Finetuned):
    self.ft = finetuned
    self._eval = jax.jit(functools.partial(_eval_point, model=finetuned.model, pad_id=finetuned.pad_id))
    self._transforms = {}
    self.analysed = sorted(p for p, l in finetuned.layouts.items() if l.group in MATRIX_GROUPS)

  def evaluate(self, params: dict, references=None) -> tuple[dict, list]:
    sums, logprobs = np.zeros(4), []
    for i, batch in enumerate(self.ft.batches):
      ref = references[i] if references else jnp.zeros((batch["label"].shape[0],
                                                         self.ft.model.num_labels), jnp.float32)
      s, lp = self._eval(params, batch, ref)
      sums += np.asarray(jax.device_get(s))
      logprobs.append(lp)
    n = max(sums[2], 1.0)
    return {"eval_loss": sums[0] / n, "accuracy": sums[1] / n,
            "kl": sums[3] / n if references else 0.0, "examples": int(sums[2])}, logprobs

  def transform(self, point: Point):
    key = point.static_key()
    if key not in self._transforms:
      self._transforms[key] = jax.jit(functools.partial(
          _compress_point, layouts=self.ft.layouts, quant=point.quant, prune=point.prune,
          analysed=self.analysed))
    return self._transforms[key]


# ---------------------------------------------------------------------------
# Memory.


def storages(ft: Finetuned, point: Point, parts: dict, counts: dict) -> list[memory.TensorStorage]:
  """How each parameter is stored at this point: compressed parts, the rest float32."""
  out = []
  for path, layout in sorted(ft.layouts.items()):
    if path not in parts:
      out.append(memory.TensorStorage.uncompressed(path, layout.shape))
      continue
    part, (s, i, o) = parts[path], layout.view
    bits = point.quant.bits if "codes" in part else 0
    out.append(memory.TensorStorage(
        path, layout.shape, layout.size, int(counts.get(path, layout.size)), rows=s * o,
        row_length=i, bits=bits,
        num_scales=int(np.prod(part["scale"].shape)) if "scale" in part else 0,
        zero_points="scale" in part and not point.quant.symmetric,
        codebook_size=s * 2 ** bits if "codebook" in part else 0))
  return out


# ---------------------------------------------------------------------------
# The command.


def _layer_errors(errors: dict, layouts: dict) -> dict:
  out = {}
  for path, values in errors.items():
    out.update(zip(layouts[path].layer_names, (round(float(v), 6) for v in np.asarray(values))))
  return out


def run(config: CompressConfig, workdir: str) -> int:
  ft = Finetuned.open(workdir, config.checkpoint, config.eval_batch_size, config.max_eval_examples)
  grid = points(config)
  for point in grid:  # shape conditions, before anything compiles
    apply.check_shapes(ft.layouts, point.quant, point.prune)
  log(f"compressing {ft.described}: {ft.num_params():,} parameters, {len(grid)} points, "
      f"evaluated on {ft.split} ({sum(int(b['weight'].sum()) for b in ft.batches):,} examples)")

  evaluator = Evaluator(ft)
  with_stats = analysis.weight_statistics(jax.device_get(ft.params), ft.layouts, evaluator.analysed) \
      if config.analysis else {}
  results_path = os.path.join(workdir, RESULTS)
  reference, baseline = None, None
  for n, point in enumerate(grid, 1):
    start = time.perf_counter()
    compressed, parts, counts, errors = evaluator.transform(point)(
        ft.params, ft.masks, jnp.float32(point.quant.bits), jnp.float32(point.prune.sparsity))
    metrics, logprobs = evaluator.evaluate(compressed, reference)
    if reference is None:
      reference, baseline = logprobs, metrics
    counts = jax.device_get(counts)
    accounted = memory.account(storages(ft, point, parts, counts))
    line = {"point": point.name, **point.settings(), "workdir": ft.workdir,
            "checkpoint": ft.described, "split": ft.split,
            "model": {"name": ft.config.name, "num_layers": ft.config.model.num_layers,
                      "d_model": ft.config.model.d_model, "params": ft.num_params()},
            **metrics, "accuracy_drop": baseline["accuracy"] - metrics["accuracy"],
            "memory_bytes": accounted["total_bytes"], "float32_bytes": accounted["float32_bytes"],
            "memory_ratio": accounted["ratio"],
            "memory": {k: v for k, v in accounted.items() if k != "tensors"}}
    pruned = [p for p in parts if p in counts]
    if pruned:
      kept = sum(int(counts[p]) for p in pruned)
      total = sum(ft.layouts[p].size for p in pruned)
      line["achieved_sparsity"] = 1 - kept / total
    if config.export:
      line["export"] = _export_and_reload(ft, evaluator, point, compressed, parts, reference, metrics,
                                          accounted)
    if config.analysis:
      line["layer_error"] = _layer_errors(jax.device_get(errors), ft.layouts)
      line["weights"] = {"summary": analysis.summarize(with_stats), "layers": with_stats}
    line["seconds"] = round(time.perf_counter() - start, 3)
    line["compiles"] = dict(COMPILES)
    with open(results_path, "a") as f:
      f.write(json.dumps(line) + "\n")
    log(f"[{n}/{len(grid)}] {point.name}: accuracy {metrics['accuracy']:.4f}, "
        f"{accounted['total_bytes'] / 2**20:.2f} MiB ({accounted['ratio']:.1%} of float32), "
        f"KL {metrics['kl']:.4g}, {line['seconds']:.1f}s")
  log(f"compiled: evaluation {COMPILES['evaluate']}x, compression {COMPILES['compress']}x "
      f"({len(evaluator._transforms)} quantizer/pruner combinations) for {len(grid)} points; "
      f"results appended to {results_path}")
  return 0


def _export_and_reload(ft: Finetuned, evaluator: Evaluator, point: Point, compressed: dict,
                       parts: dict, reference, metrics: dict, accounted: dict) -> dict:
  directory = os.path.join(ft.workdir, "compressed", point.name)
  packed.save_model(directory, jax.device_get(compressed), jax.device_get(parts), ft.layouts,
                    point.quant, {"point": point.name, "checkpoint": ft.described})
  loaded = packed.load_model(directory, ft.layouts)
  reloaded, _ = evaluator.evaluate(jax.device_put(loaded), reference)
  if reloaded["accuracy"] != metrics["accuracy"]:
    raise RuntimeError(f"the export in {directory} evaluates to accuracy {reloaded['accuracy']} "
                       f"but the compressed model to {metrics['accuracy']}: a packing bug.")
  files = packed.export.file_bytes(directory)
  return {"directory": directory, "file_bytes": files,
          "file_vs_accounted": files / accounted["total_bytes"], "accuracy": reloaded["accuracy"]}
