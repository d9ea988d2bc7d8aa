"""The pieces the fault suite relies on, one at a time and in this process: skipping a
non-finite step, checkpoint checksums, refusing to save NaN, and naming a storage failure."""

import errno

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.config import TrainConfig
from tl_jax.errors import TrainingDiverged, io_error
from tl_jax.train import checkpoint as ckpt_lib
from tl_jax.train.optimizer import applied_updates, optimizer


def _tree_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_skip_leaves_params_and_optimizer_state_as_they_were(bad):
  tx = optimizer(TrainConfig(on_nonfinite="skip", warmup_steps=0, max_steps=10))
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
  state = tx.init(params)
  good = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones((2,))}
  updates, state = jax.jit(tx.update)(good, state, params)
  params = jax.tree.map(jnp.add, params, updates)
  assert int(applied_updates(state)) == 1

  poisoned = {"w": good["w"].at[1, 1].set(bad), "b": good["b"]}
  updates, after = jax.jit(tx.update)(poisoned, state, params)
  assert all(not np.any(u) for u in jax.tree.leaves(updates))  # nothing moves, no NaN either
  assert _tree_equal(after, state)
  assert int(applied_updates(after)) == 1  # so the loop counts the step as skipped

  updates, after = jax.jit(tx.update)(good, after, params)
  assert int(applied_updates(after)) == 2 and np.any(updates["w"])


def test_stop_mode_keeps_the_plain_optimizer_state():
  """Both modes share one state layout, so a run can switch between them on resume."""
  params = {"w": jnp.ones((3, 2))}
  stop, skip = (optimizer(TrainConfig(on_nonfinite=m)) for m in ("stop", "skip"))
  assert jax.tree.structure(stop.init(params)) == jax.tree.structure(skip.init(params))


def test_checksums_name_the_array_that_changed():
  state = {"params": {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(4, jnp.bfloat16)},
           "step": jnp.int32(7), "masks": jnp.array([True, False])}
  sums, finite = ckpt_lib.fingerprint(state)
  assert finite and len(sums) == 4
  ckpt_lib.verify(state, {"checksum": sums})
  ckpt_lib.verify(state, {})  # checkpoints from before checksums are taken as they are
  changed = {**state, "params": {**state["params"], "a": state["params"]["a"].at[1, 2].add(1e-6)}}
  with pytest.raises(ValueError, match=r"\['params'\]\['a'\]"):
    ckpt_lib.verify(changed, {"checksum": sums})
  assert not ckpt_lib.fingerprint({"x": jnp.array([1.0, np.nan])})[1]


def test_a_non_finite_state_is_never_saved(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=2, async_save=False)
  ckpt.save(1, {"w": jnp.ones(3)}, {})
  with pytest.raises(TrainingDiverged, match="non-finite by step 2.*checkpoint 1, which is intact"):
    ckpt.save(2, {"w": jnp.array([1.0, np.inf, 0.0])}, {})
  ckpt.close()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_storage_failures_read_as_one_sentence():
  full = io_error(OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"))
  assert "could not write /w/metrics.jsonl (No space left on device); free space" in str(full)
  denied = io_error(PermissionError(errno.EACCES, "Permission denied"), "/w")
  assert "could not write in /w (Permission denied); make that place writable" in str(denied)
  tensorstore = ValueError('OUT_OF_RANGE: Error writing "p/0" in OCDBT database at local file '
                           '"/w/checkpoints/30.orbax-checkpoint-tmp/state/": Failed writing: '
                           '"/w/checkpoints/30.orbax-checkpoint-tmp/state/d/ab": [os_error_code=\'28\']')
  wrapped = RuntimeError("the save failed")  # as orbax re-raises it: the cause names the disk
  wrapped.__cause__ = tensorstore
  assert "/w/checkpoints/30.orbax-checkpoint-tmp/state/d/ab (No space left on device)" in str(
      io_error(wrapped))
  assert io_error(ValueError("a bug, not the disk")) is None
  assert io_error(FileNotFoundError(errno.ENOENT, "No such file", "/w/x")) is None
  for error in (full, denied):
    assert str(error).count(". ") == 0 and str(error).endswith(".")
