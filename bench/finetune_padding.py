"""Padding waste in finetuning and its evaluation: every row padded to data.seq_len against
length buckets (data.length_buckets), on real SST-2, in one process.

  python3 -u bench/finetune_padding.py [--data=DIR] [--model=tiny] [--buckets=8] [--seq_len=64]
                                       [--batch=32] [--steps=50] [--rounds=3] [--out=FILE.json]

DIR holds sst2/train.tsv (default $TL_JAX_DATA, else ../shared/data); 5% of it is carved off as
the dev split, as configs/glue.py:sst2 does. A sentencepiece tokenizer of 8000 pieces is
trained on the TSV (cached under $TL_JAX_CACHE). The classifier has the shape of the
configs/mlm.py preset --model, with random weights: speed does not depend on them, and
equality of the two evaluations is checked on the same parameters.

For each of the two batchings it reports the fraction of computed positions that are real
(training: a whole epoch of batches; evaluation: the dev batches), compile seconds, and the
speed of the train step and of one pass over the dev split, timed --rounds times interleaved
(padded, bucketed, padded, ...), with `--steps` steps a round: examples/s and real tokens/s
(the text the model reads; padding is not counted). The parameters trained by the padded
rounds are then scored with both evaluations: accuracy, eval loss and every dev example's
predicted label must agree (logits up to bfloat16 rounding). The medians and each round go
to --out as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=os.environ.get("TL_JAX_DATA", os.path.join(REPO, "..", "shared", "data")))
  p.add_argument("--model", default="tiny", help="a configs/mlm.py preset: its model shape")
  p.add_argument("--buckets", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--eval_batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=50, help="train steps per timed round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default="")
  return p.parse_args()


def main():
  args = parse_args()
  import jax
  import numpy as np

  from tl_jax import config as config_lib
  from tl_jax.config import DataConfig, FinetuneConfig
  from tl_jax.data import sources
  from tl_jax.data.cache import default_cache_dir
  from tl_jax.data.classification import row_lengths
  from tl_jax.data.tokenizer import cached_tokenizer
  from tl_jax.parallel import sharding as shd
  from tl_jax.parallel.mesh import make_mesh
  from tl_jax.parallel.rules import rules_for
  from tl_jax.tasks import classification
  from tl_jax.tasks.scoring import Evaluator

  path = os.path.join(args.data, "sst2", "train.tsv")
  if not os.path.isfile(path):
    sys.exit(f"{path} is absent; pass --data=DIR (or TL_JAX_DATA=DIR) holding sst2/train.tsv.")
  cache = default_cache_dir("")  # $TL_JAX_CACHE, else ~/.cache/tl_jax, as the CLI's
  tokenizer = cached_tokenizer(sources.TextFilesSource(path, path),
                               DataConfig(vocab_size=8000, tokenizer_train_chars=1_000_000), cache)

  base = FinetuneConfig()
  base.model = config_lib.load_preset(f"configs/mlm.py:{args.model}").model
  base.model.max_len = max(base.model.max_len, args.seq_len)
  base.data.source, base.data.train_files, base.data.labels = "tsv", path, "0,1"
  base.data.seq_len = args.seq_len
  base.train.batch_size, base.eval.batch_size = args.batch, args.eval_batch
  base.train.learning_rate, base.train.warmup_steps = 1e-4, 0
  base.train.max_steps = args.steps * args.rounds
  base.train.epochs = base.train.warmup_fraction = 0
  base.init.workdir = "unused"  # the task's model needs no --init here
  base.parallel.data = 1
  mesh, rules = make_mesh(base, jax.devices()[:1]), rules_for("default")
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, model {args.model} "
        f"({base.model.num_layers}x{base.model.d_model}), seq_len {args.seq_len}, batch {args.batch}, "
        f"buckets {args.buckets}", flush=True)

  modes = {}
  for name, buckets in (("padded", 0), ("bucketed", args.buckets)):
    config = copy.deepcopy(base)
    config.data.length_buckets = buckets
    config_lib.validate(config)
    task = classification.ClassificationTask(config)
    loader = task.loader(tokenizer)
    program = task.program(tokenizer, mesh, rules)
    state = program.init_fn()
    if buckets:
      real, computed = loader.positions(0)
    else:
      real, computed = task.tokens_per_step(), args.batch * args.seq_len  # a mean batch
    t = time.perf_counter()
    example = shd.abstract_batch(loader.batch(0), program.batch_sharding)
    step = program.train_fn.lower(state, example).compile()
    compile_s = time.perf_counter() - t
    batches = [loader.batch(s) for s in range(args.steps * args.rounds)]
    scoring = task.scoring(tokenizer, program.model, mesh, rules)
    evaluator = Evaluator(scoring, program.state_shardings.params)
    t = time.perf_counter()
    evaluator.compile(state.params)
    eval_compile_s = time.perf_counter() - t
    dev = scoring.splits[scoring.primary]
    dev_real = sum(int(row_lengths(b["tokens"][b["weight"] > 0], tokenizer.pad_id).sum()) for b in dev)
    modes[name] = dict(task=task, step=step, state=state, batches=batches, program=program,
                       evaluator=evaluator, dev=dev, dev_real=dev_real, rounds=[], eval_rounds=[],
                       summary={"train_real_fraction": real / computed, "train_compile_s": compile_s,
                                "eval_real_fraction": dev_real / sum(b["tokens"].size for b in dev),
                                "eval_compile_s": eval_compile_s,
                                "compiled_lengths": sorted({b["tokens"].shape[1] for b in batches})})

  for r in range(args.rounds):
    for name, m in modes.items():
      chunk = m["batches"][r * args.steps:(r + 1) * args.steps]
      state = m["state"]
      t = time.perf_counter()
      for batch in chunk:
        state, metrics = m["step"](state, shd.global_batch(batch, m["program"].batch_sharding))
      jax.block_until_ready(metrics)
      seconds = time.perf_counter() - t
      m["state"] = state
      real = sum(int(row_lengths(b["tokens"], tokenizer.pad_id).sum()) for b in chunk)
      m["rounds"].append({"seconds": seconds, "examples_per_s": len(chunk) * args.batch / seconds,
                          "real_tokens_per_s": real / seconds})
    params = modes["padded"]["state"].params
    for name, m in modes.items():
      t = time.perf_counter()
      values = m["evaluator"](params)
      seconds = time.perf_counter() - t
      examples = m["evaluator"].scoring.examples
      m["eval_rounds"].append({"seconds": seconds, "examples_per_s": examples / seconds,
                               "real_tokens_per_s": m["dev_real"] / seconds, **values})
    print(f"round {r + 1}/{args.rounds}: " + " | ".join(
        f"{name} train {m['rounds'][-1]['real_tokens_per_s']:,.0f} real tok/s, eval "
        f"{m['eval_rounds'][-1]['seconds']:.2f}s" for name, m in modes.items()), flush=True)

  # The same parameters, both evaluations: every dev example's prediction and logits.
  params = modes["padded"]["state"].params
  logits = {}
  for name, m in modes.items():
    task, model = m["task"], m["program"].model
    run = jax.jit(lambda p, b, model=model: classification.logits(model, p, b, tokenizer.pad_id))
    logits[name] = np.concatenate([np.asarray(run(params, b))[b["weight"] > 0] for b in m["dev"]])
  padded_tokens = np.concatenate([b["tokens"][b["weight"] > 0] for b in modes["padded"]["dev"]])
  order = classification.length_order(padded_tokens, tokenizer.pad_id)
  same = logits["padded"][order].argmax(-1) == logits["bucketed"].argmax(-1)
  close = np.abs(logits["padded"][order] - logits["bucketed"]).max()

  median = lambda rounds, key: statistics.median(r[key] for r in rounds)
  result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "args": vars(args),
            "date": time.strftime("%Y-%m-%d"), "modes": {}}
  for name, m in modes.items():
    result["modes"][name] = {**m["summary"],
                             "train_examples_per_s": median(m["rounds"], "examples_per_s"),
                             "train_real_tokens_per_s": median(m["rounds"], "real_tokens_per_s"),
                             "eval_seconds": median(m["eval_rounds"], "seconds"),
                             "eval_real_tokens_per_s": median(m["eval_rounds"], "real_tokens_per_s"),
                             "accuracy": m["eval_rounds"][-1]["accuracy"],
                             "eval_loss": m["eval_rounds"][-1]["eval_loss"],
                             "rounds": m["rounds"], "eval_rounds": m["eval_rounds"]}
  p, b = result["modes"]["padded"], result["modes"]["bucketed"]
  result["train_speedup"] = statistics.median(
      y["real_tokens_per_s"] / x["real_tokens_per_s"]
      for x, y in zip(modes["padded"]["rounds"], modes["bucketed"]["rounds"]))
  result["eval_speedup"] = statistics.median(
      x["seconds"] / y["seconds"]
      for x, y in zip(modes["padded"]["eval_rounds"], modes["bucketed"]["eval_rounds"]))
  result["dev_examples"] = int(len(same))
  result["same_predictions"] = int(same.sum())
  result["max_logit_difference"] = float(close)

  print(f"\n{'':<9} {'real train':>10} {'real eval':>9} {'compile s':>9} {'train ex/s':>10} "
        f"{'train real tok/s':>16} {'eval s':>7} {'accuracy':>8} {'eval loss':>9}")
  for name, r in result["modes"].items():
    print(f"{name:<9} {r['train_real_fraction']:>10.1%} {r['eval_real_fraction']:>9.1%} "
          f"{r['train_compile_s'] + r['eval_compile_s']:>9.1f} {r['train_examples_per_s']:>10,.0f} "
          f"{r['train_real_tokens_per_s']:>16,.0f} {r['eval_seconds']:>7.2f} {r['accuracy']:>8.4f} "
          f"{r['eval_loss']:>9.5f}")
  print(f"bucketed/padded (median of per-round ratios): train {result['train_speedup']:.2f}x, "
        f"eval {result['eval_speedup']:.2f}x; bucketed lengths {b['compiled_lengths']}")
  print(f"same parameters: {result['same_predictions']}/{result['dev_examples']} dev predictions "
        f"equal, max |logit difference| {result['max_logit_difference']:.2e}, accuracy "
        f"{p['accuracy']:.4f} / {b['accuracy']:.4f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
