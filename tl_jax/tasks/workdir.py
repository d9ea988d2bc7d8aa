"""A run directory and everything in it, opened once.

    config.json      the resolved config tree (its `task` says which Task ran)
    metrics.jsonl    one JSON object a line: train lines and eval lines (each session's first
                     also names its devices)
    tokenizer/       the run's own tokenizer
    checkpoints/     orbax train states, for resuming (train/checkpoint.py)
    best/            the parameters of the best eval, named in best/best.json (train/best.py)
    compress.jsonl   one line per compression point (`tl-jax compress`)
    compressed/      packed exports of compression points
    decodes/         translation hypotheses per eval

`Workdir.open` is what every command that reads a finished or running run uses: the
compression grid, `translate-file`, finetuning's `--init`, the benchmarks. The readers of
JSON files (`metrics`, `best_info`, `compress_points`) need no jax, so the report and the
sweep use them too; everything that touches arrays imports jax when called.
"""

from __future__ import annotations

import json
import os

from tl_jax import config as config_lib
from tl_jax.errors import UserError
from tl_jax.tasks.metrics import COMMANDS, Metric, metric_of

CONFIG = "config.json"
METRICS = "metrics.jsonl"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
BEST = "best"
COMPRESS_RESULTS = "compress.jsonl"
COMPRESSED = "compressed"
DECODES = "decodes"

_WHAT = {"pretrain": "`tl-jax pretrain` (or `tl-jax import-hf`)", "translate": "`tl-jax translate`",
         "finetune": "`tl-jax finetune`"}


def describe_commands(commands) -> str:
  return " or ".join(_WHAT[c] for c in commands)


def read_jsonl(path: str) -> list[dict]:
  """The JSON objects of `path`, a line each; a line cut short (a run killed mid-write) is
  skipped, and a missing file is empty."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      if line.strip():
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict):
          out.append(record)
  return out


class Workdir:
  """One run directory: its config, task, tokenizer and parameters (latest or best)."""

  def __init__(self, path: str, config):
    self.path = path
    self.config = config
    self._task = None

  @classmethod
  def open(cls, path: str, *, role: str = "--workdir", commands=COMMANDS) -> "Workdir":
    """The workdir at `path`, whose run must be one of `commands`; else a UserError naming
    `role` (the flag that pointed here) and what to point it at."""
    wanted = describe_commands(commands)
    if not os.path.isdir(path):
      raise UserError(f"{role}={path} does not exist; point it at a {wanted} workdir.")
    config_path = os.path.join(path, CONFIG)
    if not os.path.exists(config_path):
      raise UserError(f"{role}={path} holds no {CONFIG}; point it at a {wanted} workdir.")
    config = config_lib.load(config_path)
    if config.task not in commands:
      raise UserError(f"{role}={path} is a `tl-jax {config.task}` run; point it at a {wanted} "
                      "workdir.")
    return cls(path, config)

  # -- files ------------------------------------------------------------------------

  def file(self, *parts: str) -> str:
    return os.path.join(self.path, *parts)

  @property
  def checkpoints(self) -> str:
    return os.path.join(os.path.abspath(self.path), CHECKPOINTS)

  def metrics(self) -> list[dict]:
    return read_jsonl(self.file(METRICS))

  def best_info(self) -> dict | None:
    """best/best.json, or None where it is missing or unreadable."""
    try:
      with open(self.file(BEST, "best.json")) as f:
        info = json.load(f)
    except (OSError, ValueError):
      return None
    return info if isinstance(info, dict) else None

  def compress_points(self) -> dict[str, dict]:
    """{point name: its newest compress.jsonl line}, in the order points first appeared."""
    points: dict[str, dict] = {}
    for record in read_jsonl(self.file(COMPRESS_RESULTS)):
      if "point" in record:
        points[record["point"]] = record
    return points

  # -- the task and its pieces ------------------------------------------------------

  @property
  def metric(self) -> Metric:
    return metric_of(self.config.task)

  @property
  def task(self):
    if self._task is None:
      from tl_jax.tasks import task_for
      self._task = task_for(self.config)
    return self._task

  def tokenizer(self):
    from tl_jax.data.tokenizer import load_tokenizer
    return load_tokenizer(self.file(TOKENIZER))

  def one_device(self):
    """(mesh, rules) on the first device, whatever mesh trained the run (checkpoints restore
    onto any mesh); the config's parallel settings are set to match."""
    import jax
    from tl_jax.config import ParallelConfig
    from tl_jax.parallel.mesh import make_mesh
    from tl_jax.parallel.rules import rules_for
    self.config.parallel = ParallelConfig(data=1)
    return make_mesh(self.config, jax.devices()[:1]), rules_for(self.config.parallel.rules)

  def best(self):
    """The run's BestParams (train/best.py), judged by the task's metric."""
    from tl_jax.train.best import BestParams
    return BestParams(self.path, self.metric.key, higher_is_better=self.metric.higher_is_better)

  def latest_step(self) -> int | None:
    """The newest checkpoint's step, or None (without creating checkpoints/)."""
    if not os.path.isdir(self.checkpoints):
      return None
    from tl_jax.train.checkpoint import Checkpointer
    ckpt = Checkpointer(self.checkpoints, keep=1, async_save=False)
    try:
      return ckpt.latest_step()
    finally:
      ckpt.close()

  def choose(self, which: str, *, role: str = "--workdir", field: str = "checkpoint") -> str:
    """'latest' or 'best' for `which` = auto (the newest checkpoint, else best/) | latest | best;
    UserError where the run has no such parameters yet."""
    latest = self.latest_step()
    has_best = self.best().exists()
    if which == "auto":
      which = "latest" if latest is not None else "best"
    if which == "latest" and latest is None:
      raise UserError(f"{role}={self.path} has no checkpoints yet ({field}=latest); train it "
                      f"further, or set {field}=best.")
    if which == "best" and not has_best:
      raise UserError(f"{role}={self.path} has no best parameters yet (no best/best.json); let the "
                      f"run evaluate at least once, or set {field}=latest.")
    return which

  def state_spec(self, mesh, rules):
    """(abstract train state, its shardings on `mesh`) of this run's task and tokenizer."""
    return self.task.state_spec(self.tokenizer().vocab_size, mesh, rules)

  def restore_state(self, mesh, rules, step: int | None = None, spec=None):
    """The train state of the newest checkpoint (or of `step`), placed on `mesh`; `spec` is
    `state_spec(mesh, rules)` where the caller has it."""
    import jax

    from tl_jax.train.checkpoint import Checkpointer, abstract_with_shardings
    abstract, shardings = spec or self.state_spec(mesh, rules)
    ckpt = Checkpointer(self.checkpoints, keep=self.config.checkpoint.keep, async_save=False)
    try:
      with jax.set_mesh(mesh):
        restored = ckpt.restore(abstract_with_shardings(abstract, shardings), step)
    finally:
      ckpt.close()
    if restored is None:
      raise UserError(f"{self.path} has no checkpoint yet; train it first.")
    return restored[0]

  def restore_params(self, which: str, mesh, rules, *, role: str = "--workdir", spec=None):
    """(parameters placed on `mesh`, where they came from) for `which` = latest | best."""
    from tl_jax.train.checkpoint import abstract_with_shardings
    spec = spec or self.state_spec(mesh, rules)
    if which == "latest":
      state = self.restore_state(mesh, rules, spec=spec)
      return state.params, f"the newest checkpoint (step {int(state.step)}) of {self.path}"
    abstract, shardings = spec
    best = self.best()
    try:
      params = best.restore(abstract_with_shardings(abstract.params, shardings.params))
    except (ValueError, KeyError, FileNotFoundError, OSError) as e:
      raise UserError(f"the best parameters in {best.directory} could not be read "
                      f"({str(e).splitlines()[0][:160]}); use the latest checkpoint instead "
                      f"({role} with checkpoint=latest).") from None
    return params, f"{best.describe()} of {self.path}"


