"""Sentence pairs for translation: joint tokenizer text, filtering, and packed rows.

Training rows are packed: pairs are laid one after another into fixed-length
source and target rows, each sentence with its own segment id (0 = padding) and
positions restarting at 0, until the next pair does not fit. Packing keeps
padding small without dynamic shapes; the padding fraction is reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from tl_jax.data.atomic import publish_dir
from tl_jax.data.tokenizer import BOS_ID, EOS_ID, Tokenizer

FIELDS = ("src", "src_segments", "src_positions", "tgt_in", "tgt_out", "tgt_segments", "tgt_positions")
_ENCODE_BATCH = 1024


class JointText:
  """Both sides of a parallel source as documents, to train one joint tokenizer."""

  def __init__(self, source):
    self.source = source

  def documents(self, split: str):
    for src, tgt in self.source.pairs(split):
      yield src
      yield tgt

  def fingerprint(self) -> dict:
    return {"joint": self.source.fingerprint()}


@dataclasses.dataclass
class PairStats:
  pairs: int = 0
  too_long: int = 0
  bad_ratio: int = 0
  kept: int = 0

  def describe(self) -> str:
    return (f"{self.kept:,} of {self.pairs:,} pairs kept ({self.too_long:,} too long, "
            f"{self.bad_ratio:,} past the length ratio)")


def tokenize_pairs(source, split: str, tokenizer: Tokenizer, max_pairs: int, seq_len: int,
                   max_ratio: float):
  """(kept token-id pairs, their raw target texts, PairStats) of a split, filtered."""
  stats, kept, refs = PairStats(), [], []
  batch: list[tuple[str, str]] = []

  def flush():
    ids = tokenizer.encode([s for s, _ in batch] + [t for _, t in batch])
    n = len(batch)
    for (src_text, tgt_text), src, tgt in zip(batch, ids[:n], ids[n:]):
      stats.pairs += 1
      if len(src) + 1 > seq_len or len(tgt) + 1 > seq_len:
        stats.too_long += 1
      elif max(len(src), len(tgt)) > max_ratio * max(min(len(src), len(tgt)), 1):
        stats.bad_ratio += 1
      else:
        kept.append((src, tgt))
        refs.append(tgt_text)
    batch.clear()

  for pair in source.pairs(split):
    batch.append(pair)
    if len(batch) == _ENCODE_BATCH:
      flush()
    if max_pairs and stats.pairs + len(batch) >= max_pairs:
      break
  if batch:
    flush()
  stats.kept = len(kept)
  return kept, refs, stats


def pack(pairs: list[tuple[list[int], list[int]]], seq_len: int) -> dict[str, np.ndarray]:
  """Packs (source ids, target ids) pairs into rows of `seq_len`; see the module docstring."""
  rows = {k: np.zeros((max(len(pairs), 1), seq_len), np.int32) for k in FIELDS}
  r, src_fill, tgt_fill, segment = 0, 0, 0, 0
  for src, tgt in pairs:
    ls, lt = len(src) + 1, len(tgt) + 1
    if src_fill + ls > seq_len or tgt_fill + lt > seq_len:
      r, src_fill, tgt_fill, segment = r + 1, 0, 0, 0
    segment += 1
    rows["src"][r, src_fill:src_fill + ls] = src + [EOS_ID]
    rows["src_segments"][r, src_fill:src_fill + ls] = segment
    rows["src_positions"][r, src_fill:src_fill + ls] = np.arange(ls)
    rows["tgt_in"][r, tgt_fill:tgt_fill + lt] = [BOS_ID] + tgt
    rows["tgt_out"][r, tgt_fill:tgt_fill + lt] = tgt + [EOS_ID]
    rows["tgt_segments"][r, tgt_fill:tgt_fill + lt] = segment
    rows["tgt_positions"][r, tgt_fill:tgt_fill + lt] = np.arange(lt)
    src_fill, tgt_fill = src_fill + ls, tgt_fill + lt
  used = r + 1 if pairs else 0
  return {k: v[:used] for k, v in rows.items()}


def padding_fraction(rows: dict[str, np.ndarray]) -> float:
  """Share of target positions that are padding (the loss is computed on the rest)."""
  return float((rows["tgt_segments"] == 0).mean()) if rows["tgt_segments"].size else 0.0


class PackedPairs:
  """Random access to packed rows, in the interface the TrainLoader expects."""

  def __init__(self, rows: dict[str, np.ndarray], seq_len: int):
    self.rows = rows
    self.seq_len = seq_len
    self.num_sequences = rows["src"].shape[0]

  def get(self, indices) -> dict[str, np.ndarray]:
    return {k: v[np.asarray(indices)] for k, v in self.rows.items()}


def prepare_packed(source, split: str, tokenizer: Tokenizer, data, cache_dir: str):
  """(PackedPairs, PairStats) of a split, from the cache when the same data was packed before."""
  key = {"source": source.fingerprint(), "split": split, "tokenizer": tokenizer.sha256(),
         "max_pairs": data.max_train_pairs if split == "train" else data.max_eval_pairs,
         "seq_len": data.seq_len, "ratio": data.max_length_ratio}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  out_dir = os.path.join(cache_dir, "pairs", f"{split}-{digest}")

  def fill(tmp_dir: str):
    pairs, _, stats = tokenize_pairs(source, split, tokenizer, key["max_pairs"], data.seq_len,
                                     data.max_length_ratio)
    np.savez(os.path.join(tmp_dir, "rows.npz"), **pack(pairs, data.seq_len))
    with open(os.path.join(tmp_dir, "stats.json"), "w") as f:
      json.dump(dataclasses.asdict(stats), f)

  publish_dir(out_dir, fill)
  with np.load(os.path.join(out_dir, "rows.npz")) as npz:
    rows = {k: npz[k] for k in FIELDS}
  with open(os.path.join(out_dir, "stats.json")) as f:
    stats = PairStats(**json.load(f))
  return PackedPairs(rows, data.seq_len), stats
