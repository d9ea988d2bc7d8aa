"""GPTQ (Frantar et al., 2023): uniform codes chosen to keep each layer's outputs, not its weights.

Round to nearest minimises ||W - W_q|| weight by weight. GPTQ minimises ||X W - X W_q||^2 over
the layer's inputs X on calibration data: it quantizes one input feature (a row of the [I, O]
view) at a time and moves that row's rounding error onto the rows not yet quantized, weighted
by the inverse Hessian H^-1 of the objective (H = X^T X). The codes are stored exactly as the
uniform quantizer's (same scales, same zero points, same export), so only which codes are
chosen differs; memory is the same bit for bit.

Following the reference implementation (IST-DASLab/gptq, which qwix's `gptq_core` mirrors):
the Hessian is dampened by `quant.gptq_damping` times its mean diagonal, inputs never seen
(zero diagonal) get zero weights, rows go in their natural order in blocks of
`quant.gptq_block_size` (the lazy batch update), and scales are those the uniform quantizer
computes: from the whole matrix for per-tensor and per-channel scales, from the group's rows as
they stand when its block begins for per-group scales. Pruned entries (a mask) quantize to
exactly 0 and their error is compensated like any other, so pruning then GPTQ also repairs
part of the pruning error (as SparseGPT does with a fixed mask).

Weights without calibration inputs (embedding tables, which are looked up, not multiplied)
fall back to round to nearest; `tl-jax compress` lists them in each line's `calibration`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from tl_jax.compress import quantize as quant_lib
from tl_jax.compress.methods.uniform import Uniform
from tl_jax.config import QuantConfig


def _codes_at(w, scale, zero, bits, symmetric: bool):
  """Codes of one row of weights [O] at fixed scales and zero points [O] (uniform_codes' grid)."""
  levels = jnp.left_shift(jnp.int32(1), bits).astype(jnp.float32) - 1.0
  codes = jnp.clip(jnp.round(w / scale) + zero, 0.0, levels)
  if symmetric:  # one bit binarizes: the sign, with levels +-scale/2 around zero point 0.5
    codes = jnp.where(bits == 1, (w >= 0).astype(jnp.float32), codes)
  return codes


def inverse_hessian_factor(h, damping: float):
  """The upper Cholesky factor U of (H + damping * mean(diag H) * I)^-1, with unseen inputs
  (zero diagonal) given a unit diagonal; and the mask of unseen inputs."""
  i = h.shape[0]
  diag = jnp.diag(h)
  dead = diag == 0
  h = jnp.where(jnp.eye(i, dtype=bool) & dead[:, None], 1.0, h)
  h = h + damping * jnp.mean(diag) * jnp.eye(i, dtype=h.dtype)
  lower = jnp.linalg.cholesky(h)
  inverse = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(i, dtype=h.dtype))
  return jnp.linalg.cholesky(inverse).T, dead


def gptq_matrix(w, h, bits, *, symmetric: bool, granularity: str, group_size: int,
                block_size: int, damping: float, mask=None):
  """(codes [I, O] int32, scale, zero) for one weight matrix w [I, O] and Hessian h [I, I].
  `scale` and `zero` have the uniform quantizer's shape for the granularity, without the S axis."""
  u, dead = inverse_hessian_factor(h.astype(jnp.float32), damping)
  return gptq_with_factor(w, u, dead, bits, symmetric=symmetric, granularity=granularity,
                          group_size=group_size, block_size=block_size, mask=mask)


