"""Packed token caches: a source's text tokenized once, as one flat token stream.

Documents are tokenized, each followed by `</s>`, and concatenated (RoBERTa's
FULL-SENTENCES packing: sequences run across document boundaries). A cache is a
directory holding `tokens.bin` (raw little-endian uint16 or int32) and
`meta.json`; its name is a hash of the source fingerprint, the tokenizer and the
token budget, so asking again for the same data reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable

import numpy as np

from tl_jax.data.atomic import publish_dir
from tl_jax.data.tokenizer import EOS_ID, Tokenizer
from tl_jax.errors import UserError

_ENCODE_BATCH = 512  # documents per sentencepiece call
# A cache that takes minutes to build (hundreds of millions of synthetic tokens) says how far it
# has got this often, so a slow or stuck preparation shows in the log.
PROGRESS_SECONDS = 30.0


def _dtype_for(vocab_size: int):
  return np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.int32


def _write(source, split: str, tokenizer: Tokenizer, max_tokens: int, out_dir: str,
           progress: Callable[[str], None] | None = None) -> int:
  dtype = _dtype_for(tokenizer.vocab_size)
  count = 0
  started = last_report = time.perf_counter()

  def report():
    nonlocal last_report
    now = time.perf_counter()
    if progress is not None and now - last_report >= PROGRESS_SECONDS:
      last_report = now
      share = f" of {max_tokens:,} ({100 * count / max_tokens:.0f}%)" if max_tokens else ""
      progress(f"data: {count:,}{share} {split} tokens written after {now - started:.0f}s")
  # A source that tokenizes itself (the synthetic one, in worker processes) gives the same
  # stream as the loop below, faster; it is unbounded, so a budget is required.
  token_batches = getattr(source, "token_batches", None)
  if token_batches is not None and max_tokens:
    with open(os.path.join(out_dir, "tokens.bin"), "wb") as f:
      batches = token_batches(split, tokenizer, EOS_ID, max_tokens)
      try:
        for flat in batches:
          flat = flat[: max_tokens - count].astype(dtype)
          f.write(flat.tobytes())
          count += flat.size
          if count >= max_tokens:
            break
          report()
      finally:
        batches.close()  # stops the source's workers now, not at garbage collection
    return count
  with open(os.path.join(out_dir, "tokens.bin"), "wb") as f:
    batch = []
    def flush():
      nonlocal count
      pieces = []
      for ids in tokenizer.encode(batch):
        pieces.append(np.asarray(ids + [EOS_ID], dtype=dtype))
      flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
      if max_tokens:
        flat = flat[: max_tokens - count]
      f.write(flat.tobytes())
      count += flat.size
      batch.clear()
      report()
    for doc in source.documents(split):
      batch.append(doc)
      if len(batch) == _ENCODE_BATCH:
        flush()
        if max_tokens and count >= max_tokens:
          break
    if batch and not (max_tokens and count >= max_tokens):
      flush()
  return count


class TokenCache:
  """Read-only view of one split's token stream (memory-mapped)."""

  def __init__(self, directory: str):
    self.directory = directory
    with open(os.path.join(directory, "meta.json")) as f:
      self.meta = json.load(f)
    self.tokens = np.memmap(os.path.join(directory, "tokens.bin"), dtype=self.meta["dtype"], mode="r",
                            shape=(self.meta["num_tokens"],))

  def __len__(self) -> int:
    return self.tokens.shape[0]


def prepare(source, split: str, tokenizer: Tokenizer, max_tokens: int, cache_dir: str,
            progress: Callable[[str], None] | None = None) -> TokenCache:
  """Returns the cache of `split`, building it first if no identical one exists; a build
  reports how far it has got to `progress` every PROGRESS_SECONDS."""
  key = {"source": source.fingerprint(), "split": split, "tokenizer": tokenizer.sha256(),
         "max_tokens": max_tokens}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  out_dir = os.path.join(cache_dir, "tokens", f"{split}-{digest}")

  def fill(tmp_dir: str):
    count = _write(source, split, tokenizer, max_tokens, tmp_dir, progress)
    if count == 0:
      raise UserError(f"the {split} split of the data source holds no text; check the data settings.")
    meta = dict(key, num_tokens=count, dtype=np.dtype(_dtype_for(tokenizer.vocab_size)).name,
                vocab_size=tokenizer.vocab_size)
    with open(os.path.join(tmp_dir, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)

  publish_dir(out_dir, fill)
  return TokenCache(out_dir)


def default_cache_dir(configured: str) -> str:
  return os.path.expanduser(configured or os.environ.get("TL_JAX_CACHE") or "~/.cache/tl_jax")
