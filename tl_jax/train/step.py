"""The part of every train step that no task changes: gradient accumulation and the update.

Every step is a function of arrays only (configs are bound with functools.partial
before jit), so one compiled executable serves the whole run. Each task (tl_jax/tasks/)
supplies a function returning (sum of per-token losses, number of tokens) for a
micro-batch; the cross-entropy here serves all of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from tl_jax.train.optimizer import applied_learning_rate
from tl_jax.train.state import TrainState, mask_tree


def step_rng(state: TrainState) -> jax.Array:
  """The key of this step: masks and dropout depend on (seed, step) only, so resumes are exact."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def accumulate_and_update(state: TrainState, micro_batches, loss_sums, *, tx, schedule,
                          grad_accum: int):
  """One optimizer step from `grad_accum` micro-batches (leading axis of every leaf).

  `loss_sums(params, i, micro_batch) -> (loss_sum, token_count)`. Summed gradients
  are normalised once by the total token count, so the update equals that of the
  whole batch at once.
  """
  def grads_of(i, batch):
    (loss_sum, count), grads = jax.value_and_grad(
        lambda p: loss_sums(p, i, batch), has_aux=True)(state.params)
    return loss_sum, count, grads

  if grad_accum == 1:
    loss_sum, count, grads = grads_of(0, jax.tree.map(lambda x: x[0], micro_batches))
  else:
    def body(carry, xs):
      return jax.tree.map(jnp.add, carry, grads_of(*xs)), None
    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
    (loss_sum, count, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro_batches))

  count = jnp.maximum(count, 1.0)
  # Pruned weights get no gradient (so no optimizer moments) and are re-zeroed after the update,
  # which weight decay and old moments would otherwise move.
  grads = mask_tree(jax.tree.map(lambda g: g / count, grads), state.masks)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics = {"loss": loss_sum / count, "grad_norm": optax.tree.norm(grads),
             "learning_rate": applied_learning_rate(opt_state, schedule(state.step)), "tokens": count}
  params = mask_tree(optax.apply_updates(state.params, updates), state.masks)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def cross_entropy(logits, labels, smoothing: float = 0.0, num_classes: int = 0):
  """Per-position cross-entropy of integer `labels`, in float32; with `smoothing`, uniformly
  label-smoothed over the first `num_classes` entries (fairseq's form; 0 = all).

  The label's logit is picked by a one-hot product, not a gather: a gather's gradient is a
  scatter into a zeroed [..., vocab] buffer, which XLA runs on GPU as a separate kernel that
  took half of a RoBERTa-base step on an H100; the product fuses with the softmax.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  nll = log_z - jnp.sum(logits * jax.nn.one_hot(labels, vocab, dtype=logits.dtype), axis=-1)
  if not smoothing:
    return nll
  n = num_classes or vocab
  real = (jnp.arange(vocab) < n).astype(logits.dtype)  # a mask, not a slice: it fuses too
  mean_log_p = jnp.sum(logits * real, axis=-1) / n - log_z
  return (1.0 - smoothing) * nll - smoothing * mean_log_p


def split_micro(batch, grad_accum: int):
  return jax.tree.map(lambda x: x.reshape((grad_accum, -1) + x.shape[1:]), batch)
