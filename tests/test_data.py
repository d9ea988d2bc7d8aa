"""Tokenizer, packed caches, the loader and dynamic masking."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax import config as config_lib
from tl_jax.data import cache as token_cache
from tl_jax.data import tokenizer as tok
from tl_jax.data.loader import PackedSequences, TrainLoader, eval_batches
from tl_jax.data.masking import mask_tokens
from tl_jax.data.sources import make_source
from tl_jax.errors import UserError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  data = config_lib.load_preset("configs/mlm.py:tiny").data
  data.max_train_tokens = 100_000
  data.tokenizer_train_chars = 300_000
  data.vocab_size = 1000
  cache_dir = str(tmp_path_factory.mktemp("cache"))
  source = make_source(data)
  tokenizer = tok.cached_tokenizer(source, data, cache_dir)
  train = token_cache.prepare(source, "train", tokenizer, data.max_train_tokens, cache_dir)
  return data, cache_dir, source, tokenizer, train


def test_tokenizer_special_ids_and_round_trip(prepared):
  _, _, source, tokenizer, _ = prepared
  sp = tokenizer.sp
  assert [sp.id_to_piece(i) for i in range(tok.NUM_SPECIAL)] == ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
  assert tokenizer.vocab_size == 1000
  text = next(source.documents("eval"))
  ids = tokenizer.encode([text])[0]
  assert min(ids) >= tok.NUM_SPECIAL and tokenizer.decode(ids) == text


def test_caches_are_reused_not_rebuilt(prepared):
  data, cache_dir, source, tokenizer, train = prepared
  stamp = os.stat(os.path.join(train.directory, "tokens.bin")).st_mtime_ns
  again = tok.cached_tokenizer(source, data, cache_dir)
  assert again.path == tokenizer.path
  train2 = token_cache.prepare(source, "train", again, data.max_train_tokens, cache_dir)
  assert train2.directory == train.directory
  assert os.stat(os.path.join(train.directory, "tokens.bin")).st_mtime_ns == stamp
  # Another budget is another cache.
  other = token_cache.prepare(source, "train", again, 50_000, cache_dir)
  assert other.directory != train.directory and len(other) == 50_000


def test_cache_packs_documents_with_eos(prepared):
  _, _, source, tokenizer, train = prepared
  assert len(train) == 100_000
  docs = source.documents("train")
  first_two = tokenizer.encode([next(docs), next(docs)])
  expected = first_two[0] + [tok.EOS_ID] + first_two[1] + [tok.EOS_ID]
  np.testing.assert_array_equal(np.asarray(train.tokens[: len(expected)]), expected)


def test_loader_is_a_function_of_seed_and_step(prepared):
  *_, train = prepared
  seqs = PackedSequences(train, 64)
  a = TrainLoader(seqs, 16, seed=3)
  b = TrainLoader(seqs, 16, seed=3)
  np.testing.assert_array_equal(a.batch(7), b.batch(7))
  assert not np.array_equal(a.batch(7), a.batch(8))
  assert not np.array_equal(a.batch(7), TrainLoader(seqs, 16, seed=4).batch(7))
  assert a.batch(0).shape == (16, 64) and (a.batch(0)[:, 0] == tok.BOS_ID).all()
  # Resuming at step k yields exactly what an uninterrupted iteration yields at k.
  it = a.iterate(0, prefetch=2)
  uninterrupted = [next(it) for _ in range(6)]
  resumed = a.iterate(4, prefetch=2)
  for step, batch in (next(resumed), next(resumed)):
    np.testing.assert_array_equal(batch, uninterrupted[step][1])


def test_loader_covers_an_epoch_without_repeats(prepared):
  *_, train = prepared
  seqs = PackedSequences(train, 64)
  loader = TrainLoader(seqs, 16, seed=0)
  steps = seqs.num_sequences // 16
  firsts = {tuple(row) for s in range(steps) for row in loader.batch(s)}
  assert len(firsts) == steps * 16  # distinct sequences within one epoch


def test_a_batch_across_an_epoch_boundary_ends_one_permutation_and_starts_the_next(prepared):
  """Each row is the cache's tokens of the sequence the epoch's permutation names at that
  position, also where one batch holds the end of an epoch and the start of the next."""
  *_, train = prepared
  seqs = PackedSequences(train, 64)
  loader = TrainLoader(seqs, 7, seed=2)
  n = seqs.num_sequences
  step = n // 7  # starts in epoch 0; n is not a multiple of 7 here, so it ends in epoch 1
  assert n % 7, n
  positions = range(step * 7, step * 7 + 7)
  expected = [np.random.default_rng([2, p // n]).permutation(n)[p % n] for p in positions]
  np.testing.assert_array_equal(loader.indices(step), expected)
  for row, i in zip(loader.batch(step), expected):
    assert row[0] == tok.BOS_ID
    np.testing.assert_array_equal(row[1:], train.tokens[i * 63:(i + 1) * 63])


def test_hosts_get_disjoint_slices_of_the_global_batch(prepared):
  *_, train = prepared
  seqs = PackedSequences(train, 64)
  whole = TrainLoader(seqs, 16, seed=1).batch(5)
  parts = [TrainLoader(seqs, 16, seed=1, process_index=p, process_count=4).batch(5) for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  with pytest.raises(UserError, match="not divisible by the 3 processes"):
    TrainLoader(seqs, 16, seed=1, process_index=0, process_count=3)


def test_too_little_data_is_a_user_error(prepared):
  *_, train = prepared
  seqs = PackedSequences(train, 64)
  with pytest.raises(UserError, match="fewer than one batch"):
    TrainLoader(seqs, seqs.num_sequences + 1, seed=0)
  assert len(eval_batches(seqs, 16, 3)) == 3


def test_masking_rates_and_specials():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(tok.NUM_SPECIAL, 1000, (64, 128)), jnp.int32)
  tokens = tokens.at[:, 0].set(tok.BOS_ID).at[:, -1].set(tok.EOS_ID)
  inputs, targets, weights = mask_tokens(jax.random.key(0), tokens, 1000)
  inputs, weights = np.asarray(inputs), np.asarray(weights).astype(bool)
  assert not weights[:, [0, -1]].any(), "special tokens must never be selected"
  assert abs(weights[:, 1:-1].mean() - 0.15) < 0.01
  sel_in, sel_orig = inputs[weights], np.asarray(tokens)[weights]
  masked = sel_in == tok.MASK_ID
  kept = sel_in == sel_orig
  assert abs(masked.mean() - 0.8) < 0.03 and abs(kept.mean() - 0.1) < 0.03
  assert ((sel_in >= tok.NUM_SPECIAL) | masked).all()
  np.testing.assert_array_equal(inputs[~weights], np.asarray(tokens)[~weights])
  np.testing.assert_array_equal(np.asarray(targets), np.asarray(tokens))
  other, _, _ = mask_tokens(jax.random.key(1), tokens, 1000)
  assert not np.array_equal(np.asarray(other), inputs), "a new key must give a new mask"
