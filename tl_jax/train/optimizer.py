"""AdamW with RoBERTa's settings and a linear warmup / linear decay schedule.

With `train.schedule_horizon=seconds` the decay ends where the seconds budget does. Where that
is, in steps, is known only once the run's pace is: the optimizer state holds the end step
(`HorizonState`), 0 until the training loop fixes it (`with_horizon`) from the pace of its
first steps, and the learning rate is read from that state. Where the pace then changes (a
machine busy at first), the loop moves the end (`refit_horizon`): the decay goes on in a straight
line from the rate of that step to 0 at the new end, so the rate never jumps. Checkpoints carry
the state, so a resumed run decays to the same step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from tl_jax.config import TrainConfig


class HorizonState(NamedTuple):
  count: jax.Array  # updates applied, as optax's schedules count them
  end: jax.Array  # int32: the step at which the decay reaches 0; 0 = not fixed yet
  learning_rate: jax.Array  # float32: the one the last update used, for the logs
  # Where the end was last moved (0: never): from that step the rate falls in a straight line
  # from `anchor_scale` x the peak to 0 at `end`.
  anchor: jax.Array  # int32
  anchor_scale: jax.Array  # float32


def _horizon_warmup(train: TrainConfig, end):
  # The step the warmup ends at: the fraction of `end` once it is fixed, else warmup_steps.
  warmup = jnp.where((end > 0) & (train.warmup_fraction > 0), jnp.round(train.warmup_fraction * end),
                     train.warmup_steps)
  return jnp.maximum(warmup, 1.0)


def horizon_learning_rate(train: TrainConfig, step, end, anchor=0, anchor_scale=1.0):
  """Warmup, then linear decay to 0 at `end`; at the peak while `end` is 0 (not yet fixed).
  A warmup given as a fraction (`train.warmup_fraction`) is that fraction of `end` once it is
  fixed. From a step `anchor` > 0 where the end was set or moved, straight lines from
  `anchor_scale` x the peak: up to the peak where the warmup ends (if it is still ahead), then
  down to 0 at `end`."""
  warmup = _horizon_warmup(train, end)
  step = jnp.asarray(step, jnp.float32)
  falling = jnp.where(end > 0, (end - step) / jnp.maximum(end - warmup, 1.0), 1.0)
  scale = jnp.clip(jnp.minimum(step / warmup, falling), 0.0, 1.0)
  # From the anchor: still warming up, rise to the peak at `warmup`, then fall as above; past
  # the warmup, fall from the anchor's rate to 0 at `end`.
  rising = anchor_scale + (1.0 - anchor_scale) * (step - anchor) / jnp.maximum(warmup - anchor, 1.0)
  moved = jnp.where(anchor < warmup, jnp.where(step < warmup, rising, falling),
                    anchor_scale * (end - step) / jnp.maximum(end - anchor, 1))
  return train.learning_rate * jnp.where((anchor > 0) & (step >= anchor),
                                         jnp.clip(moved, 0.0, 1.0), scale)


def _scale_by_horizon(train: TrainConfig) -> optax.GradientTransformation:
  def init(params):
    return HorizonState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32),
                        jnp.zeros([], jnp.int32), jnp.ones([], jnp.float32))

  def update(updates, state, params=None):
    lr = horizon_learning_rate(train, state.count, state.end, state.anchor, state.anchor_scale)
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
    return updates, state._replace(count=optax.safe_int32_increment(state.count), learning_rate=lr)
  return optax.GradientTransformation(init, update)


def _is_horizon(s) -> bool:
  return isinstance(s, HorizonState)


def _horizon(opt_state) -> HorizonState | None:
  return next((s for s in jax.tree.leaves(opt_state, is_leaf=_is_horizon) if _is_horizon(s)), None)


def horizon_end(opt_state) -> int | None:
  """The step the decay ends at: None for a steps schedule, 0 while not yet fixed."""
  state = _horizon(opt_state)
  return None if state is None else int(jax.device_get(state.end))


def _replaced(opt_state, **values):
  # The horizon state with new scalar values, each placed as the old one was.
  def fix(s):
    if not _is_horizon(s):
      return s
    return s._replace(**{k: jax.device_put(jnp.asarray(v, getattr(s, k).dtype), getattr(s, k).sharding)
                         for k, v in values.items()})
  return jax.tree.map(fix, opt_state, is_leaf=_is_horizon)


def with_horizon(opt_state, train: TrainConfig, end: int):
  """`opt_state` with the decay's end fixed at step `end`. A warmup that is a fraction of `end`
  and not yet over goes on from the rate this step has reached (`refit_horizon`), not from
  where that fraction would have put it; one already over (a fraction smaller than the share of
  the budget that fixes the end) gives way to the decay at once."""
  count = int(jax.device_get(_horizon(opt_state).count))
  if train.warmup_fraction > 0 and count < float(_horizon_warmup(train, end)):
    return refit_horizon(opt_state, train, end)
  return _replaced(opt_state, end=end)


def refit_horizon(opt_state, train: TrainConfig, end: int):
  """`opt_state` with the decay's end moved to step `end`: from the next update on, the rate
  falls in a straight line from the one that update would have used to 0 at `end`."""
  state = jax.device_get(_horizon(opt_state))
  rate = horizon_learning_rate(train, state.count, state.end, state.anchor, state.anchor_scale)
  return _replaced(opt_state, end=end, anchor=int(state.count),
                   anchor_scale=float(rate) / train.learning_rate)


def applied_learning_rate(opt_state, scheduled):
  """The learning rate an update just used: `scheduled` (the steps schedule's value), or the
  one a seconds horizon recorded in `opt_state`."""
  state = _horizon(opt_state)
  return scheduled if state is None else state.learning_rate


def schedule(train: TrainConfig) -> optax.Schedule:
  if train.schedule == "inverse_sqrt":  # Vaswani et al.: linear warmup, then 1/sqrt(step)
    warmup = max(train.warmup_steps, 1)
    return lambda step: train.learning_rate * jnp.minimum(
        (step + 1) / warmup, jnp.sqrt(warmup / jnp.maximum(step + 1, 1)))
  decay_steps = train.decay_steps or train.max_steps
  steps = round(train.warmup_fraction * decay_steps) if train.warmup_fraction > 0 else train.warmup_steps
  warmup = min(steps, decay_steps)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, train.learning_rate, max(warmup, 1)),
       optax.linear_schedule(train.learning_rate, 0.0, max(decay_steps - warmup, 1))],
      boundaries=[warmup])


def _decay_mask(params):
  # No weight decay on biases and LayerNorm parameters (the 1-D leaves), as in RoBERTa.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def optimizer(train: TrainConfig) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(train.grad_clip)] if train.grad_clip > 0 else []
  if train.schedule_horizon == "seconds":  # optax.adamw's chain, its schedule read from the state
    parts.append(optax.chain(
        optax.scale_by_adam(b1=train.b1, b2=train.b2, eps=train.eps, mu_dtype=jnp.dtype(train.mu_dtype)),
        optax.add_decayed_weights(train.weight_decay, _decay_mask), _scale_by_horizon(train)))
  else:
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
