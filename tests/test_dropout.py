"""Behavioural tests of tl_jax/models/dropout.py: 16-bit dropout draws (model.dropout_bits)."""

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tl_jax import config as config_lib
from tl_jax.config import ModelConfig, TrainConfig
from tl_jax.errors import UserError
from tl_jax.models.dropout import DRAWS, Dropout16, draws16, dropout
from tl_jax.models.encoder import MaskedLM
from tl_jax.tasks.masked_lm import train_step
from tl_jax.train.optimizer import optimizer, schedule
from tl_jax.train.state import init_state

VOCAB = 100


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_draws_are_uniform_and_the_four_of_a_hash_independent(impl):
  draws = np.asarray(draws16(jax.random.key(0, impl=impl), (64, 4096)), np.int64)
  assert draws.shape == (64, 4096) and draws.min() >= 0 and draws.max() < DRAWS
  # 16 equal bins of the 16-bit range: chi-square with 15 degrees of freedom, p > 0.001
  counts = np.bincount(draws.ravel() >> 12, minlength=16)
  expected = draws.size / 16
  assert ((counts - expected) ** 2 / expected).sum() < 37.7
  # Each hash's four draws sit side by side along the last axis: neighbours within a group and
  # across groups are uncorrelated (|r| under 4.5 standard errors of 1/sqrt(n)).
  groups = draws.reshape(-1, 4).astype(np.float64)
  limit = 4.5 / np.sqrt(len(groups))
  for a, b in itertools.combinations(range(4), 2):
    assert abs(np.corrcoef(groups[:, a], groups[:, b])[0, 1]) < limit
  assert abs(np.corrcoef(groups[:-1, 3], groups[1:, 0])[0, 1]) < limit


def test_draws_follow_the_key_and_fill_odd_widths():
  key = jax.random.key(1)
  np.testing.assert_array_equal(draws16(key, (3, 10)), draws16(key, (3, 10)))
  assert not np.array_equal(draws16(key, (3, 10)), draws16(jax.random.key(2), (3, 10)))
  # Widths that are not a multiple of four take the first draws of the last hash.
  np.testing.assert_array_equal(draws16(key, (5,)), draws16(key, (8,))[:5])


def test_draws_are_the_same_however_the_array_is_sharded():
  """The counters are iotas, so the SPMD partitioner makes each shard's draws where it lives;
  sharded along the batch and along the width they equal the one-device draws."""
  mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  key = jax.random.key(7)
  whole = np.asarray(draws16(key, (8, 6, 32)))
  for spec in (P("a", None, "b"), P(("a", "b"), None, None)):
    sharded = jax.jit(lambda k: draws16(k, (8, 6, 32)), out_shardings=NamedSharding(mesh, spec))(key)
    np.testing.assert_array_equal(np.asarray(sharded), whole)


