"""Training-step speed of tl_jax against its peers, on one GPU, in one call.

  python3 -u bench/speed.py [--out=DIR] [--peers=../shared/bench] [--cases=base-512,large-512]
                            [--variants=tl_jax,scan] [--profile=large-512] [--no-peers]
  python3 -u bench/speed.py --size=tiny --no-peers      # a CPU smoke run (~1 minute)
  python3 -u bench/speed.py --cases=big-128 --ids=zipf  # ids drawn as words occur in text

Times the train step that `tl-jax pretrain` and `tl-jax translate` run (built by the task's
`program`, tl_jax/tasks/base.py, fed like the loop feeds it) on the shapes of the peer scripts
in `../shared/bench/`: MLM RoBERTa-base at S=128/B=256 and S=512/B=64, RoBERTa-large at
S=512/B=32, and translation transformer-big at S=T=128/B=192. For each it reports
tokens/s (target tokens for translation), MFU with the peers' FLOP convention against
the bf16 matmul peak measured in the same call, peak device memory and compile seconds.
Then it runs the peers on the same shapes (Hugging Face PyTorch eager, the plain Flax
encoder with cuDNN attention, Marian with torch.compile) and measures the data loader's
host throughput at the largest batch. It prints a table of ratios last and writes
`speed.json` and `speed.md` under --out.

Each tl_jax case and variant runs in its own process: its peak memory is its own, and a
variant may set XLA flags, which must be fixed before jax starts. Variants are config
overrides (or XLA flags) that show what each optimisation is worth.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# case -> (task, preset, seq_len, batch, vocab of the peer script)
CASES = {
    "base-128": ("mlm", "roberta-base", 128, 256, 50_265),
    "base-512": ("mlm", "roberta-base", 512, 64, 50_265),
    "large-512": ("mlm", "roberta-large", 512, 32, 50_265),
    "big-128": ("translate", "big", 128, 192, 40_000),
}
TINY_CASES = {  # --size=tiny: the same code paths, small enough for a CPU
    "base-128": ("mlm", "tiny", 64, 8, 1_000),
    "big-128": ("translate", "tiny", 32, 8, 1_000),
}
# variant -> (config overrides, extra XLA flags, feed): each shows what one choice is worth.
VARIANTS = {
    "tl_jax": ([], "", "device"),  # the defaults, one fixed device batch
    "loader": ([], "", "loader"),  # fed by TrainLoader's prefetch thread, as the loop feeds it
    "all-positions": (["data.max_predictions=0"], "", "device"),  # LM head at every position
    "scatter-embed": (["model.embed_grad=scatter"], "", "device"),  # XLA's scatter-add gradient
    "onehot-embed": (["model.embed_grad=onehot"], "", "device"),
    "sorted-embed": (["model.embed_grad=sorted"], "", "device"),  # sorted runs, one write a row
    "no-dropout": (["model.dropout=0"], "", "device"),
    "scan": (["model.scan_layers=true"], "", "device"),
    "bf16-mu": (["train.mu_dtype=bfloat16"], "", "device"),
    "xla-attention": (["model.attention=xla"], "", "device"),
    "no-triton-gemm": ([], "--xla_gpu_enable_triton_gemm=false", "device"),
    # No timing of candidate kernels while compiling (cuBLAS's heuristics pick): compile seconds
    # against step time, for issue 18's 60 s compile target.
    "no-autotune": ([], "--xla_gpu_autotune_level=0", "device"),
    # Autotuning that still times the candidates but skips their buffer initialisation and the
    # check of each candidate's output against a reference (levels 2-4; 4 is XLA's default):
    # whether those checks are what fp8's extra compile seconds go to.
    "autotune-1": ([], "--xla_gpu_autotune_level=1", "device"),
    "fp8-autotune-1": (["model.fp8=true"], "--xla_gpu_autotune_level=1", "device"),
    "latency-hiding": ([], "--xla_gpu_enable_latency_hiding_scheduler=true", "device"),
    # cuBLASLt matmuls, whose epilogues can take bias adds, GELU and bias gradients
    "cublaslt": ([], "--xla_gpu_enable_cublaslt=true", "device"),
    # The tanh form of every GELU (model.gelu): cheaper elementwise math than the exact erf. On
    # 2026-12-07 (H100) it also ran with cuBLASLt, whose epilogues can hold a GELU: XLA fused none.
    "gelu-tanh": (["model.gelu=tanh"], "", "device"),
    "fp8-gelu-tanh": (["model.fp8=true", "model.gelu=tanh"], "", "device"),
    # Both options with autotuning level 1, which took fp8's compile back to bf16's (2026-12-07)
    "fp8-gelu-tanh-autotune-1": (["model.fp8=true", "model.gelu=tanh"],
                                 "--xla_gpu_autotune_level=1", "device"),
    # Attention's projections of one input as one matmul (model.fused_qkv), alone and with the
    # fastest options above
    "fused-qkv": (["model.fused_qkv=true"], "", "device"),
    "fastest-fused-qkv": (["model.fp8=true", "model.gelu=tanh", "model.fused_qkv=true"],
                          "--xla_gpu_autotune_level=1", "device"),
    # Dropout's random bits as four 16-bit draws per threefry hash (model.dropout_bits=16), a
    # quarter of the hashing, alone and with the fastest options
    "dropout-16": (["model.dropout_bits=16"], "", "device"),
    "fastest-dropout-16": (["model.fp8=true", "model.gelu=tanh", "model.dropout_bits=16"],
                           "--xla_gpu_autotune_level=1", "device"),
    # The output layer and loss a chunk of target tokens at a time (tl_jax/train/xent.py); on
    # big-128 (24,576 tokens) 8, 4 and 2 chunks.
    "xent-3k": (["train.loss_chunk=3072"], "", "device"),
    "xent-6k": (["train.loss_chunk=6144"], "", "device"),
    "xent-12k": (["train.loss_chunk=12288"], "", "device"),
    # The train step's Dense matmuls on fp8 operands (tl_jax/models/layers.py fp8_contract);
    # its row's "fp8 mm" counts the matmuls the compiled step runs in fp8.
    "fp8": (["model.fp8=true"], "", "device"),
    # Variants of code rather than config: PATCHES below swaps the function in the child.
    "autodiff-gelu": ([], "", "device"),
    # fp8 with every scale fixed at 1 (no amax pass): the most that any scheme removing the
    # amax reductions could gain over current scaling. A bound, not a recipe: its loss is not
    # trained, since magnitudes outside each format's range clip or round to zero.
    "fp8-static": (["model.fp8=true"], "", "device"),
}


def _autodiff_gelu():
  # The MLP's exact GELU differentiated by autodiff, as before 2026-12-05 (tl_jax's keeps its
  # input only).
  import jax
  from tl_jax.models import layers
  layers.gelu = functools.partial(jax.nn.gelu, approximate=False)


def _fp8_static_scales():
  import jax.numpy as jnp
  from tl_jax.models import layers

  def quantize(x, fp8_dtype):  # fp8_quantize's contract, with the scale fixed instead of measured
    one = jnp.ones((), jnp.float32)
    return layers.fp8_cast(x, one, fp8_dtype), one
  layers.fp8_quantize = quantize


PATCHES = {"autodiff-gelu": _autodiff_gelu, "fp8-static": _fp8_static_scales}
MLM_ONLY = {"all-positions"}
TRANSLATE_ONLY = {"xent-3k", "xent-6k", "xent-12k"}


# ---------------------------------------------------------------------------
# Children: one timed case, or the peak.


def fp8_matmuls(compiled_hlo: str) -> int:
  """Matmuls a compiled program runs on float8 operands: XLA:GPU's cuBLASLt fp8 calls, or dots
  that take f8 operands (0 where the backend widened them first, as XLA:CPU does)."""
  return (compiled_hlo.count('custom_call_target="__cublas$lt$matmul$f8"')
          + len(re.findall(r"\bdot\(f8e", compiled_hlo)))


def erf_ops(compiled_hlo: str) -> int:
  """erf instructions of a compiled program: the exact GELU's (XLA:CPU keeps them as erf); none
  with model.gelu=tanh. This tells which GELU a step runs where the two losses can agree to the
  bit (a few steps from a small initialisation on a CPU)."""
  return len(re.findall(r"\serf\(", compiled_hlo))


def lt_epilogues(compiled_hlo: str) -> dict[str, int]:
  """Epilogue -> how many of a compiled program's cuBLASLt matmuls end with it (BIAS, GELU_AUX,
  BIAS_GELU, ...; DEFAULT for none): the bias adds and activations that ride on a matmul rather
  than making a pass over memory of their own. Empty where XLA called no cuBLASLt matmul."""
  counts = collections.Counter()
  for line in compiled_hlo.splitlines():
    if 'custom_call_target="__cublas$lt$matmul' in line:
      found = re.search(r'"epilogue":"(\w+)"', line)
      counts[found.group(1) if found else "DEFAULT"] += 1
  return dict(sorted(counts.items()))


def measured_peak_tflops() -> float:
  """bf16 matmul TFLOP/s at 8192^3, the peers' way of measuring the peak."""
  import jax
  import jax.numpy as jnp
  n = 8192 if jax.default_backend() == "gpu" else 512
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  matmul = jax.jit(lambda x, y: x @ y)
  for _ in range(3):
    matmul(a, b).block_until_ready()
  start, reps = time.perf_counter(), 20
  for _ in range(reps):
    out = matmul(a, b)
  out.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def case_config(case: str, cases: dict, overrides: list[str]):
  from tl_jax import config as config_lib
  task, preset, seq_len, batch, _ = cases[case]
  preset_file = os.path.join(REPO, "configs", "mlm.py" if task == "mlm" else "translate.py")
  config = config_lib.load_preset(f"{preset_file}:{preset}")
  config.data.seq_len = seq_len
  config.model.max_len = max(config.model.max_len, seq_len)
  config.train.batch_size = config.eval.batch_size = batch
  config.parallel.data, config.parallel.fsdp, config.parallel.tensor = -1, 1, 1
  config_lib.apply_overrides(config, dict(o.split("=", 1) for o in overrides))
  config_lib.validate(config)
  return config


