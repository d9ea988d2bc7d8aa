"""The output layer and its cross-entropy in chunks of target positions, never the whole logits.

`chunked_cross_entropy(hidden, table, labels, ...)` equals
`cross_entropy(hidden @ table.T, labels, ...)` (tl_jax/train/step.py), value and gradient, but
makes the [tokens x vocab] logits a chunk of positions at a time: the forward keeps only each
position's log-partition, and the backward makes each chunk's logits again, turns them into
d_logits = softmax - smoothed one-hot and multiplies them at once into the hidden states'
gradient and a float32 sum for the table's. On the `big` translation shape the whole logits are
[24,576 x 40,064], 2 GB in bfloat16; a chunk of 3,072 tokens is an eighth of that, at the price
of the logits' matmul made twice.

Chunks are whole columns of positions across every row, so the batch axis, which the data
sharding splits, is never cut.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tl_jax.train.step import cross_entropy


def positions_per_chunk(rows: int, length: int, chunk_tokens: int) -> int:
  """Positions per chunk so that rows x positions is about `chunk_tokens`, balanced over the
  chunks so that padding the length to a whole number of chunks adds fewer positions than chunks."""
  wanted = max(1, min(length, chunk_tokens // max(rows, 1)))
  chunks = -(-length // wanted)
  return -(-length // chunks)


def chunked_cross_entropy(hidden, table, labels, *, smoothing: float = 0.0, num_classes: int = 0,
                          chunk_tokens: int):
  """Per-position cross-entropy [B, T] (float32) of `labels` [B, T] under logits
  hidden [B, T, D] @ table [V, D].T, with `cross_entropy`'s smoothing.

  The logits are made in `hidden`'s dtype (as `nn.Embed.attend` makes them in the compute
  dtype) and upcast, so the loss is the unchunked one; the table's gradient is summed over
  chunks in float32 and returned in the table's own dtype (pass the float32 parameter).
  """
  rows, length = labels.shape
  chunk = positions_per_chunk(rows, length, chunk_tokens)
  return _xent(hidden, table, labels, float(smoothing), int(num_classes), chunk)


def _chunked(x, chunk: int):
  """[B, T, ...] -> [T/chunk, B, chunk, ...], zero-padding T to a whole number of chunks."""
  rows, length = x.shape[:2]
  pad = -length % chunk
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape((rows, -1, chunk) + x.shape[2:]), 1, 0)


def _unchunked(x, length: int):
  """The inverse of `_chunked`: [T/chunk, B, chunk, ...] -> [B, T, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :length]


def _logits(h, table):
  return jnp.einsum("bcd,vd->bcv", h, table).astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _xent(hidden, table, labels, smoothing, num_classes, chunk):
  return _xent_forward(hidden, table, labels, smoothing, num_classes, chunk)[0]


def _xent_forward(hidden, table, labels, smoothing, num_classes, chunk):
  compute_table = table.astype(hidden.dtype)

  def one_chunk(_, xs):
    h, y = xs
    logits = _logits(h, compute_table)
    # The same logsumexp as inside cross_entropy's: XLA computes it once.
    return None, (cross_entropy(logits, y, smoothing, num_classes), jax.nn.logsumexp(logits, axis=-1))

  _, (loss, log_z) = jax.lax.scan(one_chunk, None, (_chunked(hidden, chunk), _chunked(labels, chunk)))
  length = labels.shape[1]
  return _unchunked(loss, length), (hidden, table, labels, _unchunked(log_z, length))


def _xent_backward(smoothing, num_classes, chunk, residuals, grad):
  hidden, table, labels, log_z = residuals
  compute_table = table.astype(hidden.dtype)
  vocab = table.shape[0]
  ids = jnp.arange(vocab)
  n = num_classes or vocab

  def one_chunk(table_grad, xs):
    h, y, lz, g = xs
    # d loss / d logits of cross_entropy: softmax - (1 - s) one_hot(y) - s [v < n] / n.
    target = jnp.where(ids == y[..., None], 1.0 - smoothing, 0.0)
    if smoothing:
      target = target + jnp.where(ids < n, smoothing / n, 0.0)
    d_logits = ((jnp.exp(_logits(h, compute_table) - lz[..., None]) - target) * g[..., None])
    d_logits = d_logits.astype(h.dtype)  # as the unchunked backward casts it for attend's matmul
    h_grad = jnp.einsum("bcv,vd->bcd", d_logits, compute_table)
    table_grad = table_grad + jnp.einsum("bcv,bcd->vd", d_logits, h,
                                         preferred_element_type=jnp.float32)
    return table_grad, h_grad

  xs = tuple(_chunked(x, chunk) for x in (hidden, labels, log_z, grad))
  table_grad, hidden_grad = jax.lax.scan(one_chunk, jnp.zeros(table.shape, jnp.float32), xs)
  return _unchunked(hidden_grad, labels.shape[1]), table_grad.astype(table.dtype), None


_xent.defvjp(_xent_forward, _xent_backward)
