"""Decoding speed of tl_jax against Hugging Face `MarianMTModel.generate`, on one GPU, in one call.

  python3 -u bench/decode.py [--out=DIR] [--cases=multi30k,big] [--beams=1,4] [--lengths=32,128]
                             [--reps=3] [--no-peer] [--both-searches]
  python3 -u bench/decode.py --size=tiny      # a CPU smoke run, peer included (~1 minute)
  python3 -u bench/decode.py --cases=multi30k --lengths=32,128 --batch=32 --no-peer --reps=2  # CPU
  python3 -u bench/decode.py --beams=4 --lengths=128 --both-searches   # lineage table vs reorder

Times the search that BLEU evaluation and `tl-jax translate-file` run (`translate_batch` of
tl_jax/tasks/translation.py: encoder, key/value cache, greedy or beam search in one
`lax.while_loop`, jitted whole) with random weights of the `multi30k` and `big` shapes of
configs/translate.py, at the preset's BLEU-eval batch (`eval.decode_batch_size`: 256 and 64
sentences). Every source has L real tokens and every output exactly L tokens: </s> is masked
until the last position in both systems (tl_jax `min_len=max_len`, Hugging Face
`min_new_tokens=max_new_tokens`), so no run stops early and both do the same number of steps.

The peer is `MarianMTModel` (SDPA attention) with the same layers, width, heads, FFN and
vocabulary, the same beam, length penalty and lengths, built as ../shared/bench/peer_mt.py
builds it (random weights, SDPA; here also tl_jax's exact GELU and sqrt(d) embedding scale):
float32 weights under bf16 autocast ('autocast'), and also with its weights cast to bfloat16
('bf16 weights'), which is how one usually serves it. Sentences/s and target tokens/s
(batch x L / seconds; beams not counted) are the median of --reps timed calls after one warm
call. tl_jax runs in one process and the peer in another (each framework takes the GPU memory
it wants), one after the other. Writes `decode.json` and `decode.md` under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))  # speed.py's profiler

from speed import device_profile, print_profile  # noqa: E402

# case -> preset of configs/translate.py; the model shape, vocabulary and eval batch come from it.
CASES = {"multi30k": "multi30k", "big": "big"}
TINY = {"batch": 3, "lengths": "8"}  # --size=tiny: the tiny preset, small enough for a CPU
PEER_VARIANTS = ("autocast", "bf16 weights")
FIRST_ORDINARY_ID = 5  # ids below are <pad> <s> </s> <unk> <mask>


def case_setup(case: str, size: str, batch: int = 0):
  """(TranslateConfig, vocabulary, batch) of a case: the preset's, or the tiny one's; `batch`,
  where given, replaces the batch."""
  from tl_jax import config as config_lib
  config = config_lib.load_preset(os.path.join(REPO, "configs", "translate.py") + ":" +
                                  ("tiny" if size == "tiny" else CASES[case]))
  batch = batch or (TINY["batch"] if size == "tiny" else config.eval.decode_batch_size)
  return config, config.data.vocab_size, batch


def source_ids(batch: int, length: int, vocab: int, seed: int = 0):
  """Random ordinary ids, every row `length` real tokens (no padding), the same for both systems."""
  import numpy as np
  return np.random.default_rng(seed).integers(FIRST_ORDINARY_ID, vocab, (batch, length), dtype=np.int32)


def timed(call, reps: int) -> tuple[float, object]:
  """(median seconds of `reps` calls after one warm call, the last output); `call` blocks."""
  out = call()
  seconds = []
  for _ in range(reps):
    start = time.perf_counter()
    out = call()
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds), out


def row(system: str, variant: str, case: str, beam: int, length: int, batch: int, seconds: float,
        full_length: bool, **extra) -> dict:
  return dict(system=system, variant=variant, case=case, beam=beam, length=length, batch=batch,
              seconds_per_batch=seconds, sentences_per_s=batch / seconds,
              tokens_per_s=batch * length / seconds, full_length=full_length, **extra)


# ---------------------------------------------------------------------------
# Children: all tl_jax rows in one process, all peer rows in another.


def tl_jax_child(args) -> None:
  import functools
  import flax.linen as nn
  import jax
  import numpy as np
  from tl_jax.tasks import task_for
  from tl_jax.tasks.translation import reorders_cache, translate_batch

  for case in args.cases.split(","):
    config, vocab, batch = case_setup(case, args.size, args.batch)
    lengths = [int(n) for n in args.lengths.split(",")]
    config.model.max_len = max(config.model.max_len, *lengths)
    task = task_for(config)
    model = task.model(vocab)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), task.example_input())["params"])
    for length in lengths:
      src = jax.device_put(source_ids(batch, length, vocab))
      for beam in [int(b) for b in args.beams.split(",")]:
        # reorder_cache for each row: greedy has no cache order; beam search the backend's, or both
        default = reorders_cache()
        searches = [default, not default] if args.both_searches else [default]
        for reorder in searches if beam > 1 else [None]:
          search = jax.jit(functools.partial(
              translate_batch, model=model, vocab_size=vocab, beam_size=beam,
              length_penalty=config.eval.length_penalty, max_len=length, min_len=length,
              reorder_cache=reorder))
          start = time.perf_counter()
          compiled = search.lower(params, src).compile()
          compile_seconds = time.perf_counter() - start
          seconds, out = timed(lambda: compiled(params, src).block_until_ready(), args.reps)
          # Forced length: every position an ordinary token (no </s>, no padding after it).
          full = bool(np.all(np.asarray(out) >= FIRST_ORDINARY_ID))
          variant = config.model.dtype + {None: "", True: " reorder", False: " lineage"}[reorder]
          result = row("tl_jax", variant, case, beam, length, batch, seconds, full,
                       compile_s=compile_seconds, device=jax.devices()[0].device_kind,
                       versions=f"jax {jax.__version__}")
          if args.profile and jax.default_backend() == "gpu":
            result["profile"] = device_profile(lambda: compiled(params, src).block_until_ready(),
                                               compiled.as_text(), calls=1)
          print("RESULT " + json.dumps(result), flush=True)


def peer_child(args) -> None:
  import torch
  import transformers
  from transformers import MarianConfig, MarianMTModel
  from tl_jax.config import d_ff

  device = "cuda" if torch.cuda.is_available() else "cpu"
  name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  for case in args.cases.split(","):
    config, vocab, batch = case_setup(case, args.size, args.batch)
    m = config.model
    lengths = [int(n) for n in args.lengths.split(",")]
    peer_config = MarianConfig(
        vocab_size=vocab, decoder_vocab_size=vocab, d_model=m.d_model, encoder_layers=m.num_layers,
        decoder_layers=m.decoder_layers, encoder_attention_heads=m.num_heads,
        decoder_attention_heads=m.num_heads, encoder_ffn_dim=d_ff(m), decoder_ffn_dim=d_ff(m),
        max_position_embeddings=max(lengths) + 1,
        activation_function="gelu", scale_embedding=True,  # tl_jax's exact GELU and sqrt(d) scale
        pad_token_id=0, decoder_start_token_id=1, eos_token_id=2, forced_eos_token_id=None,
        attn_implementation="sdpa")
    torch.manual_seed(0)
    model = MarianMTModel(peer_config).to(device).eval()
    for variant in PEER_VARIANTS:
      if variant == "bf16 weights":
        model = model.to(torch.bfloat16)
      for length in lengths:
        src = torch.as_tensor(source_ids(batch, length, vocab), dtype=torch.long, device=device)
        for beam in [int(b) for b in args.beams.split(",")]:
          def generate():
            with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
              out = model.generate(
                  input_ids=src, attention_mask=torch.ones_like(src), num_beams=beam,
                  do_sample=False, max_new_tokens=length, min_new_tokens=length,
                  length_penalty=config.eval.length_penalty, use_cache=True)
            if device == "cuda":
              torch.cuda.synchronize()
            return out
          seconds, out = timed(generate, args.reps)
          # The decoder start token, then `length` ordinary tokens.
          full = out.shape[1] == length + 1 and bool((out[:, 1:] >= FIRST_ORDINARY_ID).all())
          result = row("hf_marian", variant, case, beam, length, batch, seconds, full, device=name,
                       versions=f"torch {torch.__version__}, transformers {transformers.__version__}")
          print("RESULT " + json.dumps(result), flush=True)
    del model
    if device == "cuda":
      torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# The orchestrator.


def run_child(argv: list[str], timeout: int, log_path: str) -> list[dict]:
  """The RESULT rows a child printed before it ended (or was stopped at `timeout`)."""
  try:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    output, failed = proc.stdout + proc.stderr, proc.returncode != 0
  except subprocess.TimeoutExpired as e:
    decode = lambda b: b.decode() if isinstance(b, bytes) else (b or "")
    output, failed = decode(e.stdout) + decode(e.stderr) + f"\nTIMEOUT after {timeout}s", True
  with open(log_path, "a") as f:
    f.write(f"$ {' '.join(argv)}\n{output}\n")
  if failed:
    print(f"  {argv[-1]}: failed (see {log_path}): {output.strip().splitlines()[-1:]}", flush=True)
  return [json.loads(line[len("RESULT "):]) for line in output.splitlines() if line.startswith("RESULT ")]


def table(rows: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
  return "\n".join([fmt(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                   + [fmt(r) for r in rows[1:]])


def summary_rows(results: list[dict]) -> list[list[str]]:
  """One line per (case, beam, length): tl_jax and each peer variant, and tl_jax's ratio to each."""
  key = lambda r: (r["case"], r["beam"], r["length"])
  rows = [["case", "beam", "L", "batch", "tl_jax", "tl_jax sent/s", "tl_jax tok/s", "tl_jax ms/step"]
          + [f"HF {v} tok/s" for v in PEER_VARIANTS] + [f"vs HF {v}" for v in PEER_VARIANTS]]
  for mine in (r for r in results if r["system"] == "tl_jax"):
    peers = {r["variant"]: r for r in results if r["system"] != "tl_jax" and key(r) == key(mine)}
    rows.append([mine["case"], str(mine["beam"]), str(mine["length"]), str(mine["batch"]),
                 mine["variant"], f"{mine['sentences_per_s']:,.1f}", f"{mine['tokens_per_s']:,.0f}",
                 f"{mine['seconds_per_batch'] / mine['length'] * 1e3:.3f}"]
                + [f"{peers[v]['tokens_per_s']:,.0f}" if v in peers else "-" for v in PEER_VARIANTS]
                + [f"{mine['tokens_per_s'] / peers[v]['tokens_per_s']:.2f}x" if v in peers else "-"
                   for v in PEER_VARIANTS])
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--beams", default="1,4")
  parser.add_argument("--lengths", default="", help="source = output lengths (default 32,128; tiny 8)")
  parser.add_argument("--reps", type=int, default=3, help="timed calls per row, after one warm call")
  parser.add_argument("--size", default="paper", choices=["paper", "tiny"])
  parser.add_argument("--batch", type=int, default=0,
                      help="sentences a call (default: the preset's eval.decode_batch_size)")
  parser.add_argument("--no-peer", action="store_true")
  parser.add_argument("--profile", action="store_true",
                      help="on a GPU, also profile one call of each tl_jax row: kernel times by group "
                           "and the HLO of the costliest fusions (bench/speed.py's device_profile)")
  parser.add_argument("--both-searches", action="store_true",
                      help="time each beam row both ways: the cache read through the lineage "
                           "table and reordered every step (translate_batch's reorder_cache; "
                           "the backend's default first)")
  parser.add_argument("--timeout", type=int, default=280, help="seconds per child process")
  parser.add_argument("--child", choices=["tl_jax", "peer"], help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.lengths = args.lengths or (TINY["lengths"] if args.size == "tiny" else "32,128")
  unknown = [c for c in args.cases.split(",") if c not in CASES]
  if unknown:
    sys.exit(f"unknown cases {unknown}; choose from {', '.join(CASES)}.")
  bad = [v for v in args.beams.split(",") + args.lengths.split(",") if not v.isdigit() or int(v) < 1]
  if bad:
    sys.exit(f"--beams and --lengths take positive integers separated by commas; got {bad}.")
  if args.batch < 0:
    sys.exit(f"--batch takes a positive number of sentences (0: the preset's); got {args.batch}.")
  if args.child == "tl_jax":
    return tl_jax_child(args)
  if args.child == "peer":
    return peer_child(args)

  os.makedirs(args.out, exist_ok=True)
  log_path = os.path.join(args.out, "decode.log")
  me = [sys.executable, "-u", os.path.abspath(__file__), f"--size={args.size}", f"--cases={args.cases}",
        f"--beams={args.beams}", f"--lengths={args.lengths}", f"--reps={args.reps}",
        f"--batch={args.batch}"] + (["--profile"] if args.profile else []) \
      + (["--both-searches"] if args.both_searches else [])
  results = []
  for child in ["tl_jax"] + ([] if args.no_peer else ["peer"]):
    start = time.perf_counter()
    for r in run_child(me + [f"--child={child}"], args.timeout, log_path):
      results.append(r)
      print(f"{r['system']:9s} {r['variant']:12s} {r['case']:8s} beam {r['beam']} L {r['length']:3d} "
            f"B {r['batch']:3d}: {r['sentences_per_s']:9,.1f} sent/s {r['tokens_per_s']:11,.0f} tok/s"
            + (f"  compile {r['compile_s']:.1f}s" if "compile_s" in r else "")
            + ("" if r["full_length"] else "  NOT FULL LENGTH"), flush=True)
      if "profile" in r:
        print_profile(r["profile"], f"a search of {r['length']} steps")
    print(f"{child}: {time.perf_counter() - start:.0f}s", flush=True)

  devices = sorted({r["device"] for r in results})
  versions = "; ".join(sorted({r["versions"] for r in results}))
  header = (f"device {', '.join(devices) or '?'}; {versions}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; source = output length L, "
            f"</s> masked until L; median of {args.reps} calls after a warm one; tokens/s = batch x L / s")
  markdown = header + "\n\n" + table(summary_rows(results))
  with open(os.path.join(args.out, "decode.json"), "w") as f:
    json.dump({"header": header, "results": results}, f, indent=1)
  with open(os.path.join(args.out, "decode.md"), "w") as f:
    f.write(markdown + "\n")
  print("\n" + markdown, flush=True)
  if not all(r["full_length"] for r in results):
    sys.exit("some rows did not decode every output to its full length (see decode.json).")


if __name__ == "__main__":
  main()
