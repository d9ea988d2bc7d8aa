"""A task's fixed evaluation, and the one evaluator that runs it for training and compression.

A `Scoring` is data plus pure functions: the eval batches of each split (every process holds
them whole), `sums(params, batch, index) -> (sums, log_probs, weights)` for one batch (scalar
sums such as the loss and the count, and the model's output distribution with a weight per
row of it), `metrics(sums) -> {name: value}`, and optionally a `generate` step for metrics
that are not batch sums (BLEU). The `Evaluator` compiles it once per batch shape on a mesh (one
shape, or a few where a task buckets its rows by length) and evaluates any parameters of the
model's shape with it: the loop's periodic evals, and every point of a compression grid, which
also asks for the KL divergence of each point's output distribution from the uncompressed
model's (the first parameters evaluated).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.parallel import sharding as shd

# How often each evaluation function was traced (= compiled): a compression grid's promise is
# one of each per batch shape, whatever the number of points.
TRACES: collections.Counter = collections.Counter()


@dataclasses.dataclass
class Scoring:
  splits: dict[str, list]  # split -> host batches; the first split is the primary one
  sums: Callable  # (params, batch, index) -> ({name: scalar sum}, log_probs [..., C], weights [...])
  metrics: Callable  # ({name: float sum}) -> {metric: value}
  batch_sharding: Any  # a sharding, or a tree of them matching one batch
  examples: int  # how many examples the task's metric is computed over (primary split)
  generate: Any = None  # optional: .compile(params), __call__(params, step, out_dir) -> {metric: value}

  @property
  def primary(self) -> str:
    return next(iter(self.splits))


def shape_key(batch) -> tuple:
  """What a compiled evaluation is specialised to: the shapes of a batch's arrays."""
  return tuple(np.shape(x) for x in jax.tree.leaves(batch))


def kl_sum(reference, log_probs, weights):
  """Sum over weighted rows of KL(reference || log_probs), both log-probabilities."""
  kl = jnp.sum(jnp.exp(reference) * (reference - log_probs), axis=-1)
  return jnp.sum(kl * weights)


class Evaluator:
  """`evaluator(params, step)` -> metrics of every split, from one compiled function per batch
  shape.

  With `kl`, the first call's output distributions become the reference and every later call
  adds `kl`, the mean KL divergence from it over the primary split's weighted rows.
  """

  def __init__(self, scoring: Scoring, params_sharding, *, kl: bool = False, out_dir: str | None = None):
    self.scoring = scoring
    self.kl = kl
    self.out_dir = out_dir
    self._reference = None
    mesh = jax.tree.leaves(params_sharding)[0].mesh
    self._replicated = shd.replicated(mesh)

    def score(params, batch, index, reference):
      TRACES["evaluate"] += 1
      sums, log_probs, weights = scoring.sums(params, batch, index)
      if not kl:
        return sums
      sums = {**sums, "kl": kl_sum(reference, log_probs, weights), "weight": jnp.sum(weights)}
      return sums, log_probs

    self._jitted = jax.jit(score, in_shardings=(params_sharding, scoring.batch_sharding,
                                                self._replicated, None),
                           out_shardings=self._replicated if not kl else None)
    self._compiled = None  # shape_key(batch) -> the compiled score
    self._reference_shapes = {}  # shape_key(batch) -> the shape of its log-probabilities

  def compile(self, params) -> None:
    """Compiles for parameters shaped like `params` (arrays or ShapeDtypeStructs), once for each
    distinct batch shape of the scoring."""
    examples = {}
    for batches in self.scoring.splits.values():
      for b in batches:
        examples.setdefault(shape_key(b), b)
    self._compiled = {}
    for key, example in examples.items():
      batch = shd.abstract_batch(shd.host_rows(example), self.scoring.batch_sharding)
      reference = None
      if self.kl:  # the shape of one batch's log-probabilities
        reference = jax.eval_shape(lambda p, b: self.scoring.sums(p, b, np.int32(0))[1], params, batch)
        self._reference_shapes[key] = reference.shape
      self._compiled[key] = self._jitted.lower(params, batch, np.int32(0), reference).compile()
    if self.scoring.generate is not None:
      self.scoring.generate.compile(params)

  def __call__(self, params, step: int = 0) -> dict:
    if self._compiled is None:
      self.compile(params)
    values = {}
    first_call = self.kl and self._reference is None
    outputs = []
    for split, batches in self.scoring.splits.items():
      totals = collections.defaultdict(float)
      for i, batch in enumerate(batches):
        key = shape_key(batch)
        compiled = self._compiled[key]
        batch = shd.global_batch(shd.host_rows(batch), self.scoring.batch_sharding)
        if self.kl:
          reference = (jnp.zeros(self._reference_shapes[key], jnp.float32)
                       if first_call or split != self.scoring.primary else self._reference[i])
          sums, log_probs = compiled(params, batch, np.int32(i), reference)
          if split == self.scoring.primary:
            outputs.append(log_probs)
        else:
          sums = compiled(params, batch, np.int32(i), None)
        for name, value in jax.device_get(sums).items():
          totals[name] += float(value)
      metrics = self.scoring.metrics(dict(totals))
      if self.kl and split == self.scoring.primary:
        metrics["kl"] = 0.0 if first_call else totals["kl"] / max(totals["weight"], 1.0)
      suffix = "" if split == self.scoring.primary else f"_{split}"
      values.update({f"{k}{suffix}": v for k, v in metrics.items()})
    # The report's binomial error of an accuracy needs n, the primary split's example count.
    values["eval_examples"] = self.scoring.examples
    if first_call:
      self._reference = outputs
    if self.scoring.generate is not None:
      values.update(self.scoring.generate(params, step, self.out_dir))
    return values
