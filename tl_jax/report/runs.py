"""Finding workdirs under the report's DIR arguments and reading them into small records.

A workdir is a directory whose `config.json` is a tl_jax config tree (it has a `model`
section; a Hugging Face checkpoint's `config.json` does not). Everything here only
reads, through `Workdir`'s JSON readers (tl_jax/tasks/workdir.py): `config.json`,
`metrics.jsonl`, `best/best.json` and `compress.jsonl` (newest line per point).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

from tl_jax import config as config_lib
from tl_jax.errors import UserError
from tl_jax.tasks.workdir import BEST, COMPRESSED, CONFIG, CHECKPOINTS, TOKENIZER, Workdir

# Directories a run writes inside its workdir: never workdirs themselves, and large.
_INSIDE_WORKDIR = frozenset({CHECKPOINTS, BEST, TOKENIZER, "events", COMPRESSED})
# Keys a run may log with the number of training tokens it drew from (see data_tokens).
TOKEN_COUNT_KEYS = ("train_tokens", "data_tokens", "num_train_tokens")


# What differs between the seeds of one experiment: the seed, and --init's path (each seed's
# finetune starts from that seed's own pretraining run).
SEED_SETTINGS = ("train.seed", "init.workdir")


@dataclasses.dataclass(frozen=True, order=True)
class Shape:
  """A model size: encoder layers, decoder layers (translation only) and width."""
  num_layers: int
  d_model: int
  decoder_layers: int = 0

  @property
  def label(self) -> str:
    if self.decoder_layers:
      return f"{self.num_layers}+{self.decoder_layers}x{self.d_model}"
    return f"{self.num_layers}x{self.d_model}"

  @property
  def sort_key(self) -> tuple:
    # Roughly by the Transformer layers' weights (12 d^2 per layer), then depth.
    layers = self.num_layers + self.decoder_layers
    return (layers * self.d_model ** 2, layers, self.d_model)


@dataclasses.dataclass
class Run:
  """One workdir as the report sees it."""
  workdir: str  # absolute path
  name: str  # relative to the DIR argument it was found under, for labels
  task: str  # pretrain | translate | finetune
  shape: Shape
  config: dict
  metrics: list[dict]
  best: dict | None = None
  points: dict[str, dict] = dataclasses.field(default_factory=dict)  # compress.jsonl

  @property
  def preset(self) -> str:
    return str(self.config.get("name") or "")

  @property
  def params(self) -> int | None:
    """The run's own parameter count: as training logged it (since 2026-12-06), else a masked
    LM's from its config (report/regime.py), else where its compress.jsonl records one."""
    logged = next((int(m["params"]) for m in self.metrics if m.get("params")), None)
    if logged:
      return logged
    if self.task == "pretrain" and (self.config.get("data") or {}).get("vocab_size"):
      from tl_jax.report.regime import mlm_params
      try:
        return mlm_params(self.config)[0]
      except (TypeError, ValueError):  # a config of another version: no count
        pass
    for record in self.points.values():
      params = (record.get("model") or {}).get("params")
      if params:
        return int(params)
    return None

  @property
  def init_workdir(self) -> str:
    return str((self.config.get("init") or {}).get("workdir") or "")

  @property
  def max_train_seconds(self) -> float:
    """How far training got, in training seconds (0 for a run with no metric lines)."""
    return max((float(m.get("train_seconds") or 0.0) for m in self.metrics), default=0.0)

  @property
  def unfinished(self) -> str | None:
    """"unfinished: 57.3 of 60 training seconds" for a run given a seconds budget whose lines
    stop short of every end it could reach (the budget, its seconds schedule's end step,
    train.max_steps, train.target_eval_loss): one pre-empted or killed and not yet resumed,
    whose last numbers are not its answer. None otherwise, and for runs without a budget."""
    train = self.config.get("train") or {}
    budget = float(train.get("max_train_seconds") or 0.0)
    steps = [int(m["step"]) for m in self.train_lines()]
    if not budget or not steps or self.max_train_seconds >= budget:
      return None
    ends = [int(m["schedule_end_step"]) for m in self.metrics if m.get("schedule_end_step")]
    target = float(train.get("target_eval_loss") or 0.0)
    max_steps = int(train.get("max_steps") or 0)
    if ((max_steps and max(steps) >= max_steps) or (ends and max(steps) >= ends[-1])
        or (target and any(m["eval_loss"] <= target for m in self.eval_lines("eval_loss")))):
      return None
    return f"unfinished: {self.max_train_seconds:.1f} of {budget:g} training seconds"

  @property
  def settings(self) -> dict[str, object]:
    """{"section.key": value} of the config, with each field the run's tl_jax version did not
    yet have set to its default: a field added since (model.fp8, say) is not a difference
    between an old run and a new one that left it at its default."""
    return {**_default_settings(str(self.config.get("task") or "pretrain")),
            **flat_settings(self.config)}

  @property
  def seed_group(self) -> str:
    """What runs that differ only by their seed share: the settings without SEED_SETTINGS."""
    settings = self.settings
    for setting in SEED_SETTINGS:
      settings.pop(setting, None)
    return json.dumps(settings, sort_keys=True)

  @property
  def devices(self) -> tuple[str, ...]:
    """The devices it trained on ("8 x TPU v5 lite"), one entry per distinct value in the order
    of its sessions; () for a run whose tl_jax version did not record them (before 2026-12-06)."""
    return tuple(dict.fromkeys(str(m["devices"]) for m in self.metrics if m.get("devices")))

  def train_lines(self) -> list[dict]:
    return [m for m in self.metrics if _finite(m.get("loss"))]

  def eval_lines(self, key: str) -> list[dict]:
    return [m for m in self.metrics if _finite(m.get(key))]


