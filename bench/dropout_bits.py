"""Dropout alone: flax's `nn.Dropout` (one threefry hash an element) against tl_jax's `Dropout16`
(model.dropout_bits=16: four 16-bit draws a hash), in one process.

  python3 -u bench/dropout_bits.py [--shapes=32x512x1024,192x128x1024] [--rounds=5] [--out=FILE.json]

Each shape is one dropout site of a train step (the defaults: RoBERTa-large S=512 B=32 and
Transformer-big's B=192 T=128, width 1024), in bf16 at rate 0.1. Timed is the jitted forward and
gradient of sum(dropout(x) * c), as the step computes it: mask, scale and the mask's reuse in the
backward pass. The two layers run interleaved, --rounds times, 20 calls a round; the table gives
each one's median milliseconds a call and the ratio. This isolates the hashing from the rest of
the step; `bench/speed.py --variants=...,dropout-16` measures what the whole step gains.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shapes", default="32x512x1024,192x128x1024")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--calls", type=int, default=20, help="calls a round")
  p.add_argument("--out", default="")
  args = p.parse_args()

  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from tl_jax.models.dropout import Dropout16

  layers = {"flax nn.Dropout": nn.Dropout(0.1), "Dropout16": Dropout16(0.1)}
  rows = []
  for text in args.shapes.split(","):
    shape = tuple(int(n) for n in text.split("x"))
    x = jnp.ones(shape, jnp.bfloat16)
    c = jax.random.normal(jax.random.key(1), shape, jnp.bfloat16)
    steps = {}
    for name, layer in layers.items():
      def loss(v, key, layer=layer):
        y = layer.apply({}, v, deterministic=False, rngs={"dropout": key})
        return jnp.sum((y * c).astype(jnp.float32))
      steps[name] = jax.jit(jax.value_and_grad(loss))
      jax.block_until_ready(steps[name](x, jax.random.key(0)))  # compile
    times = {name: [] for name in layers}
    for r in range(args.rounds):
      for name, step in steps.items():
        start = time.perf_counter()
        for i in range(args.calls):
          out = step(x, jax.random.key(r * args.calls + i))
        jax.block_until_ready(out)
        times[name].append((time.perf_counter() - start) / args.calls * 1e3)
    ms = {name: statistics.median(t) for name, t in times.items()}
    rows.append({"shape": text, "ms": ms, "rounds_ms": times,
                 "speedup": ms["flax nn.Dropout"] / ms["Dropout16"]})
    print(f"{text}: flax {ms['flax nn.Dropout']:.3f} ms, Dropout16 {ms['Dropout16']:.3f} ms, "
          f"{rows[-1]['speedup']:.2f}x", flush=True)

  device = jax.devices()[0]
  header = (f"device {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, bf16, rate 0.1, forward + gradient")
  print(f"\n{header}\n")
  print("| shape | flax nn.Dropout ms | Dropout16 ms | Dropout16 vs flax |")
  print("| --- | ---: | ---: | ---: |")
  for row in rows:
    print(f"| {row['shape']} | {row['ms']['flax nn.Dropout']:.3f} | {row['ms']['Dropout16']:.3f} | "
          f"{row['speedup']:.2f}x |")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"header": header, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
