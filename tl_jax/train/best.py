"""The parameters of a run's best evaluation so far, kept in WORKDIR/best.

Apart from the rolling checkpoints (which keep the newest steps for resuming),
`best/params` holds parameters only, enough to translate, classify or start a
finetuning run, and `best/best.json` names them: the step, the metric and its
value, with a checksum of the parameters (as checkpoints have: orbax reads flipped bytes
without complaint), checked on every restore. `best.json` is written after the parameters,
so it never names a missing save. `tl-jax import-hf` writes the same layout for imported
checkpoints.
"""

from __future__ import annotations

import json
import os

import jax

from tl_jax.train.checkpoint import fingerprint, verify


class BestParams:

  def __init__(self, workdir: str, metric: str, higher_is_better: bool):
    self.directory = os.path.join(os.path.abspath(workdir), "best")
    self.params_path = os.path.join(self.directory, "params")
    self.info_path = os.path.join(self.directory, "best.json")
    self.metric = metric
    self.higher_is_better = higher_is_better
    self.value = self.info().get(metric) if self.exists() else None

  def exists(self) -> bool:
    return os.path.exists(self.info_path)

  def info(self) -> dict:
    with open(self.info_path) as f:
      return json.load(f)

  def improves(self, value: float) -> bool:
    if self.value is None:
      return True
    return value > self.value if self.higher_is_better else value < self.value

  def offer(self, params, step: int, value: float, **extra) -> bool:
    """Saves `params` if `value` beats the best so far; returns whether it did."""
    if not self.improves(value):
      return False
    self.save(params, {"step": step, "metric": self.metric, self.metric: value, **extra})
    self.value = value
    return True

  def save(self, params, info: dict) -> None:
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(self.params_path, params, force=True)
    info = {**info, "checksum": fingerprint(params)[0]}  # every process: the params are sharded
    if jax.process_index() == 0:
      os.makedirs(self.directory, exist_ok=True)
      with open(self.info_path + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
      os.replace(self.info_path + ".tmp", self.info_path)

  def restore(self, abstract_params):
    """The parameters; ValueError where they differ from best.json's checksum (best/ written
    before checksums existed is taken as it is)."""
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore(self.params_path, abstract_params)
    verify(params, self.info())
    return params

  def describe(self) -> str:
    info = self.info()
    value = info.get(self.metric)
    shown = f"{self.metric} {value:.4g}" if isinstance(value, (int, float)) else info.get("source", "")
    return f"the best parameters (step {info.get('step')}, {shown})"
