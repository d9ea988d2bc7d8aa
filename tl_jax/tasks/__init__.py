"""Tasks: what one kind of run is (masked-LM pretraining, translation, classification).

A `Task` (tasks/base.py) owns its model built from the config, its example batch, its train
step (the loss), its fixed evaluation (`Scoring`, tasks/scoring.py), the metric that picks
`best/` and how its parameters are restored; a `Workdir` (tasks/workdir.py) opens a run
directory. The training loop, `tl-jax compress`, `translate-file`, the sweep and the report
reach runs only through these two.

Importing this package is light (no jax): `task_for` imports the task's module when asked.
"""

from __future__ import annotations

from tl_jax.tasks.metrics import COMMANDS, Metric, metric_of  # noqa: F401


def task_for(config):
  """The Task of a config tree (`config.task` says which)."""
  if config.task == "pretrain":
    from tl_jax.tasks.masked_lm import MaskedLMTask as cls
  elif config.task == "translate":
    from tl_jax.tasks.translation import TranslationTask as cls
  elif config.task == "finetune":
    from tl_jax.tasks.classification import ClassificationTask as cls
  else:
    raise ValueError(f"no task trains config.task={config.task!r}")
  return cls(config)


def setup(config, workdir: str, devices=None):
  """The shared loop's Setup for `config` in `workdir` (train/loop.py)."""
  return task_for(config).setup(workdir, devices)


def run(config, workdir: str, devices=None, on_ready=None) -> int:
  """Trains `config` in `workdir` until a stop condition; returns the exit code. `devices`
  defaults to all (tests pass subsets to compare meshes in one process)."""
  from tl_jax.train import loop
  return loop.run(setup(config, workdir, devices), workdir, on_ready)
