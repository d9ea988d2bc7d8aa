"""Checkpoints of a run through orbax: the sharded train state plus JSON metadata.

Each checkpoint holds two items: `state` (params, optimizer, step, RNG; restored
straight onto the current mesh, which may differ from the one that wrote it)
and `meta` (stopwatch, data position). Orbax publishes a checkpoint only once it
is complete, so a run killed mid-write leaves the previous one intact.
"""

from __future__ import annotations

import sys

import jax
import orbax.checkpoint as ocp

from tl_jax.errors import UserError


class Checkpointer:

  def __init__(self, directory: str, keep: int, async_save: bool = True):
    self.manager = ocp.CheckpointManager(
        directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    """Starts a save; with async saving only the device-to-host copy blocks."""
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore(self, abstract_state, step: int | None = None):
    """(state, meta) of the newest readable checkpoint (or of `step`), or None if there is none.

    A checkpoint that fails to read is reported and the one before it tried, so a
    damaged newest checkpoint never silently restarts the run from scratch.
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        if failures:
          print(f"tl-jax: warning: resumed from checkpoint {step} because newer ones could not be "
                f"read: {'; '.join(failures)}", file=sys.stderr)
        return restored.state, restored.meta
      except (ValueError, KeyError, FileNotFoundError, OSError) as e:
        failures.append(f"step {step}: {str(e).splitlines()[0][:200]}")
    if failures:
      raise UserError(f"no checkpoint in {self.manager.directory} could be read ({failures[0]}); "
                      "it may come from another model size or be damaged: use a new --workdir or "
                      "move the checkpoints away to start over.")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(abstract, shardings):
  """ShapeDtypeStructs that tell orbax where each restored array goes."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
