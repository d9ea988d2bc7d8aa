"""The token embedding's gradient: XLA's scatter-add against tl_jax's one-hot product.

  python3 -u bench/embedding_grad.py [--tokens=24576] [--vocab=40064] [--width=1024]

A scatter-add's cost depends on how often ids repeat (atomics on one row serialise on a
GPU); the one-hot product's does not. This times the lookup's forward and backward for
three id distributions: uniform (what the peer benchmarks feed), Zipf (the frequencies of
words in text) and masked-LM batches (uniform, with 12% of ids replaced by <mask>).
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
  parser.add_argument("--tokens", type=int, default=24_576)
  parser.add_argument("--vocab", type=int, default=40_064)
  parser.add_argument("--width", type=int, default=1024)
  args = parser.parse_args()
  table = jax.random.normal(jax.random.key(0), (args.vocab, args.width), jnp.bfloat16)
  upstream = jax.random.normal(jax.random.key(1), (args.tokens, args.width), jnp.bfloat16)
  methods = {"scatter": lambda t, i: jnp.take(t, i, axis=0), "onehot": embedding_lookup}
  print(f"{jax.devices()[0].device_kind}: {args.tokens} ids, table {args.vocab} x {args.width}")
  print(f"{'ids':8s} {'scatter ms':>11s} {'one-hot ms':>11s}")
  for kind in ("uniform", "zipf", "mlm"):
    ids = jnp.asarray(ids_of(kind, args.tokens, args.vocab), jnp.int32)
    times = {}
    for name, lookup in methods.items():
      grad = jax.jit(jax.grad(lambda t, i, lookup=lookup: jnp.vdot(lookup(t, i), upstream).astype(jnp.float32)))
      times[name] = seconds_per_call(grad, table, ids) * 1e3
    print(f"{kind:8s} {times['scatter']:11.2f} {times['onehot']:11.2f}", flush=True)


if __name__ == "__main__":
  main()
