"""Weight quantizers on the [S, I, O] matrix view: uniform (absmax / min-max) and k-means.

Every function here is pure and jit-able. The bit width is a runtime value (a
Python int or a traced integer scalar), so one compiled program serves every
width from 1 to MAX_BITS: it never becomes a shape or steers Python control flow.
Static settings (symmetric, granularity, group_size, iters) are Python values.

Uniform quantization stores integer codes in [0, 2**bits) with a float scale and
zero point per scale group; `(codes - zero) * scale` dequantizes. Symmetric
quantization at 2+ bits is qwix's "absmax" scheme bit for bit (bound qmax + 0.5,
round half to even, true division); at 1 bit it binarizes to +-mean|w|.
K-means quantization fits 2**bits shared values per matrix with 1-D Lloyd
iterations (Han et al., 2016) and stores codes into that codebook.

A `mask` (True = kept) marks pruned weights: they take no part in any statistic
and dequantize to exactly 0.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from jax import lax

MAX_BITS = 8
KMEANS_SLOTS = 2**MAX_BITS

# Scales below this become 1, as in qwix: an all-zero (or all-pruned) group then
# quantizes to 0 without dividing by zero, and tiny or subnormal scales cannot
# blow `w / scale` up.
_TINY_SCALE = float(jnp.sqrt(jnp.finfo(jnp.float32).tiny))

_GRANULARITIES = ("tensor", "channel", "group")


def _check_bits(bits) -> jax.Array:
  """The bit width as an int32 scalar; a concrete Python value is range-checked here."""
  if isinstance(bits, numbers.Integral) and not 1 <= int(bits) <= MAX_BITS:
    raise ValueError(f"bits must be between 1 and {MAX_BITS}, got {bits}.")
  return jnp.asarray(bits, jnp.int32)


def _pow2(e: jax.Array) -> jax.Array:
  """2**e as float32 for an int32 e >= 0; a shift, because exp2 need not be exact."""
  return jnp.left_shift(jnp.int32(1), e).astype(jnp.float32)


def group_shape(shape3: tuple[int, int, int], granularity: str, group_size: int = 128) -> tuple:
  """The shape of the scale (and zero point) array of a [S, I, O] weight."""
  s, i, o = shape3
  if granularity == "tensor":
    return (s, 1, 1)
  if granularity == "channel":
    return (s, 1, o)
  if granularity == "group":
    if group_size <= 0 or i % group_size:
      raise ValueError(f"group quantization needs the input dimension ({i}) to be a multiple "
                       f"of the group size ({group_size}).")
    return (s, i // group_size, o)
  raise ValueError(f"granularity must be one of {', '.join(_GRANULARITIES)}, got {granularity!r}.")


def _grouped(x: jax.Array, granularity: str, group_size: int) -> jax.Array:
  """[S, I, O] -> [S, G, R, O], each scale group being the R rows of one G (and, unless
  per-tensor, one O)."""
  s, i, o = x.shape
  g = group_shape(x.shape, granularity, group_size)[1]
  return x.reshape(s, g, i // g, o)


def _group_axes(granularity: str) -> tuple[int, ...]:
  """The axes of the [S, G, R, O] view that one scale covers."""
  return (2, 3) if granularity == "tensor" else (2,)


def _expand(groups: jax.Array, shape3: tuple[int, int, int]) -> jax.Array:
  """A [S, G, 1 or O] per-group array broadcast to [S, G, R, O] (R = I // G)."""
  s, i, o = shape3
  g = groups.shape[1]
  return jnp.broadcast_to(groups[:, :, None, :], (s, g, i // g, o))


def uniform_codes(w3: jax.Array, bits, *, symmetric: bool, granularity: str,
                  group_size: int = 128, mask: jax.Array | None = None):
  """Uniform quantization of a [S, I, O] weight to `bits` bits.

  Returns (codes, scale, zero): int32 codes in [0, 2**bits) of w3's shape, and
  float32 scale and zero point of `group_shape(...)`, so that `uniform_dequantize`
  ((codes - zero) * scale) reconstructs the weight. Pruned entries (mask False)
  get the code of 0.0.
  """
  bits = _check_bits(bits)
  shape3 = w3.shape
  gshape = group_shape(shape3, granularity, group_size)
  axes = _group_axes(granularity)
  w3 = w3.astype(jnp.float32)
  kept = jnp.ones(shape3, bool) if mask is None else mask.astype(bool)
  # Pruned entries become 0: 0 is always representable, so they take the code of 0,
  # and 0 never widens absmax or [min, max] beyond what `lo <= 0 <= hi` already does.
  wm = jnp.where(kept, w3, 0.0)
  x = _grouped(wm, granularity, group_size)

  def squeeze(stat):  # [S, G, 1, 1 or O] -> group_shape
    return stat.reshape(gshape)

  if symmetric:
    half = _pow2(bits - 1)
    absmax = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    # qwix's symmetric bound is qmax + 0.5, so the end buckets are as wide as the rest.
    scale = absmax / (half - 0.5)
    scale = jnp.where(scale < _TINY_SCALE, 1.0, scale)
    # Division, not a reciprocal multiply, and round half to even, as qwix does.
    q = jnp.clip(jnp.round(x / scale), -half, half - 1.0)
    multi_codes = q + half

    # One bit: the absmax grid would be {-scale, 0}, useless, so binarize (XNOR-Net):
    # sign codes, levels +-mean|w| over the group's kept entries. No division here,
    # so a zero mean stays a zero scale and an empty group dequantizes to 0.
    n_kept = jnp.sum(_grouped(kept, granularity, group_size), axis=axes, keepdims=True)
    mean_abs = jnp.sum(jnp.abs(x), axis=axes, keepdims=True) / jnp.maximum(n_kept, 1)
    bin_codes = (x >= 0).astype(jnp.float32)

    one_bit = bits == 1
    codes = jnp.where(one_bit, bin_codes, multi_codes)
    scale = jnp.where(one_bit, 2.0 * mean_abs, scale)
    zero = jnp.where(one_bit, 0.5, half) * jnp.ones_like(scale)
  else:
    levels = _pow2(bits) - 1.0
    # The range always holds 0, so 0 (and every pruned entry) is exactly representable.
    lo = jnp.minimum(jnp.min(x, axis=axes, keepdims=True), 0.0)
    hi = jnp.maximum(jnp.max(x, axis=axes, keepdims=True), 0.0)
    scale = (hi - lo) / levels
    scale = jnp.where(scale < _TINY_SCALE, 1.0, scale)
    zero = jnp.round(-lo / scale)
    codes = jnp.clip(jnp.round(x / scale) + zero, 0.0, levels)

  return (codes.astype(jnp.int32).reshape(shape3), squeeze(scale).astype(jnp.float32),
          squeeze(zero).astype(jnp.float32))


def uniform_dequantize(codes: jax.Array, scale: jax.Array, zero: jax.Array) -> jax.Array:
  """(codes - zero) * scale, each [S, G, 1 or O] scale group spread over its I // G rows.

  The group layout is read off the shapes (as in `group_shape`), so no group size is needed.
  """
  shape3 = codes.shape
  s, i, o = shape3
  g = scale.shape[1]
  q = codes.astype(jnp.float32).reshape(s, g, i // g, o)
  out = (q - _expand(zero, shape3)) * _expand(scale, shape3)
  return out.reshape(shape3)


def _kmeans_assign(centroids: jax.Array, x: jax.Array) -> jax.Array:
  """Index of the nearest of each row's sorted centroids, by binary search on the midpoints.

  O(n log k) and no n x k distance matrix. Inactive slots are +inf, so every midpoint
  past the last active centroid is +inf too and no finite weight lands there.
  """
  mids = 0.5 * (centroids[:, :-1] + centroids[:, 1:])
  return jax.vmap(jnp.searchsorted)(mids, x).astype(jnp.int32)


def kmeans_codes(w3: jax.Array, bits, *, iters: int = 20, mask: jax.Array | None = None):
  """K-means (weight sharing) quantization of each matrix of a [S, I, O] weight.

  Returns (codes, codebook): int32 codes of w3's shape and a float32 [S, KMEANS_SLOTS]
  codebook of which the first 2**bits slots are the sorted centroids and the rest 0.0.
  Centroids start evenly spaced over [min, max] of the kept weights (Han et al.'s linear
  initialisation, which keeps the rare large weights represented) and take `iters` Lloyd
  steps; a cluster that empties keeps its centroid. Pruned entries (mask False) take no
  part in the fit; their codes are meaningless and `fake_quant` zeroes them.
  """
  bits = jnp.clip(_check_bits(bits), 1, MAX_BITS)
  s, i, o = w3.shape
  x = w3.astype(jnp.float32).reshape(s, i * o)
  kept = jnp.ones(x.shape, bool) if mask is None else mask.astype(bool).reshape(s, i * o)
  weight = kept.astype(jnp.float32)
  xw = x * weight

  k = jnp.left_shift(jnp.int32(1), bits)
  slot = jnp.arange(KMEANS_SLOTS)
  active = slot < k
  any_kept = jnp.any(kept, axis=1, keepdims=True)
  lo = jnp.where(any_kept, jnp.min(jnp.where(kept, x, jnp.inf), axis=1, keepdims=True), 0.0)
  hi = jnp.where(any_kept, jnp.max(jnp.where(kept, x, -jnp.inf), axis=1, keepdims=True), 0.0)
  init = lo + (hi - lo) * (slot / (k - 1).astype(jnp.float32))
  init = jnp.where(active, init, jnp.inf)

  # Flattened segment ids: slice s owns segments [s * SLOTS, (s + 1) * SLOTS).
  offsets = (jnp.arange(s, dtype=jnp.int32) * KMEANS_SLOTS)[:, None]

  def step(_, centroids):
    seg = (_kmeans_assign(centroids, x) + offsets).reshape(-1)
    sums = jax.ops.segment_sum(xw.reshape(-1), seg, num_segments=s * KMEANS_SLOTS)
    counts = jax.ops.segment_sum(weight.reshape(-1), seg, num_segments=s * KMEANS_SLOTS)
    sums = sums.reshape(s, KMEANS_SLOTS)
    counts = counts.reshape(s, KMEANS_SLOTS)
    updated = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), centroids)
    # 1-D Lloyd keeps the order in exact arithmetic; sorting guards the binary search
    # against rounding (and keeps the +inf slots last).
    return jnp.sort(updated, axis=1)

  centroids = lax.fori_loop(0, iters, step, init)
  codes = _kmeans_assign(centroids, x).reshape(s, i, o)
  codebook = jnp.where(active, centroids, 0.0)
  return codes, codebook


def kmeans_dequantize(codes: jax.Array, codebook: jax.Array) -> jax.Array:
  """Each code replaced by its matrix's codebook entry: [S, I, O] float32."""
  s, i, o = codes.shape
  flat = jnp.take_along_axis(codebook, codes.reshape(s, i * o), axis=1)
  return flat.reshape(s, i, o)


def fake_quant(w3: jax.Array, bits, *, method: str, symmetric: bool = True,
               granularity: str = "channel", group_size: int = 128, kmeans_iters: int = 20,
               mask: jax.Array | None = None) -> jax.Array:
  """Quantize then dequantize a [S, I, O] weight: the float weights evaluation runs with.

  method is "uniform" (`uniform_codes`; symmetric, granularity, group_size apply) or
  "kmeans" (`kmeans_codes`; kmeans_iters applies). Pruned entries come out exactly 0.
  """
  if method == "uniform":
    codes, scale, zero = uniform_codes(w3, bits, symmetric=symmetric, granularity=granularity,
                                       group_size=group_size, mask=mask)
    out = uniform_dequantize(codes, scale, zero)
  elif method == "kmeans":
    codes, codebook = kmeans_codes(w3, bits, iters=kmeans_iters, mask=mask)
    out = kmeans_dequantize(codes, codebook)
  else:
    raise ValueError(f"quantization method must be 'uniform' or 'kmeans', got {method!r}.")
  if mask is not None:
    # A one-bit code or a k-means code has no exact 0, so pruned entries are zeroed here.
    out = jnp.where(mask.astype(bool), out, 0.0)
  return out


def straight_through(w: jax.Array, quantized: jax.Array) -> jax.Array:
  """`quantized` forward, identity backward: the straight-through estimator for
  quantization-aware training."""
  return w + lax.stop_gradient(quantized - w)
