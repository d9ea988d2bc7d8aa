"""Pure train and eval steps for masked-LM pretraining.

Both are functions of arrays only (configs are bound with functools.partial
before jit), so one compiled executable serves the whole run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from tl_jax.config import DataConfig
from tl_jax.data.masking import mask_tokens
from tl_jax.train.state import TrainState


def _masked_lm_sums(model, params, inputs, targets, weights, deterministic, dropout_rng=None):
  rngs = None if deterministic else {"dropout": dropout_rng}
  logits = model.apply({"params": params}, inputs, deterministic=deterministic, rngs=rngs)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.sum(ce * weights), jnp.sum(weights)


def train_step(state: TrainState, tokens: jax.Array, *, model, tx, schedule, data: DataConfig,
               vocab_size: int, grad_accum: int):
  """One optimizer step on a global batch [B, S] of token ids; masks drawn on device.

  With `grad_accum` > 1 the batch is split into micro-batches whose summed
  gradients are normalised once by the total number of masked tokens, so the
  update equals that of the whole batch at once.
  """
  step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  mask_rng, dropout_rng = jax.random.split(step_rng)
  # Masks are drawn for the whole batch, so they do not depend on how it is split.
  masked = mask_tokens(mask_rng, tokens, vocab_size, data.mask_prob, data.mask_token_frac,
                       data.random_token_frac)
  micro = jax.tree.map(lambda x: x.reshape((grad_accum, -1) + x.shape[1:]), masked)

  def micro_grads(i, inputs, targets, weights):
    loss_fn = lambda p: _masked_lm_sums(model, p, inputs, targets, weights, False,
                                        jax.random.fold_in(dropout_rng, i))
    (loss_sum, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return loss_sum, count, grads

  if grad_accum == 1:
    loss_sum, count, grads = micro_grads(0, *masked)
  else:
    def body(carry, xs):
      return jax.tree.map(jnp.add, carry, micro_grads(*xs)), None
    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
    (loss_sum, count, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), *micro))

  count = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / count, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss_sum / count, "grad_norm": optax.tree.norm(grads),
             "learning_rate": schedule(state.step), "masked_tokens": count}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def eval_step(params, tokens: jax.Array, batch_index: jax.Array, *, model, data: DataConfig,
              vocab_size: int, seed: int):
  """(sum of masked-token cross-entropy, number of masked tokens) with masks fixed by (seed, batch)."""
  rng = jax.random.fold_in(jax.random.key(seed), batch_index)
  inputs, targets, weights = mask_tokens(rng, tokens, vocab_size, data.mask_prob,
                                         data.mask_token_frac, data.random_token_frac)
  return _masked_lm_sums(model, params, inputs, targets, weights, True)
