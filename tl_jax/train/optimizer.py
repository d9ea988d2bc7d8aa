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
  return optax.chain(*parts)