def random_ids(rng, low: int, high: int, shape, ids: str = "uniform"):
  """Random token ids in [low, high): uniform (what the peer scripts feed), or Zipf, id low + r
  having probability ~ 1/(r + 1) as words do in text, so that ids repeat as often as on real
  batches (which matters to any embedding gradient that serialises on repeated ids)."""
  import numpy as np
  if ids == "uniform":
    return rng.integers(low, high, shape, dtype=np.int32)  # the batches timed before --ids
  p = 1.0 / np.arange(1, high - low + 1)
  return (low + rng.choice(high - low, shape, p=p / p.sum())).astype(np.int32)


def random_batch(task: str, seq_len: int, batch: int, vocab: int, seed: int = 0,
                 ids: str = "uniform"):
  """Full-length rows of random ordinary tokens (ids 5.. are not special); one sentence a row
  for translation, as the peers feed them."""
  import numpy as np
  rng = np.random.default_rng(seed)
  tokens = lambda: random_ids(rng, 5, vocab, (batch, seq_len), ids)
  if task == "mlm":
    return tokens()
  ones, positions = np.ones((batch, seq_len), np.int32), np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1))
  return {"src": tokens(), "src_segments": ones, "src_positions": positions, "tgt_in": tokens(),
          "tgt_out": tokens(), "tgt_segments": ones, "tgt_positions": positions}