# ---------------------------------------------------------------------------
# A training run's tokenizer, made once per workdir.


def check_shared(path: str, workdir: str) -> None:
  """Every process must see what process 0 wrote: orbax checkpoints need one shared workdir too."""
  import jax
  if not os.path.exists(path):
    raise UserError(f"process {jax.process_index()} does not see {path}, which process 0 wrote: the "
                    f"workdir {workdir} is not shared between the hosts; put --workdir on a file system "
                    "every host mounts (NFS, Filestore, a gcsfuse bucket).")


def trained_tokenizer(workdir: str, source, data, cache_dir: str):
  """The run's tokenizer: the workdir's own copy if it has one, else trained (or cached) and copied.

  With several processes, process 0 makes it and the others read the same file: tokenizers
  trained separately on each host could differ, and then so would the token ids.
  """
  import shutil

  import jax

  from tl_jax.data.tokenizer import MODEL_FILE, Tokenizer, cached_tokenizer
  from tl_jax.parallel import distributed
  path = os.path.join(workdir, TOKENIZER, MODEL_FILE)
  if not os.path.exists(path) and jax.process_index() == 0:
    trained = cached_tokenizer(source, data, cache_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copy(trained.path, path + ".tmp")
    os.replace(path + ".tmp", path)
  distributed.barrier("tl_jax workdir tokenizer")
  check_shared(path, workdir)
  tokenizer = Tokenizer(path)
  if tokenizer.vocab_size != data.vocab_size:  # else the checkpoints fail to load, less clearly
    raise UserError(f"{path} has {tokenizer.vocab_size} pieces but data.vocab_size="
                    f"{data.vocab_size}, so it is not this run's tokenizer; put back the run's own "
                    "tokenizer or start a new --workdir.")
  return tokenizer


def copied_tokenizer(workdir: str, init: Workdir):
  """The run's copy of the tokenizer of `init` (finetuning's --init, so that the run is
  self-contained), checked against the original on resume."""
  import shutil

  import jax

  from tl_jax.data.tokenizer import load_tokenizer
  from tl_jax.parallel import distributed
  own, source = os.path.join(workdir, TOKENIZER), init.file(TOKENIZER)
  if not os.path.isdir(source):
    raise UserError(f"--init={init.path} has no tokenizer/ directory; point it at a complete "
                    "`tl-jax pretrain` or `tl-jax import-hf` workdir.")
  # Process 0 makes the one copy; every process passes the barrier whatever it found, since
  # process 0's copy may already be there when another process looks.
  if not os.path.isdir(own) and jax.process_index() == 0:
    shutil.copytree(source, own + ".tmp", dirs_exist_ok=True)
    os.replace(own + ".tmp", own)
  distributed.barrier("tl_jax finetune tokenizer")
  check_shared(own, workdir)
  ours, theirs = load_tokenizer(own), load_tokenizer(source)
  if ours.sha256() != theirs.sha256():
    raise UserError(f"{workdir}/tokenizer differs from the tokenizer of --init={init.path}, "
                    "whose run must have been redone; finetune it into a new --workdir.")
  return ours
