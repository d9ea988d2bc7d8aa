"""Low-bit inference benchmark: a classifier at bf16, int8 (w8a8), int8 and int4 weight-only.

For each mode (tl_jax/compress/lowbit.py, through qwix) this measures compile seconds,
examples/s and tokens/s on one batch, peak device memory, the bytes of the parameters
(counted, and on a GPU also measured on the device), and how far the logits move from
bf16's. Each mode runs in its own process, so that the device's peak memory is that
mode's alone; the parameters are built and quantized on the host, so the float weights
never reach the accelerator. Usage:

  python3 -u bench/lowbit_inference.py                 # RoBERTa-base shape, random weights
  python3 -u bench/lowbit_inference.py --size=tiny     # a CPU smoke run (< 1 minute)
  python3 -u bench/lowbit_inference.py --workdir=runs/sst2/finetune --out=lowbit.json

`--workdir` reads a `tl-jax finetune` workdir's model config and best parameters
instead of random weights. Throughput comes from a fixed batch (random tokens, full
length), timed over `--iters` calls after `--warmup` untimed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("bf16", "int8", "int8-weight", "int4-weight")  # as tl_jax.compress.lowbit.MODES
# size -> model shape and the batch it is timed on (flags override the batch).
SIZES = {
    "base": dict(num_layers=12, d_model=768, num_heads=12, vocab=50_265, labels=2,
                 batch=256, seq=128, iters=20, warmup=3),
    "tiny": dict(num_layers=2, d_model=64, num_heads=2, vocab=1_000, labels=2,
                 batch=8, seq=32, iters=5, warmup=1),
}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="base")
  parser.add_argument("--workdir", default="", help="a finetuned workdir to read instead of random weights")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--batch", type=int, default=0, help="0: the size's default")
  parser.add_argument("--seq", type=int, default=0, help="0: the size's default")
  parser.add_argument("--iters", type=int, default=0, help="0: the size's default")
  parser.add_argument("--warmup", type=int, default=-1, help="-1: the size's default")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="", help="write the results as JSON here")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # one mode, in a subprocess
  parser.add_argument("--logits", default="", help=argparse.SUPPRESS)  # where the child saves its logits
  args = parser.parse_args(argv)
  size = SIZES[args.size]
  args.batch = args.batch or size["batch"]
  args.seq = args.seq or size["seq"]
  args.iters = args.iters or size["iters"]
  args.warmup = size["warmup"] if args.warmup < 0 else args.warmup
  args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  unknown = [m for m in args.modes if m not in MODES]
  if unknown:
    parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
  return args


# ---------------------------------------------------------------------------
# One mode, in its own process (jax is imported only here).


def build_model(args):
  """(model, float params on the host, description) from the size or from --workdir."""
  import flax.linen as nn
  import jax

  from tl_jax.config import ModelConfig
  from tl_jax.models.classifier import Classifier
  from tl_jax.models.encoder import padded_vocab

  cpu = host_device()
  if args.workdir:
    return load_workdir(args.workdir, cpu)
  size = SIZES[args.size]
  config = ModelConfig(num_layers=size["num_layers"], d_model=size["d_model"],
                       num_heads=size["num_heads"], max_len=max(512, args.seq), dropout=0.0,
                       dtype="bfloat16")
  model = Classifier(config, padded_vocab(size["vocab"]), size["labels"])
  init = jax.jit(lambda key: model.init(key, np.zeros((1, 8), np.int32), deterministic=True)["params"])
  with jax.default_device(cpu):
    params = nn.meta.unbox(init(jax.random.key(args.seed)))
  return model, params, f"{args.size}: random weights"


def load_workdir(workdir: str, cpu):
  """A `tl-jax finetune` workdir's classifier and best parameters, placed on the host."""
  from tl_jax.config import ParallelConfig
  from tl_jax.parallel.mesh import make_mesh
  from tl_jax.parallel.rules import rules_for
  from tl_jax.tasks.workdir import Workdir

  run = Workdir.open(workdir, commands=("finetune",))
  run.config.parallel = ParallelConfig(data=1)
  mesh, rules = make_mesh(run.config, [cpu]), rules_for(run.config.parallel.rules)
  params, described = run.restore_params(run.choose("best"), mesh, rules)
  return run.task.model(run.tokenizer().vocab_size), params, described


