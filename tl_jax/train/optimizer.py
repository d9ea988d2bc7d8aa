"""AdamW with RoBERTa's settings and a linear warmup / linear decay schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from tl_jax.config import TrainConfig


def schedule(train: TrainConfig) -> optax.Schedule:
  if train.schedule == "inverse_sqrt":  # Vaswani et al.: linear warmup, then 1/sqrt(step)
    warmup = max(train.warmup_steps, 1)
    return lambda step: train.learning_rate * jnp.minimum(
        (step + 1) / warmup, jnp.sqrt(warmup / jnp.maximum(step + 1, 1)))
  decay_steps = train.decay_steps or train.max_steps
  warmup = min(train.warmup_steps, decay_steps)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, train.learning_rate, max(warmup, 1)),
       optax.linear_schedule(train.learning_rate, 0.0, max(decay_steps - warmup, 1))],
      boundaries=[warmup])


def _decay_mask(params):
  # No weight decay on biases and LayerNorm parameters (the 1-D leaves), as in RoBERTa.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def optimizer(train: TrainConfig) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(train.grad_clip)] if train.grad_clip > 0 else []
  parts.append(optax.adamw(schedule(train), b1=train.b1, b2=train.b2, eps=train.eps,
                           weight_decay=train.weight_decay, mask=_decay_mask,
                           mu_dtype=jnp.dtype(train.mu_dtype)))
  tx = optax.chain(*parts)
  return skip_nonfinite(tx) if train.on_nonfinite == "skip" else tx


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def skip_nonfinite(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx`, except that a step whose gradients (or resulting parameters) are not finite changes
  nothing: zero updates, the optimizer state kept. Decided on device, inside the jitted step.

  Unlike optax.apply_if_finite, the state is `tx`'s own, so a run can switch between
  train.on_nonfinite=stop and skip on resume. Adam's step count is part of the kept state,
  which is how `skipped_steps` counts them (see applied_updates).
  """
  def update(grads, state, params=None):
    updates, new_state = tx.update(grads, state, params)
    ok = _all_finite(grads)
    if params is not None:  # an update can overflow finite parameters too
      ok &= _all_finite(optax.apply_updates(params, updates))
    updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), updates)
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    return updates, new_state
  return optax.GradientTransformation(tx.init, update)


def applied_updates(opt_state) -> jax.Array:
  """How many updates the optimizer applied: Adam's count, which a skipped step leaves alone
  (the train state's `step` counts every batch)."""
  is_adam = lambda s: isinstance(s, optax.ScaleByAdamState)
  return next(s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)).count
