"""RoBERTa's dynamic masking, on device: a fresh mask each step from (rng, step)."""

from __future__ import annotations

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
