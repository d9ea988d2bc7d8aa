"""Weight pruning on the [S, I, O] matrix view: magnitude masks, N:M masks, the cubic schedule.

Every function here is pure and jit-able. The sparsity is a runtime value (a
Python float or a traced scalar), so one compiled program serves every sparsity;
scope, n and m are static Python values. Masks are bool arrays shaped like their
weights, True where a weight is kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_SCOPES = ("global", "layer")


def _keep_by_rank(magnitude: jax.Array, sparsity) -> jax.Array:
  """Along the last axis, False for exactly round(sparsity * n) smallest entries.

  Ranks come from a stable sort, so ties (equal magnitudes) are broken by position
  and the count is exact however many weights are equal; a threshold could not do that.
  """
  n = magnitude.shape[-1]
  # float32 represents every integer up to 2**24, so round(sparsity * n) is the
  # nearest integer to float32(sparsity) * n for n up to ~16.7M entries per ranking;
  # beyond that the pruned count may be off by one.
  k = jnp.round(jnp.clip(jnp.asarray(sparsity, jnp.float32), 0.0, 1.0) * n).astype(jnp.int32)
  order = jnp.argsort(magnitude, axis=-1, stable=True)
  rank_of_order = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), order.shape)
  # rank[order[j]] = j, one scatter instead of a second sort.
  ranks = jnp.put_along_axis(jnp.zeros(order.shape, jnp.int32), order, rank_of_order,
                             axis=-1, inplace=False)
  return ranks >= k


def magnitude_masks(ws: list[jax.Array], sparsity, *, scope: str) -> list[jax.Array]:
  """Masks that prune the smallest-magnitude `sparsity` fraction of the weights.

  scope "global" ranks every entry of every [S, I, O] array together, so matrices of
  small weights lose more; scope "layer" ranks each matrix (each S slice of each
  array) alone, so every matrix loses the same fraction. Either way exactly
  round(sparsity * N) entries of each ranking (of N entries) are pruned.
  """
  if scope == "global":
    flat = jnp.concatenate([jnp.abs(w).astype(jnp.float32).reshape(-1) for w in ws])
    keep = _keep_by_rank(flat, sparsity)
    masks, start = [], 0
    for w in ws:
      masks.append(keep[start:start + w.size].reshape(w.shape))
      start += w.size
    return masks
  if scope == "layer":
    return [_keep_by_rank(jnp.abs(w).astype(jnp.float32).reshape(w.shape[0], -1),
                          sparsity).reshape(w.shape) for w in ws]
  raise ValueError(f"pruning scope must be one of {', '.join(_SCOPES)}, got {scope!r}.")


def nm_mask(w3: jax.Array, n: int, m: int) -> jax.Array:
  """N:M structured sparsity: in each block of m consecutive input rows (per matrix and
  output feature) keep exactly the n largest |w|, the earlier row winning a tie."""
  s, i, o = w3.shape
  if m <= 0 or not 0 <= n <= m:
    raise ValueError(f"N:M sparsity needs 0 <= n <= m and m > 0, got n={n}, m={m}.")
  if i % m:
    raise ValueError(f"N:M sparsity needs the input dimension ({i}) to be a multiple of m ({m}).")
  a = jnp.abs(w3).astype(jnp.float32).reshape(s, i // m, m, o)
  # Rank of row r within its block = how many rows beat it: larger, or equal and earlier.
  # m is small (2:4, 4:8), so m pairwise comparisons beat a sort and make ties explicit.
  pos = jnp.arange(m).reshape(1, 1, m, 1)
  rank = jnp.zeros(a.shape, jnp.int32)
  for j in range(m):
    other = a[:, :, j:j + 1, :]
    beats = (other > a) | ((other == a) & (j < pos))
    rank = rank + beats.astype(jnp.int32)
  return (rank < n).reshape(s, i, o)


def cubic_sparsity(step, final, begin_step, end_step, initial=0.0) -> jax.Array:
  """Zhu & Gupta's (2017) gradual pruning schedule, traceable in `step`.

  `initial` until begin_step, `final` from end_step on, and in between
  final + (initial - final) * (1 - (step - begin_step) / (end_step - begin_step))**3,
  which prunes fast early, while many redundant weights remain, and slowly at the end.
  """
  step = jnp.asarray(step, jnp.float32)
  span = jnp.maximum(jnp.asarray(end_step - begin_step, jnp.float32), 1.0)
  progress = jnp.clip((step - begin_step) / span, 0.0, 1.0)
  s = final + (initial - final) * (1.0 - progress)**3
  # A zero-length ramp (end_step <= begin_step) jumps straight to `final`.
  return jnp.where(step >= end_step, jnp.asarray(final, jnp.float32), s).astype(jnp.float32)


def apply_masks(ws: list[jax.Array], masks: list[jax.Array]) -> list[jax.Array]:
  """Each weight times its mask: pruned entries become exactly 0 (and get no gradient)."""
  return [jnp.where(mask.astype(bool), w, jnp.zeros_like(w)) for w, mask in zip(ws, masks)]
