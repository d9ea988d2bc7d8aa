"""Behavioural tests of tl_jax/compress/quantize.py: levels, error, qwix parity, masks, jit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.compress import quantize as q

GRANULARITIES = ("tensor", "channel", "group")
GROUP = 16


def _weights(shape=(2, 64, 24), seed=0, outliers=6):
  """Gaussian weights with a few large outliers, as trained matrices have."""
  rng = np.random.default_rng(seed)
  w = rng.normal(0.0, 0.05, size=shape).astype(np.float32)
  flat = w.reshape(-1)
  idx = rng.choice(flat.size, size=outliers, replace=False)
  flat[idx] = rng.choice([-1.0, 1.0], size=outliers) * rng.uniform(0.5, 1.0, size=outliers)
  return jnp.asarray(w)


def _groups(x, granularity):
  """[S, I, O] -> [n_groups, group_entries], one row per scale group."""
  x = np.asarray(x)
  s, i, o = x.shape
  if granularity == "tensor":
    return x.reshape(s, -1)
  g = 1 if granularity == "channel" else i // GROUP
  return x.reshape(s, g, i // g, o).transpose(0, 1, 3, 2).reshape(s * g * o, i // g)


def _max_distinct(rows):
  return max(len(np.unique(r)) for r in rows)


@functools.lru_cache(maxsize=None)
def _jitted_uniform(symmetric, granularity):
  return jax.jit(lambda w, bits, mask=None: q.uniform_codes(
      w, bits, symmetric=symmetric, granularity=granularity, group_size=GROUP, mask=mask))


@functools.lru_cache(maxsize=None)
def _jitted_fake(method, symmetric=True, granularity="channel"):
  return jax.jit(lambda w, bits, mask=None: q.fake_quant(
      w, bits, method=method, symmetric=symmetric, granularity=granularity, group_size=GROUP,
      mask=mask))


def _mse(a, b):
  return float(jnp.mean((a - b)**2))


def test_group_shape():
  assert q.group_shape((3, 64, 8), "tensor", 16) == (3, 1, 1)
  assert q.group_shape((3, 64, 8), "channel", 16) == (3, 1, 8)
  assert q.group_shape((3, 64, 8), "group", 16) == (3, 4, 8)
  with pytest.raises(ValueError, match="multiple of the group size"):
    q.group_shape((3, 60, 8), "group", 16)
  with pytest.raises(ValueError):
    q.group_shape((3, 64, 8), "row", 16)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_uniform_levels_per_group(symmetric, granularity):
  w = _weights()
  quant = _jitted_uniform(symmetric, granularity)
  for bits in range(1, q.MAX_BITS + 1):
    codes, scale, zero = quant(w, bits)
    assert codes.dtype == jnp.int32
    assert scale.shape == zero.shape == q.group_shape(w.shape, granularity, GROUP)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
    deq = q.uniform_dequantize(codes, scale, zero)
    assert deq.shape == w.shape
    rows = _groups(deq, granularity)
    assert _max_distinct(rows) <= 2**bits
    # ...and not trivially: the levels do get used.
    assert _max_distinct(rows) >= 2


def test_kmeans_levels_per_matrix():
  w = _weights()
  quant = jax.jit(lambda w, bits: q.kmeans_codes(w, bits, iters=10))
  for bits in range(1, q.MAX_BITS + 1):
    codes, codebook = quant(w, bits)
    assert codebook.shape == (w.shape[0], q.KMEANS_SLOTS)
    assert bool(jnp.all(jnp.isfinite(codebook)))
    assert bool(jnp.all(codebook[:, 2**bits:] == 0.0))
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
    deq = np.asarray(q.kmeans_dequantize(codes, codebook))
    for s in range(w.shape[0]):
      assert len(np.unique(deq[s])) <= 2**bits


@pytest.mark.parametrize("method,symmetric", [("uniform", True), ("uniform", False),
                                              ("kmeans", True)])
def test_error_shrinks_with_bits(method, symmetric):
  w = _weights(shape=(2, 128, 64))
  fake = _jitted_fake(method, symmetric)
  errors = [_mse(fake(w, bits), w) for bits in range(2, q.MAX_BITS + 1)]
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  # 8 bits is close: a small fraction of the weights' variance.
  assert errors[-1] < 1e-3 * float(jnp.var(w))


def test_one_bit_symmetric_binarizes_to_mean_magnitude():
  w = _weights(shape=(2, 32, 8))
  deq = np.asarray(_jitted_fake("uniform", True, "channel")(w, 1))
  mean_abs = np.abs(np.asarray(w)).mean(axis=1, keepdims=True)
  expected = np.where(np.asarray(w) >= 0, mean_abs, -mean_abs)
  np.testing.assert_allclose(deq, expected, rtol=1e-6)


@pytest.mark.parametrize("granularity", ["channel", "group"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_matches_qwix(granularity, bits):
  qwix = pytest.importorskip(
      "qwix", reason="qwix (pip install qwix) is the reference for symmetric absmax quantization")
  # qwix names the axes that KEEP their own scale: per output feature of an [I, O]
  # matrix is channelwise_axes=(1,), and groups along I are tiled_axes={0: size}.
  qtype = {8: jnp.int8, 4: jnp.int4}.get(bits, f"int{bits}")
  w = _weights(shape=(3, 64, 24), seed=bits)
  ours = _jitted_fake("uniform", True, granularity)(w, bits)
  tiled = {0: GROUP} if granularity == "group" else None
  reference = jax.jit(jax.vmap(lambda m: qwix.dequantize(
      qwix.quantize(m, qtype, channelwise_axes=(1,), tiled_axes=tiled))))
  ref = reference(w)
  _, scale, _ = _jitted_uniform(True, granularity)(w, bits)
  tol = 1e-6 * np.asarray(q.uniform_dequantize(jnp.ones(w.shape, jnp.int32), scale,
                                               jnp.zeros_like(scale)))
  assert np.all(np.abs(np.asarray(ours) - np.asarray(ref)) <= tol)


def test_one_jit_serves_every_bit_width():
  traces = []

  @jax.jit
  def fake(w, bits):
    traces.append(None)  # runs once per trace, never on a cached call
    return (q.fake_quant(w, bits, method="uniform", granularity="group", group_size=GROUP),
            q.fake_quant(w, bits, method="kmeans", kmeans_iters=5))

  w = _weights()
  # Fixed dtype: a Python int would be a weakly typed int32, a different signature.
  outputs = [fake(w, jnp.int32(bits)) for bits in (8, 4, 2, 1, 3, 6)]
  assert len(traces) == 1
  # The runtime bit width really changes the result.
  assert _mse(outputs[0][0], w) < _mse(outputs[1][0], w) < _mse(outputs[2][0], w)
  assert _mse(outputs[0][1], w) < _mse(outputs[1][1], w) < _mse(outputs[2][1], w)


@pytest.mark.parametrize("method,symmetric,granularity", [
    ("uniform", True, "channel"), ("uniform", False, "channel"), ("uniform", True, "group"),
    ("uniform", False, "tensor"), ("kmeans", True, "channel")])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_masked_entries_are_zero_and_ignored(method, symmetric, granularity, bits):
  w = _weights(seed=1)
  rng = np.random.default_rng(2)
  mask = jnp.asarray(rng.random(w.shape) > 0.4)
  # Pruned entries hold huge values in one copy and others in another: neither may
  # reach the statistics (absmax, min/max, mean|w|, the k-means fit).
  huge = jnp.where(mask, w, 100.0)
  other = jnp.where(mask, w, -7.0 * w)
  fake = _jitted_fake(method, symmetric, granularity)
  a, b = fake(huge, bits, mask), fake(other, bits, mask)
  assert bool(jnp.all(jnp.where(mask, True, a == 0.0)))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The quantizer still fits the kept weights: pruning-aware, not just zeroed afterwards.
  kept_err = float(jnp.sum(jnp.where(mask, (a - w)**2, 0.0)) / jnp.sum(mask))
  naive_err = float(jnp.sum(jnp.where(mask, (fake(huge, bits) - w)**2, 0.0)) / jnp.sum(mask))
  assert kept_err < naive_err
  if method == "uniform":
    quant = _jitted_uniform(symmetric, granularity)
    (ca, sa, za), (_, sb, zb) = quant(huge, bits, mask), quant(other, bits, mask)
    np.testing.assert_array_equal(np.asarray(sa), np.asarray(sb))
    np.testing.assert_array_equal(np.asarray(za), np.asarray(zb))
    # Pruned entries carry the code of 0.0: it dequantizes to exactly 0, except at one
    # symmetric bit, whose sign codes have no 0 and give 0.0 the code of +mean|w|.
    pruned = np.asarray(~mask)
    if symmetric and bits == 1:
      assert np.all(np.asarray(ca)[pruned] == 1)
    else:
      assert np.all(np.asarray(q.uniform_dequantize(ca, sa, za))[pruned] == 0.0)


@pytest.mark.parametrize("method,symmetric", [("uniform", True), ("uniform", False),
                                              ("kmeans", True)])
@pytest.mark.parametrize("bits", [1, 4, 8])
def test_all_zero_matrix_stays_zero(method, symmetric, bits):
  w = jnp.zeros((2, 32, 4)).at[1].set(_weights(shape=(1, 32, 4))[0])
  fake = _jitted_fake(method, symmetric, "tensor")
  out = fake(w, bits)
  assert bool(jnp.all(jnp.isfinite(out)))
  assert bool(jnp.all(out[0] == 0.0))
  # And with everything pruned.
  out = fake(w, bits, jnp.zeros(w.shape, bool))
  assert bool(jnp.all(out == 0.0))


def test_bits_out_of_range_is_refused():
  w = _weights(shape=(1, 16, 4))
  for bits in (0, q.MAX_BITS + 1):
    with pytest.raises(ValueError, match="bits"):
      q.fake_quant(w, bits, method="uniform")
  with pytest.raises(ValueError, match="method"):
    q.fake_quant(w, 4, method="lloyd")


def test_straight_through_passes_gradients():
  w = _weights(shape=(1, 32, 8))

  def loss(w):
    wq = q.straight_through(w, q.fake_quant(w, 2, method="uniform"))
    return jnp.sum(wq * jnp.arange(8.0))

  value = jnp.sum(_jitted_fake("uniform")(w, 2) * jnp.arange(8.0))
  np.testing.assert_allclose(float(jax.jit(loss)(w)), float(value), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.grad(loss))(w)),
                                np.broadcast_to(np.arange(8.0), w.shape))


def test_float_bit_width_is_accepted():
  # Callers may carry bits as a float32 scalar next to the sparsity (tl_jax/compress/grid.py).
  w = _weights(shape=(1, 32, 8))
  fake = jax.jit(lambda w, bits: (q.fake_quant(w, bits, method="uniform"),
                                  q.fake_quant(w, bits, method="kmeans", kmeans_iters=5)))
  for a, b in zip(fake(w, jnp.float32(4.0)), fake(w, jnp.int32(4))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
