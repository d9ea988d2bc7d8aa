"""Batches of packed sequences, a pure function of (seed, step, host).

Sequence i of a cache is `<s>` followed by tokens [i*(S-1), (i+1)*(S-1)) of the
stream. Global batch `step` holds the sequences at positions
[step*B, (step+1)*B) of an endless shuffled order (a fresh permutation per
epoch, seeded by (seed, epoch)); each host builds only its own rows. Resuming
therefore needs nothing but the step.
"""

from __future__ import annotations

import functools
import queue
import threading
from typing import Iterator

import numpy as np

from tl_jax.data.cache import TokenCache
from tl_jax.data.tokenizer import BOS_ID
from tl_jax.errors import UserError


class PackedSequences:
  """Random access to the fixed-length sequences of a token cache."""

  def __init__(self, cache: TokenCache, seq_len: int):
    self.tokens = cache.tokens
    self.seq_len = seq_len
    self.num_sequences = len(cache) // (seq_len - 1)

  def get(self, indices: np.ndarray) -> np.ndarray:
    # One gather, not a Python loop over rows: the loader thread holds the GIL while it builds a
    # batch, and the smallest models take a step every few milliseconds.
    body = self.seq_len - 1
    out = np.empty((len(indices), self.seq_len), np.int32)
    out[:, 0] = BOS_ID
    starts = np.asarray(indices, np.int64)[:, None] * body
    out[:, 1:] = self.tokens[starts + np.arange(body)]
    return out


class TrainLoader:
  """Deterministic, resumable, host-sharded training batches."""

  def __init__(self, sequences: PackedSequences, global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if sequences.num_sequences < global_batch:
      raise UserError(f"the training data holds {sequences.num_sequences} sequences of "
                      f"{sequences.seq_len} tokens, fewer than one batch of {global_batch}; add data "
                      "(data.max_train_tokens) or lower train.batch_size / data.seq_len.")
    if global_batch % process_count:
      raise UserError(f"train.batch_size={global_batch} is not divisible by the {process_count} "
                      "processes; each host must feed an equal slice.")
    self.sequences = sequences
    self.global_batch = global_batch
    self.seed = seed
    per_host = global_batch // process_count
    self.rows = slice(process_index * per_host, (process_index + 1) * per_host)

  @functools.lru_cache(maxsize=2)
  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.sequences.num_sequences)

  def indices(self, step: int) -> np.ndarray:
    """Which sequences make this host's rows of global batch `step`."""
    n = self.sequences.num_sequences
    positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch)[self.rows]
    epochs = positions // n  # a batch spans at most two epochs (it holds no more than n rows)
    out = np.empty(len(positions), np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      out[here] = self._permutation(int(epoch))[positions[here] % n]
    return out

  def batch(self, step: int) -> np.ndarray:
    """This host's rows of global batch `step`, int32 [B/processes, S]."""
    return self.sequences.get(self.indices(step))

  def iterate(self, start_step: int, prefetch: int = 2) -> Iterator[tuple[int, np.ndarray]]:
    """(step, batch) from `start_step` on, built `prefetch` batches ahead in a thread."""
    if prefetch <= 0:
      step = start_step
      while True:
        yield step, self.batch(step)
        step += 1
    buffer: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work():
      step = start_step
      while not stop.is_set():
        item = (step, self.batch(step))
        while not stop.is_set():
          try:
            buffer.put(item, timeout=0.1)
            break
          except queue.Full:
            pass
        step += 1

    thread = threading.Thread(target=work, daemon=True, name="tl_jax-loader")
    thread.start()
    try:
      while True:
        yield buffer.get()
    finally:
      stop.set()


def eval_batches(sequences: PackedSequences, batch_size: int, num_batches: int) -> list[np.ndarray]:
  """The first `num_batches` full batches of the eval split, the same every time."""
  available = sequences.num_sequences // batch_size
  if available == 0:
    raise UserError(f"the eval data holds {sequences.num_sequences} sequences, fewer than one eval "
                    f"batch of {batch_size}; add eval data or lower eval.batch_size.")
  count = min(num_batches, available)
  return [sequences.get(np.arange(b * batch_size, (b + 1) * batch_size)) for b in range(count)]