def random_loader(task: str, seq_len: int, batch: int, vocab: int, directory: str,
                  num_tokens: int = 20_000_000):
  """A TrainLoader over random data stored as tl_jax stores it: a token cache written like
  `data/cache.py` writes one (MLM), or packed pair rows (translation)."""
  import numpy as np
  from tl_jax.data.cache import TokenCache
  from tl_jax.data.loader import PackedSequences, TrainLoader
  from tl_jax.data.pairs import PackedPairs
  if task == "mlm":
    dtype = np.uint16 if vocab <= 65_535 else np.uint32
    np.random.default_rng(0).integers(5, vocab, num_tokens, dtype=dtype).tofile(
        os.path.join(directory, "tokens.bin"))
    with open(os.path.join(directory, "meta.json"), "w") as f:
      json.dump({"num_tokens": num_tokens, "dtype": np.dtype(dtype).name}, f)
    return TrainLoader(PackedSequences(TokenCache(directory), seq_len), batch, seed=0)
  rows = random_batch(task, seq_len, num_tokens // seq_len // 4, vocab)
  return TrainLoader(PackedPairs(rows, seq_len), batch, seed=0)


def device_profile(call, text: str, calls: int = 5) -> dict:
  """Where the device time of `calls` calls of `call()` goes (it must block until its work is
  done): GPU kernels summed by name, a call's milliseconds grouped; `text` is the compiled
  program's optimized HLO, which names the costliest fusions' ops."""
  import jax
  from jax.profiler import ProfileData
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory):
      for _ in range(calls):
        call()
    path = next(os.path.join(root, name) for root, _, names in os.walk(directory)
                for name in names if name.endswith(".xplane.pb"))
    data = ProfileData.from_file(path)
  kernels: dict[str, float] = {}
  for plane in data.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      if not line.name.startswith("Stream"):
        continue
      for event in line.events:
        kernels[event.name] = kernels.get(event.name, 0.0) + event.duration_ns / 1e6 / calls
  groups = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
  for name, ms in kernels.items():
    lowered = name.lower()
    if any(k in lowered for k in ("cudnn", "fmha", "flash", "attention")):
      groups["attention"] += ms
    elif any(k in lowered for k in ("gemm", "nvjet", "cutlass", "xmma", "gmma", "triton_gemm")):
      groups["matmul"] += ms
    else:
      groups["other"] += ms
  top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
  # The HLO of the costliest fusions that are neither matmuls nor attention: what each reads,
  # computes and writes, so a profile names its memory-bound passes by their ops.
  hlo = {name: fusion_hlo(text, name) for name, _ in top if "fusion" in name and "gemm" not in name}
  return {"ms_per_call": {k: round(v, 2) for k, v in groups.items()},
          "top_kernels_ms": [(name[:90], round(ms, 2)) for name, ms in top],
          "fusion_hlo": {name: h for name, h in hlo.items() if h}}


