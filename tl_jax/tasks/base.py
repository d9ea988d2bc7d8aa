"""The Task interface: what one kind of run owns, from its model to its best metric.

Like T5X's `BaseModel`, a task is the one place that knows its model and its data; unlike
it, a task also owns its data preparation and evaluation set, because tl_jax runs each task
end to end (train, evaluate, compress) from one config. A subclass supplies:

  module, or model(vocab_size)         the Flax module, built from the config
  example_input()                      what `model.init` takes (one row)
  train_step(state, batch, ...)        one optimizer step (its loss), through
                                       train/step.accumulate_and_update
  batch_shardings(mesh, rules)         how a training batch is laid out
  flops_per_token(model)               for MFU
  prepare(workdir, mesh, rules)        tokenizer, training loader and the eval Scoring
  scoring(tokenizer, model, mesh, ...) the fixed evaluation (tasks/scoring.py)
  loader(tokenizer)                    the training batches (compression calibrates on them)
  forward(model, params, batch, tok)   a deterministic forward pass (compression calibration)

and may override `initial_state` (finetuning starts from a pretrained encoder),
`masked_subtree` (pruning masks in the state), `best_from_step` and `frozen_masks`.
Everything else (the sharded state, the jitted step, the Setup the loop runs, restoring from a
workdir) is written once here.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, ClassVar

import jax

from tl_jax.data.loader import TrainLoader
from tl_jax.models.encoder import padded_vocab
from tl_jax.parallel import sharding as shd
from tl_jax.parallel.mesh import make_mesh
from tl_jax.parallel.rules import rules_for
from tl_jax.tasks.metrics import Metric, metric_of
from tl_jax.tasks.scoring import Evaluator, Scoring
from tl_jax.train import loop
from tl_jax.train.optimizer import optimizer, schedule
from tl_jax.train.state import init_state


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """What a train step needs of a tokenizer, for callers that have none (bench/speed.py)."""
  vocab_size: int
  pad_id: int = 0


@dataclasses.dataclass
class TaskData:
  """What `prepare` made for a training run."""
  tokenizer: Any
  loader: Any  # TrainLoader: .batch(step), .iterate(start, prefetch)
  scoring: Scoring
  # The training data's size in tokens, where the task knows it (what data.max_train_tokens
  # caps); on the first metrics line of each session, so the report can count passes over a
  # source read whole.
  train_tokens: int | None = None


class Task(abc.ABC):
  command: ClassVar[str]  # config.task, and the `tl-jax` command that trains it
  console_keys: ClassVar[tuple[str, ...]]  # eval values shown on the console
  module: ClassVar[Any] = None  # the model class, built by `model` from (model config, vocab)

  def __init__(self, config):
    self.config = config

  @property
  def metric(self) -> Metric:
    """The metric that picks `best/`, and the one compression is judged by."""
    return metric_of(self.command)

  # -- the model and its step ---------------------------------------------------------

  def model(self, vocab_size: int, *, training: bool = False):
    """The Flax module; `vocab_size` is the tokenizer's (the embedding pads it to a multiple
    of 128 rows). `training`: the train step's module (see `model_config`)."""
    return self.module(self.model_config(training), padded_vocab(vocab_size))

  def model_config(self, training: bool = False):
    """The model config a module is built from. model.fp8 and model.fused_qkv hold for the train
    step alone: evaluation, decoding and compression compute in model.dtype, with a Dense module
    applying each kernel, as quantization and GPTQ expect (the parameters are the same)."""
    config = self.config.model
    return config if training else dataclasses.replace(config, fp8=False, fused_qkv=False)

  @abc.abstractmethod
  def example_input(self):
    """What `model.init` is called with: one row of the model's input."""

  @abc.abstractmethod
  def train_step(self, state, batch, *, model, tx, schedule, tokenizer):
    """(new state, metrics) after one optimizer step on a global batch; `tokenizer` gives the
    vocabulary's size and special ids (anything with `vocab_size` and `pad_id` will do)."""

  @abc.abstractmethod
  def batch_shardings(self, mesh, rules):
    """A sharding, or a tree of them matching a training batch."""

  @abc.abstractmethod
  def flops_per_token(self, model) -> float:
    """Training FLOPs per token (train/flops.py's convention)."""

  def tokens_per_step(self) -> int:
    return self.config.train.batch_size * self.config.data.seq_len

  def masked_subtree(self, model):
    """`init_state`'s `masked`: the sub-tree of parameters that carries pruning masks, or None."""
    return None

  def state_spec(self, vocab_size: int, mesh, rules):
    """(abstract unboxed train state, its shardings on `mesh`): what checkpoints restore into.
    Outside any mesh context (eval_shape of the logical constraints needs that)."""
    abstract, shardings, _ = self._sharded_state(self.model(vocab_size), mesh, rules)
    return abstract, shardings

  def _sharded_state(self, model, mesh, rules):
    tx = optimizer(self.config.train)
    init_fn = functools.partial(init_state, model, tx, example_tokens=self.example_input(),
                                masked=self.masked_subtree(model))
    return loop.sharded_state(init_fn, mesh, rules, self.config.train.seed)

  def program(self, tokenizer, mesh, rules) -> loop.Program:
    """The model, its sharded state and the jitted train step: what the loop runs and
    `bench/speed.py` times."""
    model = self.model(tokenizer.vocab_size)
    abstract, state_shardings, placed_init = self._sharded_state(model, mesh, rules)
    batch_sharding = self.batch_shardings(mesh, rules)
    step = functools.partial(self.train_step, model=self.model(tokenizer.vocab_size, training=True),
                             tx=optimizer(self.config.train),
                             schedule=schedule(self.config.train), tokenizer=tokenizer)
    train_fn = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                       out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0)
    return loop.Program(model=model, abstract_state=abstract, state_shardings=state_shardings,
                        init_fn=placed_init, batch_sharding=batch_sharding, train_fn=train_fn,
                        flops_per_token=self.flops_per_token(model))

  # -- data and evaluation ------------------------------------------------------------

  @abc.abstractmethod
  def prepare(self, workdir: str, mesh, rules) -> TaskData:
    """Checks and prepares the data of a training run in `workdir` (logging what it found);
    may resolve the config further (finetuning sets max_steps from epochs)."""

  @abc.abstractmethod
  def scoring(self, tokenizer, model, mesh, rules, *, compression: bool = False,
              max_examples: int = 0, batch_size: int = 0) -> Scoring:
    """The fixed evaluation. With `compression`: only the primary split, at most `max_examples`
    examples (0 = all), and, where the task batches examples freely (classification), batches
    of `batch_size` rows (0 = the eval config's); no compression of the run's own (QAT)."""

  @abc.abstractmethod
  def loader(self, tokenizer):
    """The training loader (TrainLoader) over the task's training data."""

  @abc.abstractmethod
  def forward(self, model, params, batch, tokenizer):
    """The deterministic forward pass on a training batch (compression's calibration)."""

  def real_positions(self, batch, tokenizer):
    """[B, S] 0/1 of the positions of a training batch that hold text, for calibration; None
    where all do (packed rows)."""
    return None

  def initial_state(self, program: loop.Program, mesh, rules):
    """() -> the state a fresh run starts from (default: the program's random init)."""
    return program.init_fn

  def best_from_step(self) -> int:
    """From which step an eval may become `best/` (pruning keeps it until the target sparsity)."""
    return 0

  def frozen_masks(self, flat_params: dict, layouts: dict) -> dict:
    """{path: mask} a compression grid must keep (weights pruned while training); default none."""
    return {}

  def train_loader(self, sequences) -> TrainLoader:
    """Batches of the training rows `sequences`: this process's rows of step i's batch."""
    train = self.config.train
    return TrainLoader(sequences, train.batch_size, train.seed, jax.process_index(),
                       jax.process_count())

  def task_data(self, tokenizer, sequences, mesh, rules) -> TaskData:
    """What `prepare` returns for a run that trains on `sequences` and is scored as `scoring` says."""
    model = self.model(tokenizer.vocab_size)
    return TaskData(tokenizer, self.train_loader(sequences),
                    self.scoring(tokenizer, model, mesh, rules))

  # -- the run ------------------------------------------------------------------------

  def setup(self, workdir: str, devices=None) -> loop.Setup:
    """Everything the shared loop (train/loop.py) needs to train this task in `workdir`."""
    mesh = make_mesh(self.config, devices)  # mesh errors come before any data work
    rules = rules_for(self.config.parallel.rules)
    data = self.prepare(workdir, mesh, rules)
    program = self.program(data.tokenizer, mesh, rules)
    program = dataclasses.replace(program, init_fn=self.initial_state(program, mesh, rules))
    evaluator = Evaluator(data.scoring, program.state_shardings.params, out_dir=workdir)

    def compile_eval(state):
      evaluator.compile(state.params)
      return evaluator

    from tl_jax.tasks.workdir import Workdir
    return loop.Setup(config=self.config, mesh=mesh, rules=rules, program=program,
                      loader=data.loader, tokens_per_step=self.tokens_per_step(),
                      compile_eval=compile_eval, eval_keys=self.console_keys,
                      best=Workdir(workdir, self.config).best(),
                      best_from_step=self.best_from_step(), best_split=data.scoring.primary,
                      train_tokens=data.train_tokens)