def host_device():
  """The host's CPU device, where weights are built and quantized; the default one if absent."""
  import jax
  try:
    return jax.devices("cpu")[0]
  except RuntimeError:
    return jax.devices()[0]


def run_mode(args) -> dict:
  import jax

  from tl_jax.compress import lowbit

  mode = args.child
  device = jax.devices()[0]
  cpu = host_device()
  if cpu == device and device.platform != "cpu":
    print(f"[{mode}] no CPU backend (JAX_PLATFORMS?): the float weights are built on the "
          "accelerator, and its peak memory includes them", flush=True)
  stats = lambda: device.memory_stats() if device.platform != "cpu" else None

  t = time.perf_counter()
  model, params, source = build_model(args)
  with jax.default_device(cpu):
    apply_fn, qparams = lowbit.low_bit_classifier(model, params, mode)
  del params
  print(f"[{mode}] {source}; built and quantized on the host in {time.perf_counter() - t:.1f}s",
        flush=True)

  before = stats()
  qparams = jax.block_until_ready(jax.device_put(qparams, device))
  after = stats()
  rng = np.random.default_rng(args.seed)  # the same batch in every mode's process
  vocab = model.vocab_size
  tokens = rng.integers(3, vocab, (args.batch, args.seq), dtype=np.int32)
  tokens[:, 0] = 0  # the pooled first position holds one token id throughout, like <s>
  tokens = jax.device_put(tokens, device)
  lengths = jax.device_put(np.full((args.batch,), args.seq, np.int32), device)

  jitted = jax.jit(apply_fn)
  t = time.perf_counter()
  run = jitted.lower(qparams, tokens, lengths).compile()
  compile_s = time.perf_counter() - t
  try:
    logits = run(qparams, tokens, lengths)
  except ValueError as e:
    # XLA:CPU keeps int4 arrays a byte an element, while the executable asks for them packed
    # and its strict layout check refuses them; jit's own dispatch accepts them (and compiles
    # once more, inside the warmup).
    if "layouts" not in str(e):
      raise
    print(f"[{mode}] the compiled executable refuses the int4 arrays' layout here; running it "
          "through jax.jit instead", flush=True)
    run = jitted
    logits = run(qparams, tokens, lengths)
  logits.block_until_ready()
  for _ in range(args.warmup):
    logits = run(qparams, tokens, lengths)
  logits.block_until_ready()
  t = time.perf_counter()
  for _ in range(args.iters):
    logits = run(qparams, tokens, lengths)
  logits.block_until_ready()  # one stream: the last call finishing means all have
  seconds = time.perf_counter() - t
  end = stats()
  np.save(args.logits, np.asarray(jax.device_get(logits), np.float32))

  param_bytes = lowbit.param_bytes(qparams)
  kernels = lowbit.quantized_kernels(qparams) if mode != "bf16" else {}
  kernel_bytes = sum(lowbit.param_bytes(at_path(qparams, p)["kernel"])
                     for p in lowbit.dense_paths(qparams))
  return {
      "mode": mode,
      "source": source,
      "device": f"{device.platform}: {device.device_kind}",
      "jax": jax.__version__,
      "batch": args.batch, "seq": args.seq, "iters": args.iters,
      "compile_s": compile_s,
      "step_s": seconds / args.iters,
      "examples_per_s": args.batch * args.iters / seconds,
      "tokens_per_s": args.batch * args.seq * args.iters / seconds,
      "param_bytes": param_bytes,
      "dense_kernel_bytes": kernel_bytes,
      "kernel_dtypes": sorted({str(q.qvalue.dtype) for q in kernels.values()}),
      "quantized_layers": len(kernels),
      "device_param_bytes": (after["bytes_in_use"] - before["bytes_in_use"]) if before else None,
      "peak_bytes": end["peak_bytes_in_use"] if end else None,
  }