def print_profile(profile: dict, call: str) -> None:
  print(f"  profile, ms in {call}:", profile["ms_per_call"], flush=True)
  for name, ms in profile["top_kernels_ms"]:
    print(f"    {ms:8.2f} ms  {name}", flush=True)
  for name, hlo in profile.get("fusion_hlo", {}).items():
    print(f"  {name}:\n    " + hlo.replace("\n", "\n    "), flush=True)


def fusion_hlo(text: str, kernel: str, limit: int = 6000) -> str:
  """The fusion instruction of optimized HLO `text` that GPU kernel `kernel` runs (XLA names the
  kernel after the instruction, '.' as '_'), then its fused computation; metadata dropped."""
  strip = lambda line: re.sub(r",? metadata=\{[^}]*\}", "", line).strip()
  for line in text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.-]+) = .* fusion\(.*calls=%([\w.-]+)", line)
    if m and re.sub(r"[.-]", "_", m.group(1)) == kernel:
      body = re.search(r"^%" + re.escape(m.group(2)) + r" .*?^}", text, re.S | re.M)
      lines = [strip(line)] + [strip(l) for l in (body.group(0).splitlines() if body else [])]
      return "\n".join(lines)[:limit]
  return ""


def child(args) -> None:
  import jax
  import flax.linen as nn
  from tl_jax.parallel import sharding as shd
  from tl_jax.parallel.mesh import make_mesh
  from tl_jax.parallel.rules import rules_for
  from tl_jax.tasks import task_for
  from tl_jax.tasks.base import Vocabulary

  if args.child == "peak":
    print("RESULT " + json.dumps({"peak_tflops": measured_peak_tflops()}), flush=True)
    return
  cases = TINY_CASES if args.size == "tiny" else CASES
  task, _, seq_len, batch_size, vocab = cases[args.child]
  overrides, _, feed = VARIANTS[args.variant]
  if args.variant in PATCHES:
    PATCHES[args.variant]()
  config = case_config(args.child, cases, overrides)
  mesh, rules = make_mesh(config), rules_for(config.parallel.rules)
  program = task_for(config).program(Vocabulary(vocab), mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # as loop.run traces and runs it
    state = program.init_fn()
    host = random_batch(task, seq_len, batch_size, vocab, ids=args.ids)
    batch = shd.global_batch(host, program.batch_sharding)
    start = time.perf_counter()
    step = program.train_fn.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start

    if feed == "loader":
      directory = tempfile.mkdtemp()
      batches = random_loader(task, seq_len, batch_size, vocab, directory).iterate(0, config.data.prefetch)
      def next_batch():
        return shd.global_batch(next(batches)[1], program.batch_sharding)
    else:
      next_batch = lambda: batch

    for _ in range(3):
      state, metrics = step(state, next_batch())
    jax.block_until_ready(metrics)
    windows = []
    for _ in range(3):
      start = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = step(state, next_batch())
      jax.block_until_ready(metrics)
      windows.append((time.perf_counter() - start) / args.steps)
    step_seconds = statistics.median(windows)
    result = {
        "case": args.child, "variant": args.variant, "step_ms": step_seconds * 1e3,
        "tokens_per_s": batch_size * seq_len / step_seconds,
        "flops_per_token": program.flops_per_token, "compile_s": compile_seconds,
        "loss": float(metrics["loss"]), "device": jax.devices()[0].device_kind,
        "jax": jax.__version__, "ids": args.ids,
    }
    hlo = step.as_text()
    result["erf_ops"] = erf_ops(hlo)
    if config.model.fp8 or "cublaslt" in VARIANTS[args.variant][1]:
      result["lt_epilogues"] = lt_epilogues(hlo)
      if config.model.fp8:
        result["fp8_matmuls"] = fp8_matmuls(hlo)
    stats = jax.local_devices()[0].memory_stats() or {}
    result["peak_memory_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30 or None
    if args.profile and jax.default_backend() == "gpu":
      def one_step():  # the step donates its state: each call takes the last one's
        nonlocal state
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
      result["profile"] = device_profile(one_step, hlo)
  print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# Peers: the scripts of ../shared/bench, imported and run on our shapes only.

# With --ids=zipf the peers' random ids are drawn by random_ids too: torch.randint and
# jax.random.randint, which the peer scripts call for their batches, are replaced in their process.
PEER_ZIPF_TORCH = """
import numpy as np, torch
sys.path.insert(0, {bench!r})
from speed import random_ids
_randint = torch.randint
def zipf_randint(*args, **kwargs):
  # Only the peers' randint(low, high, size, device=...); torch.compile's own calls
  # (randint(high, size, ...) for its random seeds) keep the original.
  if len(args) != 3:
    return _randint(*args, **kwargs)
  low, high, size = args
  return torch.from_numpy(random_ids(np.random.default_rng(0), low, high, size, "zipf")).long().to(
      kwargs.get("device"))
torch.randint = zipf_randint
"""
PEER_ZIPF_JAX = """
import numpy as np, jax
sys.path.insert(0, {bench!r})
from speed import random_ids
jax.random.randint = lambda key, shape, low, high, *a, **k: jax.numpy.asarray(
    random_ids(np.random.default_rng(0), low, high, shape, "zipf"))
"""
PEER_TORCH = """
import json, sys
sys.path.insert(0, {peers!r})
{zipf}
import peer_roberta as r
out = {{}}
for case, name, seq, batch in {shapes!r}:
  out[case] = r.bench_torch(name, seq, batch, False)
  print(case, round(out[case]), flush=True)
if {translate!r}:
  import peer_mt as mt
  out["big-128"] = mt.run(128, 128, 192, True)
print("RESULT " + json.dumps(out), flush=True)
"""
PEER_FLAX = """
import json, sys
sys.path.insert(0, {peers!r})
{zipf}
import peer_roberta as r
out = {{}}
for case, name, seq, batch in {shapes!r}:
  out[case] = r.bench_jax(name, seq, batch, impl="cudnn")
  print(case, round(out[case]), flush=True)
print("RESULT " + json.dumps(out), flush=True)
"""
PEER_NAMES = {"torch": ("HF PyTorch eager", "Marian torch.compile"), "flax": ("plain Flax cuDNN", None)}


def peer_flops_per_token(peers: str, case: str) -> float:
  """The peer script's own FLOP count per (target) token for `case`."""
  sys.path.insert(0, peers)
  task, _, seq_len, _, vocab = CASES[case]
  if task == "translate":
    import peer_mt
    return peer_mt.flops_per_tgt_token(seq_len, seq_len)
  import peer_roberta
  layers, hidden, _, ffn = peer_roberta.CONFIGS[case.split("-")[0]]
  return peer_roberta.train_flops_per_token(layers, hidden, ffn, seq_len, vocab)


def run_process(argv: list[str], env_extra: dict, timeout: int, log_path: str):
  """(parsed RESULT line or None, seconds); the whole output goes to `log_path`."""
  env = dict(os.environ, **env_extra)
  start = time.perf_counter()
  try:
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:
    output = f"{(e.stdout or b'')!r}\n{(e.stderr or b'')!r}\nTIMEOUT after {timeout}s"
  with open(log_path, "a") as f:
    f.write(f"$ {' '.join(argv)}\n{output}\n")
  lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
  if not lines:
    print(f"  failed: {argv[-3:]} (see {log_path}): {output.strip().splitlines()[-1:]}", flush=True)
    return None, time.perf_counter() - start
  return json.loads(lines[-1][len("RESULT "):]), time.perf_counter() - start


# ---------------------------------------------------------------------------
# The data loader's host throughput.


def loader_throughput(cases: dict, seconds: float = 5.0) -> dict:
  """Host tokens/s of TrainLoader.batch at each case's batch, on one thread."""
  out = {}
  for case, (task, _, seq_len, batch, vocab) in cases.items():
    with tempfile.TemporaryDirectory() as directory:
      loader = random_loader(task, seq_len, batch, vocab, directory)
      loader.batch(0)
      start, step = time.perf_counter(), 0
      while time.perf_counter() - start < seconds:
        loader.batch(step)
        step += 1
      out[case] = batch * seq_len * step / (time.perf_counter() - start)
  return out


# ---------------------------------------------------------------------------
# The orchestrator.


def table(rows: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
  return "\n".join([fmt(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                   + [fmt(r) for r in rows[1:]])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
  parser.add_argument("--peers", default=os.path.join(os.path.dirname(REPO), "shared", "bench"))
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--variants", default="tl_jax")
  parser.add_argument("--profile", default="", help="cases whose variants are profiled (GPU)")
  parser.add_argument("--steps", type=int, default=10, help="steps per timed window (3 windows)")
  parser.add_argument("--size", default="paper", choices=["paper", "tiny"])
  parser.add_argument("--ids", default="uniform", choices=["uniform", "zipf"],
                      help="token ids of the timed batches, tl_jax's and the peers'")
  parser.add_argument("--no-peers", action="store_true")
  parser.add_argument("--peer-cases", default="", help="cases the peers run (default: --cases)")
  parser.add_argument("--merge", default="", help="a speed.json or partial.json of an earlier call "
                      "whose tl_jax results join the tables (for calls cut by a time limit)")
  parser.add_argument("--timeout", type=int, default=300, help="seconds per child process")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--variant", default="tl_jax", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return

  cases = TINY_CASES if args.size == "tiny" else CASES
  wanted = [c for c in args.cases.split(",") if c in cases]
  variants = args.variants.split(",")
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    sys.exit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}.")
  os.makedirs(args.out, exist_ok=True)
  log_path = os.path.join(args.out, "speed.log")
  me = [sys.executable, "-u", os.path.abspath(__file__), f"--size={args.size}", f"--steps={args.steps}",
        f"--ids={args.ids}"]

  peak, _ = run_process(me + ["--child=peak"], {}, args.timeout, log_path)
  peak_tflops = peak["peak_tflops"] if peak else None
  print(f"bf16 matmul peak: {peak_tflops:.1f} TFLOP/s" if peak_tflops else "peak: failed", flush=True)

  results = []
  for case in wanted:
    for variant in variants:
      if (variant in MLM_ONLY and cases[case][0] != "mlm") or (
          variant in TRANSLATE_ONLY and cases[case][0] != "translate"):
        continue
      flags = VARIANTS[variant][1]
      env = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()} if flags else {}
      profile = ["--profile=1"] if case in args.profile.split(",") else []
      result, seconds = run_process(me + [f"--child={case}", f"--variant={variant}"] + profile, env,
                                    args.timeout, log_path)
      if result:
        result["mfu"] = (result["tokens_per_s"] * result["flops_per_token"] / (peak_tflops * 1e12)
                         if peak_tflops else None)
        results.append(result)
        with open(os.path.join(args.out, "partial.json"), "w") as f:
          json.dump(results, f)
        print(f"{case:10s} {variant:15s} {result['tokens_per_s']:>11,.0f} tok/s  mfu "
              f"{result['mfu'] or 0:.3f}  compile {result['compile_s']:.1f}s  peak "
              f"{result['peak_memory_gib'] or 0:.1f} GiB  loss {result['loss']:.3f}  ({seconds:.0f}s)",
              flush=True)
        if "profile" in result:
          print_profile(result["profile"], "a step")

  if args.merge:
    with open(args.merge) as f:
      earlier = json.load(f)
    earlier = earlier["results"] if isinstance(earlier, dict) else earlier
    results = [dict(r, earlier_call=True) for r in earlier
               if (r["case"], r["variant"]) not in {(m["case"], m["variant"]) for m in results}] + results
    wanted = [c for c in cases if any(r["case"] == c for r in results)]
    if peak_tflops:  # one peak for every MFU
      for r in results:
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / (peak_tflops * 1e12)

  peers = {}
  peer_cases = [c for c in (args.peer_cases or args.cases).split(",") if c in CASES]
  shapes = [(c, c.split("-")[0], CASES[c][2], CASES[c][3]) for c in peer_cases if CASES[c][0] == "mlm"]
  if not args.no_peers and os.path.isdir(args.peers):
    for system, script, zipf in (("torch", PEER_TORCH, PEER_ZIPF_TORCH), ("flax", PEER_FLAX, PEER_ZIPF_JAX)):
      zipf = zipf.format(bench=os.path.dirname(os.path.abspath(__file__))) if args.ids == "zipf" else ""
      code = script.format(peers=os.path.abspath(args.peers), shapes=shapes, zipf=zipf,
                           translate="big-128" in peer_cases)
      result, seconds = run_process([sys.executable, "-u", "-c", code], {}, 3 * args.timeout, log_path)
      peers[system] = result or {}
      print(f"peers {system}: {result} ({seconds:.0f}s)", flush=True)
  elif not args.no_peers:
    print(f"no peer scripts at {args.peers}; pass --peers=DIR or --no-peers", flush=True)

  loader = loader_throughput({c: cases[c] for c in wanted})

  # The summary: tl_jax's default variant against each peer on the same shape.
  rows = [["case", "tl_jax tok/s", "MFU", "compile s", "peak GiB", "vs HF eager", "vs plain Flax",
           "vs Marian compiled", "loader host tok/s"]]
  summary = []
  for case in wanted:
    mine = next((r for r in results if r["case"] == case and r["variant"] == variants[0]), None)
    if mine is None:
      continue
    task = cases[case][0]
    hf = peers.get("torch", {}).get(case)
    ratio = lambda peer: f"{mine['tokens_per_s'] / peer:.2f}x" if peer else "-"
    entry = dict(mine, hf_eager=hf if task == "mlm" else None,
                 plain_flax=peers.get("flax", {}).get(case), marian_compiled=hf if task != "mlm" else None,
                 loader_tokens_per_s=loader.get(case))
    summary.append(entry)
    rows.append([case + (" *" if mine.get("earlier_call") else ""), f"{mine['tokens_per_s']:,.0f}", f"{mine['mfu']:.3f}" if mine["mfu"] else "-",
                 f"{mine['compile_s']:.1f}", f"{mine['peak_memory_gib']:.1f}" if mine["peak_memory_gib"] else "-",
                 ratio(entry["hf_eager"]), ratio(entry["plain_flax"]), ratio(entry["marian_compiled"]),
                 f"{loader[case]:,.0f}" if case in loader else "-"])
  peer_rows = [["peer", "case", "tok/s", "MFU (peer FLOPs)"]]
  for system, values in peers.items():
    for case, tps in values.items():
      name = PEER_NAMES[system][0] if cases[case][0] == "mlm" else PEER_NAMES[system][1]
      mfu = tps * peer_flops_per_token(args.peers, case) / (peak_tflops * 1e12) if peak_tflops else None
      peer_rows.append([name, case, f"{tps:,.0f}", f"{mfu:.3f}" if mfu else "-"])
  variant_rows = [["case", "variant", "tok/s", "vs default", "MFU", "compile s", "peak GiB",
                   "fp8 mm", "cuBLASLt epilogues"]]
  for r in results:
    base = next((b for b in results if b["case"] == r["case"] and b["variant"] == variants[0]), r)
    variant_rows.append([r["case"], r["variant"], f"{r['tokens_per_s']:,.0f}",
                         f"{r['tokens_per_s'] / base['tokens_per_s']:.3f}",
                         f"{r['mfu']:.3f}" if r["mfu"] else "-", f"{r['compile_s']:.1f}",
                         f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] else "-",
                         str(r.get("fp8_matmuls", "-")),
                         ", ".join(f"{k} {v}" for k, v in r["lt_epilogues"].items())
                         if r.get("lt_epilogues") else "-"])

  device = results[0]["device"] if results else "?"
  header = (f"device {device}, jax {results[0]['jax'] if results else '?'}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, bf16 peak measured "
            f"{peak_tflops or 0:.0f} TFLOP/s, {args.ids} token ids")
  if any(r.get("earlier_call") for r in results):
    header += ("; rows marked * were timed by an earlier call of this script on the same kind of "
               "device (--merge), the rest and the peers in this one")
  markdown = "\n\n".join([header, table(rows), table(variant_rows)]
                         + ([table(peer_rows)] if len(peer_rows) > 1 else []))
  with open(os.path.join(args.out, "speed.json"), "w") as f:
    json.dump({"header": header, "peak_tflops": peak_tflops, "results": results, "peers": peers,
               "loader_tokens_per_s": loader, "summary": summary}, f, indent=1)
  with open(os.path.join(args.out, "speed.md"), "w") as f:
    f.write(markdown + "\n")
  print("\n" + markdown, flush=True)


if __name__ == "__main__":
  main()
