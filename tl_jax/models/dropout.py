"""Dropout, and where its random bits come from (`model.dropout_bits`).

flax's `nn.Dropout` draws a float32 uniform for each element, and jax's (partitionable)
threefry spends one hash on each: the hash makes 64 bits and 32 of them are thrown away. A hash
is 20 rounds of add, rotate and xor on two 32-bit words, integer work inside the train step's
elementwise passes over every [tokens, width] tensor a layer drops out. `Dropout16` takes four
16-bit draws from each hash's 64 bits instead, so the step hashes a quarter as often; the price
is a rate rounded to a multiple of 1/65536 (0.1 becomes 0.100006).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.random import threefry2x32_p

from tl_jax.config import ModelConfig

DRAWS = 1 << 16  # values a 16-bit draw takes


def dropout(config: ModelConfig) -> nn.Module:
  """The model's dropout layer: flax's, or `Dropout16` where model.dropout_bits=16."""
  if config.dropout_bits == 16:
    return Dropout16(config.dropout)
  return nn.Dropout(config.dropout)


def draws16(rng, shape: tuple[int, ...]):
  """Independent uniform integers in [0, 65536) of `shape` (uint32), four per threefry hash.

  Each group of four along the last axis comes from one hash of its index, so the draws stay
  partitionable along every axis, as jax's own partitionable threefry is. A key of another
  PRNG implementation (rbg) falls back to `jax.random.bits`, two draws per 32-bit word.
  """
  *lead, n = shape
  words = (*lead, -(-n // 4))  # one hash (two 32-bit words) per four draws
  if math.prod(words) >= 1 << 32:
    raise ValueError(f"{shape} needs more hashes than a 32-bit counter numbers; split the array.")
  if str(jax.random.key_impl(rng)) == "threefry2x32":
    index = jnp.zeros(words, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(words))):
      index = index + lax.broadcasted_iota(jnp.uint32, words, axis) * jnp.uint32(stride)
      stride *= words[axis]
    key = jax.random.key_data(rng)
    high, low = threefry2x32_p.bind(key[0], key[1], jnp.zeros_like(index), index)
  else:
    pair = jax.random.bits(rng, (*words, 2), jnp.uint32)
    high, low = pair[..., 0], pair[..., 1]
  mask = jnp.uint32(DRAWS - 1)
  draws = jnp.stack([high & mask, high >> 16, low & mask, low >> 16], axis=-1)
  return draws.reshape(*lead, -1)[..., :n]


class Dropout16(nn.Module):
  """Inverted dropout on 16-bit draws (`draws16`): an element is dropped where its draw is
  below round(rate * 65536), and the kept ones are divided by the keep probability that
  threshold gives, so the expected output is the input, as with flax's `nn.Dropout`."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    threshold = round(self.rate * DRAWS)
    if deterministic or threshold == 0:
      return x
    keep = draws16(self.make_rng("dropout"), x.shape) >= threshold
    return jnp.where(keep, x / ((DRAWS - threshold) / DRAWS), jnp.zeros((), x.dtype))
