"""Behavioural tests of tl_jax/compress/prune.py: exact sparsity, N:M blocks, the cubic schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.compress import prune as p

SPARSITIES = (0.0, 0.1, 0.37, 0.5, 0.9, 1.0)


def _arrays(seed=0, tied=False):
  """Three [S, I, O] arrays of different sizes and magnitudes; `tied` rounds them to
  a handful of values so most magnitudes are shared."""
  rng = np.random.default_rng(seed)
  ws = [rng.normal(size=(3, 16, 8)) * 0.1, rng.normal(size=(1, 32, 12)), rng.normal(size=(2, 8, 4))]
  if tied:
    ws = [np.round(w * 2) / 2 for w in ws]
  return [jnp.asarray(w, jnp.float32) for w in ws]


def _pruned(mask):
  return int(np.sum(~np.asarray(mask)))


def _check_magnitude_order(ws, masks):
  """Every kept weight is at least as large as every pruned one of the same ranking."""
  kept = np.concatenate([np.abs(np.asarray(w))[np.asarray(m)] for w, m in zip(ws, masks)])
  gone = np.concatenate([np.abs(np.asarray(w))[~np.asarray(m)] for w, m in zip(ws, masks)])
  if kept.size and gone.size:
    assert kept.min() >= gone.max()


@pytest.mark.parametrize("tied", [False, True])
def test_global_sparsity_is_exact(tied):
  ws = _arrays(tied=tied)
  if tied:  # many shared magnitudes: a threshold could not hit the count
    flat = np.abs(np.concatenate([np.asarray(w).ravel() for w in ws]))
    assert len(np.unique(flat)) < 20
  total = sum(w.size for w in ws)
  masks_fn = jax.jit(lambda ws, s: p.magnitude_masks(ws, s, scope="global"))
  for sparsity in SPARSITIES:
    masks = masks_fn(ws, sparsity)
    assert [m.shape for m in masks] == [w.shape for w in ws]
    assert all(m.dtype == jnp.bool_ for m in masks)
    assert sum(_pruned(m) for m in masks) == round(sparsity * total)
    _check_magnitude_order(ws, masks)


@pytest.mark.parametrize("tied", [False, True])
def test_layer_sparsity_is_exact_per_matrix(tied):
  ws = _arrays(tied=tied)
  masks_fn = jax.jit(lambda ws, s: p.magnitude_masks(ws, s, scope="layer"))
  for sparsity in SPARSITIES:
    masks = masks_fn(ws, sparsity)
    for w, m in zip(ws, masks):
      per_matrix = w.shape[1] * w.shape[2]
      for s in range(w.shape[0]):
        assert _pruned(m[s]) == round(sparsity * per_matrix)
        _check_magnitude_order([w[s]], [m[s]])


def test_all_equal_magnitudes_still_exact():
  ws = [jnp.ones((2, 8, 8)), -jnp.ones((1, 8, 4))]
  for scope in ("global", "layer"):
    masks = p.magnitude_masks(ws, 0.25, scope=scope)
    assert sum(_pruned(m) for m in masks) == round(0.25 * 160)


def test_global_prunes_small_layers_more():
  ws = _arrays()  # the first array is 10x smaller than the others
  masks = p.magnitude_masks(ws, 0.5, scope="global")
  small, large = (_pruned(m) / m.size for m in masks[:2])
  assert small > 0.9 and large < 0.4
  # Per-layer scope ignores the scale difference.
  masks = p.magnitude_masks(ws, 0.5, scope="layer")
  assert [_pruned(m) / m.size for m in masks] == [0.5, 0.5, 0.5]


def test_unknown_scope_is_refused():
  with pytest.raises(ValueError, match="scope"):
    p.magnitude_masks(_arrays(), 0.5, scope="row")


def test_one_jit_serves_every_sparsity():
  traces = []

  @jax.jit
  def masks_fn(ws, sparsity):
    traces.append(None)  # runs once per trace, never on a cached call
    return p.magnitude_masks(ws, sparsity, scope="global")

  ws = _arrays()
  total = sum(w.size for w in ws)
  for sparsity in (0.2, 0.5, 0.8, 0.95):
    masks = masks_fn(ws, jnp.float32(sparsity))
    assert sum(_pruned(m) for m in masks) == round(sparsity * total)
  assert len(traces) == 1


def test_two_four_keeps_the_two_largest_of_every_four():
  rng = np.random.default_rng(3)
  w = jnp.asarray(rng.normal(size=(2, 32, 6)), jnp.float32)
  mask = np.asarray(p.nm_mask(w, 2, 4))
  blocks = mask.reshape(2, 8, 4, 6)
  assert np.all(blocks.sum(axis=2) == 2)
  mags = np.abs(np.asarray(w)).reshape(2, 8, 4, 6)
  kept_min = np.where(blocks, mags, np.inf).min(axis=2)
  gone_max = np.where(blocks, -np.inf, mags).max(axis=2)
  assert np.all(kept_min > gone_max)


def test_nm_ties_break_by_position():
  # Blocks of equal magnitudes (including an all-zero block) still keep exactly n.
  col = jnp.asarray([1., -1., 1., 1., 0., 0., 0., 0., 3., 2., -3., 2.])
  mask = np.asarray(p.nm_mask(col.reshape(1, 12, 1), 2, 4))[0, :, 0]
  np.testing.assert_array_equal(mask, [1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0])
  for n, m in [(1, 4), (4, 8), (0, 2), (2, 2)]:
    mask = np.asarray(p.nm_mask(jnp.zeros((1, 16, 3)), n, m))
    assert np.all(mask.reshape(1, 16 // m, m, 3).sum(axis=2) == n)


def test_nm_needs_divisible_input_dimension():
  with pytest.raises(ValueError, match=r"\(30\).*\(4\)"):
    p.nm_mask(jnp.ones((1, 30, 8)), 2, 4)
  with pytest.raises(ValueError):
    p.nm_mask(jnp.ones((1, 32, 8)), 5, 4)


def test_cubic_schedule():
  final, begin, end = 0.9, 100, 1100
  sched = jax.jit(lambda step: p.cubic_sparsity(step, final, begin, end, initial=0.1))
  assert float(sched(0)) == pytest.approx(0.1)
  assert float(sched(begin)) == pytest.approx(0.1)
  assert float(sched(end)) == pytest.approx(final)
  assert float(sched(10 * end)) == pytest.approx(final)
  values = np.asarray([float(sched(s)) for s in range(begin, end + 1, 50)])
  assert np.all(np.diff(values) > 0)
  # Cubic: most of the pruning happens in the first half of the ramp.
  assert float(sched((begin + end) // 2)) - 0.1 > 0.8 * (final - 0.1)
  assert float(p.cubic_sparsity(jnp.int32(500), 0.5, 0, 0)) == pytest.approx(0.5)


def test_apply_masks():
  ws = _arrays()
  masks = p.magnitude_masks(ws, 0.5, scope="layer")
  out = p.apply_masks(ws, masks)
  for w, m, o in zip(ws, masks, out):
    np.testing.assert_array_equal(np.asarray(o), np.where(np.asarray(m), np.asarray(w), 0.0))