def flat_settings(config: dict, prefix: str = "") -> dict[str, object]:
  """{"section.key": value} of a config's leaves."""
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(flat_settings(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


@functools.cache
def _default_settings(task: str) -> dict[str, object]:
  root = config_lib.ROOTS.get(task)
  # Through JSON, as config.json holds them (tuples become lists).
  return flat_settings(json.loads(json.dumps(config_lib.to_dict(root())))) if root else {}


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_params(params: int | None) -> str:
  if not params:
    return ""
  if params >= 1e9:
    return f"{params / 1e9:.1f}B"
  if params >= 1e7:
    return f"{params / 1e6:.0f}M"
  if params >= 1e6:
    return f"{params / 1e6:.1f}M"
  return f"{params / 1e3:.0f}K"


def _is_workdir_config(path: str) -> dict | None:
  """The config tree in `path`, or None where it is not a tl_jax config (or unreadable)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
    return None
  return data


def find_workdirs(root: str) -> list[tuple[str, str]]:
  """[(workdir, name)] under `root` (itself included), in sorted order.

  The walk stops at a workdir: runs sit beside each other (`d3-w256/pretrain`,
  `d3-w256/finetune`), never inside one another.
  """
  root = os.path.abspath(root)
  found = []
  for directory, subdirs, files in os.walk(root):
    subdirs.sort()
    if CONFIG in files and _is_workdir_config(os.path.join(directory, CONFIG)):
      rel = os.path.relpath(directory, root)
      found.append((directory, os.path.basename(root) if rel == "." else rel))
      subdirs.clear()
      continue
    subdirs[:] = [d for d in subdirs if d not in _INSIDE_WORKDIR and not d.startswith(".")]
  return found


def load_run(workdir: str, name: str) -> Run:
  config = _is_workdir_config(os.path.join(workdir, CONFIG)) or {}
  task = str(config.get("task") or "pretrain")
  model = config.get("model") or {}
  shape = Shape(int(model.get("num_layers") or 0), int(model.get("d_model") or 0),
                int(model.get("decoder_layers") or 0) if task == "translate" else 0)
  run = Workdir(workdir, None)  # the config as a plain dict: a report reads any version's files
  return Run(workdir=workdir, name=name, task=task, shape=shape, config=config,
             metrics=run.metrics(), best=run.best_info(), points=run.compress_points())


def load_runs(dirs: list[str]) -> list[Run]:
  """Every workdir under each of `dirs`, each once; UserError for a DIR that holds none."""
  runs, seen = [], set()
  for d in dirs:
    if not os.path.isdir(d):
      raise UserError(f"{d} is not a directory; pass workdirs or folders holding them "
                      "(a sweep root, for instance).")
    found = find_workdirs(d)
    if not found:
      raise UserError(f"no tl-jax workdir (a folder with a tl-jax config.json) was found under {d}; "
                      "pass a workdir of pretrain/translate/finetune or a folder that holds some.")
    for workdir, name in found:
      if workdir not in seen:
        seen.add(workdir)
        runs.append(load_run(workdir, name))
  return runs


def size_labels(runs: list[Run]) -> dict[Shape, str]:
  """{shape: 'LxW (NM)'}: the parameter count where some run of that shape has one, a
  pretraining run's (the masked LM's own) before a finetuned classifier's."""
  params = {}
  for run in sorted(runs, key=lambda r: r.task != "pretrain"):
    if run.params and run.shape not in params:
      params[run.shape] = run.params
  return {run.shape: (f"{run.shape.label} ({format_params(params[run.shape])})"
                      if run.shape in params else run.shape.label) for run in runs}


def data_tokens(run: Run) -> tuple[int | None, str]:
  """(training tokens the run drew from, how that is known) for RQ4.

  The config's `data.max_train_tokens`; 0 or absent means the whole source, whose size
  is known only if the run logged it (one of TOKEN_COUNT_KEYS on a metrics line).
  """
  configured = int((run.config.get("data") or {}).get("max_train_tokens") or 0)
  if configured > 0:
    return configured, "data.max_train_tokens"
  for line in run.metrics:
    for key in TOKEN_COUNT_KEYS:
      if _finite(line.get(key)) and line[key] > 0:
        return int(line[key]), f"logged {key}"
  return None, "all tokens (count not logged)"
