"""Tokens a second of the synthetic language's packed cache: the serial path against workers.

  python bench/synthetic_speed.py [--tokens 4000000] [--version 4] [--repeats 2] [--workers 0]
                                  [--paths serial,workers,generate]

Builds the train token cache (generation + sentencepiece + packing, what pretraining does
before its first step) into a fresh directory per run, alternating the two paths so that a
noisy machine slows both alike:
  serial   the documents tokenized in this process (the cache's loop for any text source)
  workers  SyntheticSource.token_batches: shards generated and tokenized in worker processes
  generate the generator alone, in this process, in CPU seconds: tokens a second of one core
           (the documents are tokenized after each timed chunk, untimed, only to count tokens)
serial and workers give the same tokens (checked on the first run). Workers 0 = one a core.
"""

import argparse
import itertools
import os
import tempfile
import time

import numpy as np

from tl_jax.config import DataConfig
from tl_jax.data import cache as token_cache
from tl_jax.data.sources import SyntheticSource
from tl_jax.data.tokenizer import cached_tokenizer


def _generate(source, tokenizer, tokens: int) -> tuple[int, int, float]:
  """(tokens, words, CPU seconds) of generating `source`'s train documents, in chunks of 1000,
  until they hold `tokens` tokens (each document's EOS included, as in the cache)."""
  documents = source.documents("train")
  seen, words, seconds = 0, 0, 0.0
  while seen < tokens:
    t = time.process_time()
    chunk = list(itertools.islice(documents, 1000))
    seconds += time.process_time() - t
    words += sum(doc.count(" ") + 1 for doc in chunk)
    seen += sum(len(ids) + 1 for ids in tokenizer.encode(chunk))
  return seen, words, seconds


class _SerialOnly:
  """The source without token_batches: the cache tokenizes its documents itself."""

  def __init__(self, source):
    self._source = source

  def documents(self, split):
    return self._source.documents(split)

  def fingerprint(self):
    return dict(self._source.fingerprint(), path="serial")  # its own cache entry


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--tokens", type=int, default=4_000_000)
  parser.add_argument("--version", type=int, default=4)
  parser.add_argument("--words", type=int, default=3000)
  parser.add_argument("--vocab", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--workers", type=int, default=0)
  parser.add_argument("--paths", default="serial,workers")
  args = parser.parse_args()
  source = SyntheticSource(seed=0, num_words=args.words, version=args.version,
                           workers=args.workers)
  paths = {"serial": _SerialOnly(source), "workers": source}
  with tempfile.TemporaryDirectory() as tmp:
    data = DataConfig(vocab_size=args.vocab, synthetic_version=args.version)
    t = time.perf_counter()
    tokenizer = cached_tokenizer(source, data, tmp)
    print(f"tokenizer: {time.perf_counter() - t:.1f}s; cores {os.cpu_count()}", flush=True)
    first = {}
    for repeat in range(args.repeats):
      for name in args.paths.split(","):
        if name == "generate":
          tokens, words, seconds = _generate(source, tokenizer, args.tokens)
          print(f"v{args.version} generate repeat {repeat}: {tokens:,} tokens ({words:,} words) in "
                f"{seconds:.1f} CPU s = {tokens / seconds / 1e6:.2f}M tokens/s a core", flush=True)
          continue
        with tempfile.TemporaryDirectory() as out:
          t = time.perf_counter()
          cache = token_cache.prepare(paths[name], "train", tokenizer, args.tokens, out)
          seconds = time.perf_counter() - t
          if repeat == 0:
            first[name] = np.array(cache.tokens[:1_000_000])
          print(f"v{args.version} {name:8s} repeat {repeat}: {len(cache):,} tokens in "
                f"{seconds:.1f}s = {len(cache) / seconds / 1e6:.2f}M tokens/s", flush=True)
    if len(first) == 2:
      same = np.array_equal(*first.values())
      print(f"same tokens on both paths: {same}")
      assert same


if __name__ == "__main__":
  main()
