"""Checkpoints of a run through orbax: the sharded train state plus JSON metadata.

Each checkpoint holds two items: `state` (params, optimizer, step, RNG; restored
straight onto the current mesh, which may differ from the one that wrote it)
and `meta` (stopwatch, data position, and a checksum of the state). Orbax
publishes a checkpoint only once it is complete, so a run killed mid-write
leaves the previous one intact. What orbax cannot see, the checksum catches:
bytes changed on disk restore without an error, but not with the same sums.

A checkpoint that cannot be read (or whose sums differ) is moved aside to
`STEP.unreadable` with a warning naming it, and the one before it is used; a run
never restarts from scratch while it has checkpoints, readable or not.
"""

from __future__ import annotations

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from tl_jax.errors import TrainingDiverged, UserError, io_failure, io_fix

UNREADABLE_SUFFIX = ".unreadable"


class Checkpointer:

  def __init__(self, directory: str, keep: int, async_save: bool = True):
    self.directory = directory
    self.manager = ocp.CheckpointManager(
        directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))
    self._writing = None  # the step of a save that may still be running in the background

  def ensure_writable(self) -> None:
    """Fails now, rather than at the first save an hour in, if this process cannot write here."""
    probe = os.path.join(self.directory, f".tl_jax_write_test.{os.getpid()}")
    try:
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as e:
      raise UserError(f"checkpoints cannot be written to {self.directory} ({e.strerror}); "
                      f"{io_fix(e.errno)}, then re-run the same command.") from None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    """Starts a save; with async saving only the checksum and the device-to-host copy block.

    Raises TrainingDiverged rather than save a state holding NaN or infinity."""
    sums, finite = fingerprint(state)
    if not finite:
      raise TrainingDiverged(
          f"the parameters became non-finite by step {step} although the loss was finite; lower "
          "train.learning_rate (a changed config needs --override), then re-run: the run resumes "
          f"from {self.kept()}.")
    self.wait()  # orbax waits for the previous save anyway; a failure then is that save's
    self._writing = step
    self._guard(lambda: self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave({**meta, "checksum": sums})),
        force=True))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore(self, abstract_state, step: int | None = None, set_aside: bool = False):
    """(state, meta) of the newest readable checkpoint (or of `step`), or None if there is none.

    Newer checkpoints that fail to read, or whose checksum differs, are named in a warning and,
    with `set_aside` (the run that owns them), moved to STEP.unreadable so that it can save
    those steps again. If none can be read, UserError: never a silent restart from scratch.
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    failures = []
    for candidate in steps:
      try:
        restored = self.manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        verify(restored.state, restored.meta)
      except Exception as e:  # orbax raises plain Exception for unreadable TensorStore data
        failures.append((candidate, _root_cause(e)))
        continue
      if failures:
        self._report_unreadable(failures, candidate, set_aside)
      return restored.state, restored.meta
    if failures:
      bad, reason = failures[0]
      raise UserError(f"no checkpoint in {self.directory} could be read (step {bad}: {reason}); it "
                      "may come from another model size or be damaged: use a new --workdir or move "
                      "the checkpoints away to start over.")
    return None

  def _report_unreadable(self, failures, used: int, set_aside: bool) -> None:
    """Warns about each unreadable checkpoint; with `set_aside`, moves it out of orbax's sight
    (kept for inspection)."""
    for bad, reason in failures:
      path = os.path.join(self.directory, str(bad))
      moved = ""
      if set_aside:
        aside, n = path + UNREADABLE_SUFFIX, 1
        while os.path.exists(aside):
          aside, n = f"{path}{UNREADABLE_SUFFIX}.{n}", n + 1
        if jax.process_index() == 0:
          os.rename(path, aside)
        moved = f" it was moved to {aside} and"
      if jax.process_index() == 0:
        print(f"tl-jax: warning: checkpoint {bad} ({path}) cannot be read ({reason});{moved} "
              f"checkpoint {used} is used instead.", file=sys.stderr, flush=True)
    if set_aside:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("tl_jax_checkpoints_set_aside")
      self.manager.reload()

  def wait(self) -> None:
    self._guard(self.manager.wait_until_finished)
    self._writing = None

  def close(self) -> None:
    try:
      self.wait()
    except BaseException:
      try:  # the failure being raised says what matters; closing must not replace it
        self.manager.close()
      except Exception:
        pass
      raise
    self.manager.close()

  def _guard(self, action) -> None:
    """Runs an orbax call; a full disk or a read-only directory becomes one sentence naming the
    checkpoint that failed (with async saving, an earlier one) and the one that is kept."""
    try:
      action()
    except Exception as e:
      failure = io_failure(e)
      if failure is None:
        raise
      code, _ = failure
      failed = self._writing
      self._writing = None
      what = f"checkpoint {failed}" if failed is not None else "a checkpoint"
      raise UserError(f"{what} could not be written to {self.directory} ({os.strerror(code)}); "
                      f"{io_fix(code)}, then re-run the same command: it resumes from "
                      f"{self._on_disk()}.") from None

  def kept(self) -> str:
    """The newest complete checkpoint, in words (what a re-run resumes from), once a save in
    flight has finished or failed."""
    try:
      self.wait()
    except UserError:
      pass  # that save failed: the newest one on disk is what is left
    return self._on_disk()

  def _on_disk(self) -> str:
    steps = [int(n) for n in os.listdir(self.directory) if n.isdigit()] if os.path.isdir(
        self.directory) else []
    return f"checkpoint {max(steps)}, which is intact" if steps else "the start (no checkpoint yet)"


_SHAPES = re.compile(r"Requested shape: (\([^)]*\)) is not compatible with the stored shape: "
                     r"(\([^)]*\))")
_OCDBT_PATH = re.compile(r' in OCDBT database at local file "[^"]*"')


def _root_cause(e: BaseException) -> str:
  """The first line of the innermost error (orbax wraps TensorStore's specific one); a shape
  mismatch in words, without orbax's advice to disable the check."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  text = str(e).strip()
  shapes = _SHAPES.search(text)
  if shapes:
    return f"it stores an array of shape {shapes.group(2)} where this model has {shapes.group(1)}"
  if not text:
    return type(e).__name__
  line = _OCDBT_PATH.sub("", text.splitlines()[0])  # the checkpoint is named already
  return line if len(line) <= 240 else line[:240].rsplit(" ", 1)[0] + " ..."


# ---------------------------------------------------------------------------
# Checksums: one uint32 sum of the bit patterns of each array. Integer sums do not depend on
# the order of addition, so they agree across meshes, shardings and hosts.


def _bit_sum(x) -> jax.Array:
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)  # 8 bytes: two words each
  return jnp.sum(bits, dtype=jnp.uint32)


@jax.jit
def _fingerprint(state):
  leaves = jax.tree.leaves(state)
  floats = [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.stack([_bit_sum(x) for x in leaves]), jnp.all(jnp.stack(floats or [jnp.bool_(True)]))


def fingerprint(state) -> tuple[list[int], bool]:
  """(per-array checksums in tree order, whether every float is finite)."""
  sums, finite = jax.device_get(_fingerprint(state))
  return [int(s) for s in np.asarray(sums)], bool(finite)


def verify(state, meta: dict) -> None:
  """Raises ValueError naming the first array whose checksum differs from the saved one
  (checkpoints written before checksums existed are taken as they are)."""
  saved = meta.get("checksum") if isinstance(meta, dict) else None
  if saved is None:
    return
  sums, _ = fingerprint(state)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  if len(saved) != len(sums):
    raise ValueError(f"it holds {len(sums)} arrays but its checksum covers {len(saved)}")
  for path, a, b in zip(paths, sums, saved):
    if a != b:
      raise ValueError(f"the contents of {path} differ from the checksum saved with it")


def abstract_with_shardings(abstract, shardings):
  """ShapeDtypeStructs that tell orbax where each restored array goes."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
