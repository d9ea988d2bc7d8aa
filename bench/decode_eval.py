"""A translation run's BLEU eval decoded two ways, in one process: every source padded to
data.seq_len in input order (how tl_jax batched it before source widths), against
`Translate`'s batches (sources sorted by length, each batch padded to the narrowest of
`source_widths` that holds it).

  python3 -u bench/decode_eval.py --workdir=W [--pairs=0] [--reps=2] [--out=FILE.json]

W is a trained `tl-jax translate` workdir (its best/ or, with --which=latest or without best/,
its newest checkpoint; a trained model, so that outputs end where real ones do and sorted
batches can stop early together). Its BLEU-eval
sentences (`eval.bleu_pairs` of the eval split, or --pairs), its beam, batch and length penalty
are used as the run's evals use them (--beam and --batch change the last two). E.g. on a CPU (about 5 minutes to train):

  tl-jax translate --config=configs/translate.py:tiny --workdir=/tmp/mt --config.data.source=text \\
    --config.data.train_prefix=../shared/data/multi30k/train \\
    --config.data.eval_prefix=../shared/data/multi30k/test_2016_flickr \\
    --config.data.max_eval_pairs=0 --config.eval.bleu_pairs=0 --config.train.max_steps=600

and on a GPU `--config=configs/translate.py:multi30k --config.train.max_train_seconds=120`.

Reports, for each way: compile seconds, the median seconds of --reps decodes of all the
sentences after a warm one, sentences/s, BLEU, and the real fraction of the source positions
computed; then the fraction of sentences whose output is identical both ways.
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


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--which", default="", choices=["", "best", "latest"],
                 help="parameters to decode with (default: best/ where it exists, else the newest)")
  p.add_argument("--pairs", type=int, default=0, help="sentences decoded (0 = the run's BLEU eval's)")
  p.add_argument("--beam", type=int, default=0, help="beam size (0 = the run's eval.beam_size)")
  p.add_argument("--batch", type=int, default=0, help="sentences a batch (0 = eval.decode_batch_size)")
  p.add_argument("--reps", type=int, default=2)
  p.add_argument("--out", default="")
  return p.parse_args()


def main():
  args = parse_args()
  import functools

  import jax
  import numpy as np

  from tl_jax.tasks import translation
  from tl_jax.tasks.workdir import Workdir

  run = Workdir.open(args.workdir, commands=("translate",))
  config, tokenizer = run.config, run.tokenizer()
  config.eval.beam_size = args.beam or config.eval.beam_size
  config.eval.decode_batch_size = args.batch or config.eval.decode_batch_size
  mesh, rules = run.one_device()
  which = args.which or ("best" if run.best().exists() else "latest")
  params, chosen = run.restore_params(which, mesh, rules)
  model = run.task.model(tokenizer.vocab_size)
  bleu = run.task.scoring(tokenizer, model, mesh, rules, max_examples=args.pairs).generate
  sources, references = bleu.sources, bleu.references
  seq_len, rows = config.data.seq_len, config.eval.decode_batch_size
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {args.workdir} ({chosen}): "
        f"{len(sources)} sentences, beam {config.eval.beam_size}, batch {rows}, seq_len {seq_len}",
        flush=True)

  # Before: input order, every batch padded to seq_len, one compiled search.
  search = jax.jit(functools.partial(
      translation.translate_batch, model=model, vocab_size=tokenizer.vocab_size,
      beam_size=config.eval.beam_size, length_penalty=config.eval.length_penalty, max_len=seq_len))

  def padded_compile():
    return search.lower(params, translation.source_rows([], rows, seq_len)).compile()

  def padded(compiled):
    out = []
    for start in range(0, len(sources), rows):
      chunk = sources[start:start + rows]
      out += list(np.asarray(jax.device_get(compiled(params, translation.source_rows(chunk, rows, seq_len)))
                             )[:len(chunk)])
    return out

  # After: the class the BLEU eval and translate-file use.
  def bucketed_compile():
    translate = translation.Translate(model, tokenizer.vocab_size, config.eval, seq_len, rows)
    translate.compile(params, sources)
    return translate

  real = sum(min(len(s) + 1, seq_len) for s in sources)
  batches = translation.decode_batches(sources, rows, seq_len)
  computed = {"padded": -(-len(sources) // rows) * rows * seq_len,
              "bucketed": sum(rows * width for _, width in batches)}
  results, outputs = {}, {}
  for name, compile_fn, decode in (("padded", padded_compile, padded),
                                   ("bucketed", bucketed_compile, lambda t: t(params, sources))):
    start = time.perf_counter()
    compiled = compile_fn()
    compile_s = time.perf_counter() - start
    decode(compiled)  # warm
    seconds = []
    for _ in range(args.reps):
      start = time.perf_counter()
      outputs[name] = decode(compiled)
      seconds.append(time.perf_counter() - start)
    hypotheses = [tokenizer.decode(row) for row in outputs[name]]
    results[name] = dict(compile_s=compile_s, seconds=statistics.median(seconds), runs=seconds,
                         sentences_per_s=len(sources) / statistics.median(seconds),
                         bleu=translation.bleu_score(hypotheses, references)[0],
                         real_source_fraction=real / computed[name])
    print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[name].items() if k != "runs"),
          flush=True)
  same = sum(np.array_equal(a, b) for a, b in zip(outputs["padded"], outputs["bucketed"]))
  widths = sorted({w for _, w in batches})
  summary = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, workdir=args.workdir,
                 sentences=len(sources), beam=config.eval.beam_size, batch=rows, seq_len=seq_len,
                 widths={w: sum(1 for _, b in batches if b == w) for w in widths},
                 mean_source_tokens=real / max(len(sources), 1), identical_fraction=same / max(len(sources), 1),
                 speedup=results["padded"]["seconds"] / results["bucketed"]["seconds"], **results)
  print(f"batches by width {summary['widths']}; identical outputs {same}/{len(sources)}; "
        f"speedup {summary['speedup']:.2f}x", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(summary, f, indent=1)


if __name__ == "__main__":
  main()
