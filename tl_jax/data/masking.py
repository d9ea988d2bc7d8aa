"""RoBERTa's dynamic masking, on device: a fresh mask each step from (rng, step)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tl_jax.data.tokenizer import MASK_ID, NUM_SPECIAL


def mask_tokens(rng: jax.Array, tokens: jax.Array, vocab_size: int, mask_prob: float = 0.15,
                mask_token_frac: float = 0.8, random_token_frac: float = 0.1):
  """Selects `mask_prob` of the non-special tokens as targets and corrupts the inputs.

  Of the selected tokens, `mask_token_frac` become `<mask>`, `random_token_frac`
  a random ordinary token, the rest stay. Returns (inputs, targets, weights):
  weights are 1.0 at selected positions, the only ones the loss counts.
  """
  select_rng, action_rng, random_rng = jax.random.split(rng, 3)
  maskable = tokens >= NUM_SPECIAL
  selected = maskable & (jax.random.uniform(select_rng, tokens.shape) < mask_prob)
  action = jax.random.uniform(action_rng, tokens.shape)
  to_mask = selected & (action < mask_token_frac)
  to_random = selected & (action >= mask_token_frac) & (action < mask_token_frac + random_token_frac)
  random_tokens = jax.random.randint(random_rng, tokens.shape, NUM_SPECIAL, vocab_size, tokens.dtype)
  inputs = jnp.where(to_mask, MASK_ID, jnp.where(to_random, random_tokens, tokens))
  return inputs, tokens, selected.astype(jnp.float32)


def max_predictions(seq_len: int, mask_prob: float, setting: int = -1) -> int:
  """How many positions per row the MLM head scores; 0 means every position.

  `setting` > 0 is taken as given; -1 picks a bound that a row's number of selected
  tokens (binomial) exceeds with probability about 1e-9: mean + 6 standard
  deviations, rounded up to a multiple of 8. Tokens selected beyond the bound keep
  their corrupted input but are not scored.
  """
  if setting >= 0:
    return min(setting, seq_len)
  mean = mask_prob * seq_len
  bound = mean + 6.0 * math.sqrt(seq_len * mask_prob * (1.0 - mask_prob))
  return min(seq_len, max(8, 8 * math.ceil(bound / 8)))


def predicted_positions(weights: jax.Array, k: int):
  """([B, k] positions, their weights): the selected positions of each row first, in order."""
  seq_len = weights.shape[1]
  score = weights * (seq_len - jnp.arange(seq_len, dtype=weights.dtype))
  _, positions = jax.lax.top_k(score, k)
  return positions, jnp.take_along_axis(weights, positions, axis=1)