def test_dropout16_drops_at_the_rounded_rate_and_keeps_the_expectation():
  x = jnp.ones((32, 128, 256), jnp.float32)
  rate = 0.1
  y = np.asarray(Dropout16(rate).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
  threshold = round(rate * DRAWS)
  keep = (DRAWS - threshold) / DRAWS
  dropped = (y == 0).mean()
  assert abs(dropped - threshold / DRAWS) < 5 * np.sqrt(rate * (1 - rate) / y.size)
  np.testing.assert_allclose(y[y != 0], 1 / keep, rtol=1e-6)
  assert abs(y.mean() - 1) < 5 * np.sqrt((1 / keep - 1) / y.size)
  # The gradient is the same mask and scale.
  g = jax.grad(lambda v: jnp.sum(Dropout16(rate).apply({}, v, deterministic=False,
                                                       rngs={"dropout": jax.random.key(0)})))(x)
  np.testing.assert_array_equal(np.asarray(g), y)
  # Off when deterministic or at rate 0
  assert Dropout16(rate).apply({}, x, deterministic=True) is x
  np.testing.assert_array_equal(Dropout16(0.0).apply({}, x, deterministic=False), x)


def test_dropout_bits_picks_the_layer_and_32_stays_flax():
  assert isinstance(dropout(ModelConfig(dropout=0.1)), nn.Dropout)
  assert isinstance(dropout(ModelConfig(dropout=0.1, dropout_bits=16)), Dropout16)


def _hashed(jaxpr, found: list) -> list:
  """(primitive, shape) of every threefry hashing in `jaxpr` and the jaxprs inside it: jax's
  `random_bits` (one hash an element under partitionable threefry) and `Dropout16`'s direct
  `threefry2x32`."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "random_bits":
      found.append(("random_bits", tuple(eqn.params["shape"])))
    elif eqn.primitive.name == "threefry2x32":
      found.append(("threefry2x32", tuple(eqn.outvars[0].aval.shape)))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _hashed(inner, found)
  return found


def _masked_lm(bits: int, train: TrainConfig, tokens, scan_layers: bool = False):
  """(state, step) of a 2 x 32 masked LM with dropout 0.1 drawn as `bits` says."""
  model = MaskedLM(ModelConfig(num_layers=2, d_model=32, num_heads=2, max_len=32, dropout=0.1,
                               dtype="float32", dropout_bits=bits, scan_layers=scan_layers), VOCAB)
  tx = optimizer(train)
  state = nn.meta.unbox(init_state(model, tx, 0, tokens[:1]))
  step = lambda s, t: train_step(s, t, model=model, tx=tx, schedule=schedule(train),
                                 data=config_lib.DataConfig(), vocab_size=VOCAB, grad_accum=1)
  return state, step


def test_a_train_step_hashes_a_quarter_as_many_elements():
  """The promise behind model.dropout_bits=16: in a masked LM's train step (embedding dropout
  and two residual dropouts a layer), dropout hashes a quarter of the elements that flax's
  dropout hashes; the masking's own draws ([batch, length]) stay jax's."""
  assert jax.config.jax_threefry_partitionable  # else random_bits hashes half an element each
  tokens = jax.random.randint(jax.random.key(3), (8, 32), 5, VOCAB)
  hashed = {}
  for bits in (32, 16):
    state, step = _masked_lm(bits, TrainConfig(warmup_steps=0, max_steps=10), tokens)
    hashed[bits] = sorted(_hashed(jax.make_jaxpr(step)(state, tokens).jaxpr, []))
  activations = lambda bits: [math.prod(shape) for _, shape in hashed[bits] if len(shape) == 3]
  assert activations(32) == [8 * 32 * 32] * 5  # embeddings, then two a layer
  assert activations(16) == [8 * 32 * 32 // 4] * 5
  assert [h for h in hashed[16] if len(h[1]) == 2] == [h for h in hashed[32] if len(h[1]) == 2]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_masked_lm_trains_with_16_bit_dropout(scan_layers):
  """Dropout on every path the encoder has (embeddings, each residual; layers unrolled or
  scanned with one key a layer): the loss falls, and the masks differ from 32-bit dropout's."""
  # Rows that count up from a random start: a masked token follows from its neighbours.
  starts = jax.random.randint(jax.random.key(3), (8, 1), 0, VOCAB - 5)
  tokens = 5 + (starts + jnp.arange(32)) % (VOCAB - 5)
  train = TrainConfig(warmup_steps=0, max_steps=60, learning_rate=1e-2)
  losses = {}
  for bits in (32, 16):
    state, step = _masked_lm(bits, train, tokens, scan_layers=scan_layers)
    step = jax.jit(step)
    losses[bits] = []
    for _ in range(60):
      state, metrics = step(state, tokens)
      losses[bits].append(float(metrics["loss"]))
  first, last = np.mean(losses[16][:5]), np.mean(losses[16][-5:])
  assert np.isfinite(losses[16]).all() and last < first - 0.8, (first, last)
  assert abs(last - np.mean(losses[32][-5:])) < 0.3, losses  # as fast as with 32-bit dropout
  assert losses[16][0] != losses[32][0]  # other masks, so the step differs


def test_config_refuses_other_bit_counts_and_a_rate_that_rounds_to_one():
  config = config_lib.Config()
  config.model.dropout_bits = 8
  with pytest.raises(UserError, match=r"model\.dropout_bits=8 is not one of 32, 16"):
    config_lib.validate(config)
  config.model.dropout_bits, config.model.dropout = 16, 0.999995
  with pytest.raises(UserError, match=r"rounds to 1 on 16-bit draws.*model\.dropout_bits=32"):
    config_lib.validate(config)