def gptq_with_factor(w, u, dead, bits, *, symmetric: bool, granularity: str, group_size: int,
                     block_size: int, mask=None):
  """gptq_matrix, given inverse_hessian_factor's (u, dead) for the Hessian.

  The blocks run in a `lax.fori_loop` (plus one shorter block where block_size does not divide
  I), so the program's size, and its compile, do not grow with the number of blocks."""
  w = w.astype(jnp.float32)
  num_in, num_out = w.shape
  kept = jnp.ones(w.shape, bool) if mask is None else mask.astype(bool)
  w = jnp.where(dead[:, None], 0.0, w)
  grouped = granularity == "group"
  if not grouped:
    _, scale, zero = quant_lib.uniform_codes(w[None], bits, symmetric=symmetric,
                                             granularity=granularity, mask=kept[None])
    scale, zero = scale[0], zero[0]  # [1, O] or [1, 1]
  groups = num_in // group_size if grouped else 1
  index = jnp.arange(num_in)

  def block(start, n, carry):
    """Quantizes rows [start, start + n) (start may be traced, n is static)."""
    w, codes, group_scales, group_zeros = carry
    stop = start + n
    if grouped:
      # Scales of the groups that begin in this block, from the rows as they are now. At most
      # ceil(n / group_size) groups can; candidates that do not are left unchanged.
      first = (start + group_size - 1) // group_size
      for k in range(-(-n // group_size)):
        g = first + k
        begins = (g * group_size < stop) & (g < groups)
        g = jnp.minimum(g, groups - 1)
        rows = lax.dynamic_slice_in_dim(w, g * group_size, group_size)
        rows_kept = lax.dynamic_slice_in_dim(kept, g * group_size, group_size)
        _, s, z = quant_lib.uniform_codes(rows[None], bits, symmetric=symmetric,
                                          granularity="channel", mask=rows_kept[None])
        group_scales = group_scales.at[g].set(jnp.where(begins, s[0, 0], group_scales[g]))
        group_zeros = group_zeros.at[g].set(jnp.where(begins, z[0, 0], group_zeros[g]))
    block_u = lax.dynamic_slice(u, (start, start), (n, n))
    block_kept = lax.dynamic_slice_in_dim(kept, start, n)

    def row_step(r, carry):
      block, errors, block_codes = carry
      row = block[r]
      if grouped:
        g = (start + r) // group_size
        s, z = group_scales[g], group_zeros[g]
      else:
        s, z = scale[0], zero[0]
      q = _codes_at(row, s, z, bits, symmetric)
      dq = jnp.where(block_kept[r], (q - z) * s, 0.0)
      error = (row - dq) / block_u[r, r]
      # U is upper triangular: rows before r are untouched, row r becomes exactly dq.
      block = block - block_u[r][:, None] * error[None, :]
      return block, errors.at[r].set(error), block_codes.at[r].set(q.astype(jnp.int32))

    block_w, errors, block_codes = lax.fori_loop(
        0, n, row_step, (lax.dynamic_slice_in_dim(w, start, n),
                         jnp.zeros((n, num_out), jnp.float32), jnp.zeros((n, num_out), jnp.int32)))
    codes = lax.dynamic_update_slice_in_dim(codes, block_codes, start, 0)
    w = lax.dynamic_update_slice_in_dim(w, block_w, start, 0)
    # The lazy batch update: the block's errors move onto every row after it (U's rows of this
    # block, zero before the block by triangularity, zeroed over the block itself).
    u_rows = jnp.where(index >= stop, lax.dynamic_slice_in_dim(u, start, n), 0.0)
    return w - u_rows.T @ errors, codes, group_scales, group_zeros

  carry = (w, jnp.zeros(w.shape, jnp.int32), jnp.zeros((groups, num_out), jnp.float32),
           jnp.zeros((groups, num_out), jnp.float32))
  full, tail = divmod(num_in, block_size)
  if full:
    carry = lax.fori_loop(0, full, lambda b, c: block(b * block_size, block_size, c), carry)
  if tail:
    carry = block(full * block_size, tail, carry)
  _, codes, group_scales, group_zeros = carry
  if grouped:
    return codes, group_scales, group_zeros
  return codes, scale, zero


class GPTQ(Uniform):
  name = "gptq"
  calibrated = True

  def static_key(self, quant: QuantConfig) -> tuple:
    return super().static_key(quant) + (quant.gptq_block_size, quant.gptq_damping)

  def encode(self, w3, bits, quant: QuantConfig, mask3=None, hessian=None) -> dict:
    if hessian is None:  # no inputs to calibrate on (a lookup table): round to nearest
      return super().encode(w3, bits, quant, mask3)
    bits = jnp.asarray(bits, jnp.int32)
    # One factorization at a time (lax.map, not vmap): jaxlib's CPU Cholesky splits a batch
    # over XLA's intra-op threads and waits for them, so two batched calls that XLA runs side
    # by side can each hold one thread of a 2-core machine and wait forever (jax 0.10.2).
    u, dead = lax.map(lambda h: inverse_hessian_factor(h.astype(jnp.float32), quant.gptq_damping),
                      hessian)
    one = lambda w, u, dead, m: gptq_with_factor(
        w, u, dead, bits, symmetric=quant.symmetric, granularity=quant.granularity,
        group_size=quant.group_size, block_size=quant.gptq_block_size, mask=m)
    mask3 = jnp.ones(w3.shape, bool) if mask3 is None else mask3
    codes, scale, zero = jax.vmap(one)(w3, u, dead, mask3)
    return {"codes": codes.astype(jnp.uint8), "scale": scale, "zero": zero}
