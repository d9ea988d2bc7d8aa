"""The token embedding's gradient: XLA's scatter-add, tl_jax's one-hot product and sorted runs.

  python3 -u bench/embedding_grad.py [--size=tiny] [--tokens=24576] [--vocab=40064] [--width=1024]

A scatter-add's cost depends on how often ids repeat (atomics on one row serialise on a
GPU); the one-hot product's does not; the sorted method (`model.embed_grad=sorted`) sums
each run of equal ids and writes each row once. This times the lookup's forward and backward
for three id distributions: uniform (what the peer benchmarks feed), Zipf (the frequencies of
words in text) and masked-LM batches (uniform, with 12% of ids replaced by <mask>), at the
token and vocabulary counts of the benchmark's translation (big-128) and RoBERTa-large
(large-512) batches, or at the one shape --tokens/--vocab/--width give. The last column is
the largest difference between the sorted and one-hot gradients, relative to the largest
entry: both sum in float32 (in different orders) and round once to bfloat16, so they differ by
at most one bfloat16 step, <= 2^-7 = 0.0078 of it. --size=tiny runs a small shape, for a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tl_jax.models.layers import embedding_lookup  # noqa: E402

# name -> (tokens, vocab rows, width): tl_jax pads the vocabulary to a multiple of 128.
SHAPES = {"big-128": (24_576, 40_064, 1024), "large-512": (16_384, 50_304, 1024)}
TINY_SHAPES = {"tiny": (2048, 1000, 64)}
METHODS = ("scatter", "onehot", "sorted")


def ids_of(kind: str, tokens: int, vocab: int) -> np.ndarray:
  rng = np.random.default_rng(0)
  if kind == "uniform":
    return rng.integers(5, vocab, tokens)
  if kind == "zipf":  # rank r has probability ~ 1/r, as words in text
    p = 1.0 / np.arange(1, vocab + 1)
    return rng.choice(vocab, tokens, p=p / p.sum())
  ids = rng.integers(5, vocab, tokens)
  ids[rng.random(tokens) < 0.12] = 4  # <mask>
  return ids


def seconds_per_call(fn, *args, reps: int = 20) -> float:
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(reps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / reps


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="paper", choices=["paper", "tiny"])
  parser.add_argument("--tokens", type=int)
  parser.add_argument("--vocab", type=int)
  parser.add_argument("--width", type=int)
  args = parser.parse_args()
  shapes = TINY_SHAPES if args.size == "tiny" else SHAPES
  if args.tokens or args.vocab or args.width:
    tokens, vocab, width = next(iter(shapes.values()))
    shapes = {"custom": (args.tokens or tokens, args.vocab or vocab, args.width or width)}
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
  for name, (tokens, vocab, width) in shapes.items():
    table = jax.random.normal(jax.random.key(0), (vocab, width), jnp.bfloat16)
    upstream = jax.random.normal(jax.random.key(1), (tokens, width), jnp.bfloat16)
    print(f"{name}: {tokens} ids, table {vocab} x {width}")
    print(f"{'ids':8s} {'scatter ms':>11s} {'one-hot ms':>11s} {'sorted ms':>11s} {'sorted err':>11s}")
    for kind in ("uniform", "zipf", "mlm"):
      ids = jnp.asarray(ids_of(kind, tokens, vocab), jnp.int32)
      times, grads = {}, {}
      for method in METHODS:
        loss = lambda t, i, method=method: jnp.vdot(embedding_lookup(t, i, method), upstream)
        grad = jax.jit(jax.grad(lambda t, i, loss=loss: loss(t, i).astype(jnp.float32)))
        times[method] = seconds_per_call(grad, table, ids) * 1e3
        grads[method] = np.asarray(grad(table, ids), np.float32)
      error = np.max(np.abs(grads["sorted"] - grads["onehot"])) / np.max(np.abs(grads["onehot"]))
      print(f"{kind:8s} {times['scatter']:11.2f} {times['onehot']:11.2f} {times['sorted']:11.2f} "
            f"{error:11.1e}", flush=True)


if __name__ == "__main__":
  main()