def at_path(tree, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


# ---------------------------------------------------------------------------
# The driver: one subprocess per mode, then the comparison.


def child_command(args, mode: str, logits_path: str) -> list[str]:
  cmd = [sys.executable, "-u", os.path.abspath(__file__), f"--size={args.size}", f"--child={mode}",
         f"--logits={logits_path}", f"--batch={args.batch}", f"--seq={args.seq}",
         f"--iters={args.iters}", f"--warmup={args.warmup}", f"--seed={args.seed}"]
  if args.workdir:
    cmd.append(f"--workdir={args.workdir}")
  return cmd


def run_child(args, mode: str, logits_path: str) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
  proc = subprocess.Popen(child_command(args, mode, logits_path), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
  result, tail = None, []
  for line in proc.stdout:
    if line.startswith("RESULT "):
      result = json.loads(line[len("RESULT "):])
    else:
      tail = (tail + [line.rstrip()])[-40:]
      if line.startswith(f"[{mode}]"):
        print(line.rstrip(), flush=True)
  proc.wait()
  if proc.returncode != 0 or result is None:
    print(f"[{mode}] failed (exit {proc.returncode}); its last lines:\n  " + "\n  ".join(tail),
          flush=True)
    return {"mode": mode, "error": tail[-1] if tail else f"exit {proc.returncode}"}
  return result


def mb(n) -> str:
  return "n/a" if n is None else f"{n / 2**20:.1f}"


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    print("RESULT " + json.dumps(run_mode(args)), flush=True)
    return 0

  print(f"low-bit inference, size {args.size}{' from ' + args.workdir if args.workdir else ''}: "
        f"batch {args.batch} x seq {args.seq}, {args.warmup} warmup + {args.iters} timed calls; "
        f"modes {', '.join(args.modes)}", flush=True)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    logits = {}
    for mode in args.modes:
      path = os.path.join(tmp, f"{mode}.npy")
      result = run_child(args, mode, path)
      if "error" not in result:
        logits[mode] = np.load(path)
        print(f"[{mode}] compile {result['compile_s']:.1f}s, {result['examples_per_s']:,.0f} examples/s, "
              f"params {mb(result['param_bytes'])} MB (on device {mb(result['device_param_bytes'])} MB), "
              f"peak {mb(result['peak_bytes'])} MB", flush=True)
      results.append(result)

  base = next((r for r in results if r["mode"] == "bf16" and "error" not in r), None)
  for r in results:
    if "error" in r or base is None:
      continue
    r["params_ratio"] = base["param_bytes"] / r["param_bytes"]
    r["speedup"] = r["examples_per_s"] / base["examples_per_s"]
    diff = logits[r["mode"]] - logits["bf16"]
    r["max_abs_logit_diff"] = float(np.abs(diff).max())
    r["rel_rms_logit_diff"] = float(np.linalg.norm(diff) / max(np.linalg.norm(logits["bf16"]), 1e-30))
    r["argmax_agreement"] = float(np.mean(logits[r["mode"]].argmax(-1) == logits["bf16"].argmax(-1)))
  if base is not None:
    base["max_abs_bf16_logit"] = float(np.abs(logits["bf16"]).max())

  print()
  print(f"{'mode':<12} {'params MB':>9} {'ratio':>5} {'kernels MB':>10} {'ex/s':>9} {'tok/s':>10} {'speedup':>7} "
        f"{'peak MB':>8} {'compile s':>9} {'max|dlogit|':>11} {'agree':>6}")
  for r in results:
    if "error" in r:
      print(f"{r['mode']:<12} failed: {r['error'][:100]}")
      continue
    fmt = lambda key, spec: format(r[key], spec) if r.get(key) is not None else "n/a"
    print(f"{r['mode']:<12} {mb(r['param_bytes']):>9} {fmt('params_ratio', '.2f'):>5} "
          f"{mb(r['dense_kernel_bytes']):>10} "
          f"{r['examples_per_s']:>9,.0f} {r['tokens_per_s']:>10,.0f} {fmt('speedup', '.2f'):>7} "
          f"{mb(r['peak_bytes']):>8} {r['compile_s']:>9.1f} {fmt('max_abs_logit_diff', '.2e'):>11} "
          f"{fmt('argmax_agreement', '.3f'):>6}")
  if base is not None:
    print(f"(bf16 logits reach |{base['max_abs_bf16_logit']:.3g}|; ratio and speedup are against bf16)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"size": args.size, "workdir": args.workdir, "results": results}, f, indent=2)
    print(f"wrote {args.out}")
  return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
