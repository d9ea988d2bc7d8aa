"""Finetuning a pretrained encoder on sentence(-pair) classification (GLUE-style).

The encoder's weights, shape and tokenizer come from an `--init` workdir (a
`tl-jax pretrain` run or a `tl-jax import-hf` import); the classification head
starts fresh. Builds a `Setup` for the shared loop; evaluation scores every
example of each eval split and keeps the most accurate parameters (on the first
split) in WORKDIR/best.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tl_jax import config as config_lib
from tl_jax.compress import apply as compress_apply
from tl_jax.compress import layout as compress_layout
from tl_jax.compress import training as compress_training
from tl_jax.config import FinetuneConfig
from tl_jax.data.classification import EncodedExamples, encode, make_classification_source
from tl_jax.data.loader import TrainLoader
from tl_jax.data.tokenizer import load_tokenizer
from tl_jax.errors import UserError
from tl_jax.models.classifier import ENCODER_PARAMS, Classifier
from tl_jax.models.encoder import MaskedLM, padded_vocab
from tl_jax.parallel import distributed
from tl_jax.parallel import sharding as shd
from tl_jax.parallel.mesh import make_mesh
from tl_jax.parallel.rules import rules_for
from tl_jax.train import flops, loop
from tl_jax.train.best import BestParams
from tl_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from tl_jax.train.loop import Setup, Timer, host_rows, log
from tl_jax.train.optimizer import optimizer, schedule
from tl_jax.train.state import init_state
from tl_jax.train.step import accumulate_and_update, split_micro, step_rng

MAX_UNKNOWN_FRACTION = 0.05  # more <unk> than this: the tokenizer was trained on other text


# ---------------------------------------------------------------------------
# Steps.


def _logits(model, params, batch, pad_id: int, deterministic: bool, rng=None):
  lengths = jnp.sum(batch["tokens"] != pad_id, axis=-1).astype(jnp.int32)
  return model.apply({"params": params}, batch["tokens"], deterministic=deterministic,
                     lengths=lengths, types=batch["types"],
                     rngs=None if deterministic else {"dropout": rng})


def train_step(state, batch: dict, *, model, tx, schedule, pad_id: int, grad_accum: int,
               compression=None):
  """One optimizer step; `compression` (compress/training.py) prunes on its schedule and runs
  the forward pass through fake quantization."""
  dropout_rng = step_rng(state)
  if compression is not None:
    state = compression.update_masks(state)

  def loss_sums(params, i, micro):
    if compression is not None:
      params = compression.forward(params, state.masks)
    logits = _logits(model, params, micro, pad_id, False, jax.random.fold_in(dropout_rng, i))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, micro["label"])
    return jnp.sum(losses), jnp.asarray(losses.shape[0], jnp.float32)

  return accumulate_and_update(state, split_micro(batch, grad_accum), loss_sums, tx=tx,
                               schedule=schedule, grad_accum=grad_accum)


def eval_step(params, batch: dict, *, model, pad_id: int, compression=None):
  """(loss sum, correct predictions, examples) over the rows whose weight is 1; under
  quantization-aware training, of the quantized model."""
  if compression is not None:
    params = compression.forward(params, compression.derived_masks(params))
  logits = _logits(model, params, batch, pad_id, True)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32)
  w = batch["weight"]
  return jnp.sum(losses * w), jnp.sum(correct * w), jnp.sum(w)


def eval_batches(rows: dict, batch_size: int, filler: np.ndarray) -> list[dict]:
  """All rows in batches of `batch_size`; the last is topped up with `filler` rows of weight 0
  (a short real sequence, so no row has zero length)."""
  n = len(rows["label"])
  batches = []
  for start in range(0, n, batch_size):
    chunk = {k: v[start:start + batch_size] for k, v in rows.items()}
    short = batch_size - len(chunk["label"])
    weight = np.concatenate([np.ones(len(chunk["label"]), np.float32), np.zeros(short, np.float32)])
    if short:
      chunk = {"tokens": np.concatenate([chunk["tokens"], np.repeat(filler[None], short, 0)]),
               "types": np.concatenate([chunk["types"], np.zeros((short,) + filler.shape, np.int32)]),
               "label": np.concatenate([chunk["label"], np.zeros(short, np.int32)])}
    batches.append({**chunk, "weight": weight})
  return batches


def filler_row(tokenizer, seq_len: int) -> np.ndarray:
  """A short real sequence (<s></s>) that tops up the last eval batch."""
  filler = np.full((seq_len,), tokenizer.pad_id, np.int32)
  filler[:2] = tokenizer.bos_id, tokenizer.eos_id
  return filler


# ---------------------------------------------------------------------------
# The pretrained encoder of the --init workdir.


@dataclasses.dataclass
class PretrainedEncoder:
  """An --init workdir: its pretraining config, tokenizer, and where its weights are read from."""
  workdir: str
  config: config_lib.Config

  @classmethod
  def open(cls, workdir: str) -> "PretrainedEncoder":
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
      raise UserError(f"--init={workdir} holds no config.json; point it at a `tl-jax pretrain` or "
                      "`tl-jax import-hf` workdir.")
    return cls(workdir, config_lib.load(path))

  def tokenizer(self):
    return load_tokenizer(os.path.join(self.workdir, "tokenizer"))

  def choose(self, which: str) -> str:
    """'latest' or 'best': what `init.checkpoint` (auto | latest | best) reads here."""
    latest = None
    if os.path.isdir(self._checkpoints()):  # (a Checkpointer would create the directory)
      ckpt = Checkpointer(self._checkpoints(), keep=1, async_save=False)
      latest = ckpt.latest_step()
      ckpt.close()
    has_best = BestParams(self.workdir, "eval_loss", higher_is_better=False).exists()
    if which == "auto":
      which = "latest" if latest is not None else "best"
    if (which == "latest" and latest is None) or (which == "best" and not has_best):
      raise UserError(f"--init={self.workdir} has no {which} parameters yet (init.checkpoint={which}); "
                      "train it further, or choose another init.checkpoint.")
    return which

  def _checkpoints(self) -> str:
    return os.path.join(os.path.abspath(self.workdir), "checkpoints")

  def abstract_state(self, mesh, rules, vocab_size: int, seq_len: int):
    """(abstract pretraining state, its shardings on `mesh`): what its checkpoints restore into.
    Outside any mesh context (eval_shape of the logical constraints needs that)."""
    pre = self.config
    init_fn = functools.partial(init_state, MaskedLM(pre.model, vocab_size), optimizer(pre.train),
                                pre.train.seed, np.zeros((1, seq_len), np.int32))
    abstract, shardings, _ = loop.sharded_state(init_fn, mesh, rules)
    return abstract, shardings

  def encoder_params(self, which: str, mesh, abstract, shardings) -> tuple[dict, str]:
    """(the encoder's parameters placed as `shardings` say, a description of where they came from)."""
    pre = self.config
    if which == "best":
      best = BestParams(self.workdir, "eval_loss", higher_is_better=False)
      try:
        params = best.restore(abstract_with_shardings(abstract.params, shardings.params))
      except (ValueError, KeyError, FileNotFoundError, OSError) as e:
        raise UserError(f"the best parameters in {best.directory} could not be read "
                        f"({str(e).splitlines()[0][:160]}); use init.checkpoint=latest.") from None
      described = best.describe()
    else:
      ckpt = Checkpointer(self._checkpoints(), keep=pre.checkpoint.keep, async_save=False)
      with jax.set_mesh(mesh):
        state, _ = ckpt.restore(abstract_with_shardings(abstract, shardings))
      ckpt.close()
      params = state.params
      described = f"the newest checkpoint (step {int(state.step)})"
    return {k: params[k] for k in ENCODER_PARAMS}, f"{described} of {self.workdir}"


def check_vocabulary(init: PretrainedEncoder, tokenizer, data) -> None:
  """The --init encoder must have been trained on this tokenizer, and on text like the task's."""
  pre = init.config.data
  if tokenizer.vocab_size != pre.vocab_size:
    raise UserError(f"the tokenizer in {init.workdir}/tokenizer has {tokenizer.vocab_size} pieces, "
                    f"but the model there was built for data.vocab_size={pre.vocab_size}; put back the "
                    "run's own tokenizer.")
  if data.source == "synthetic":
    imported = init.config.name.startswith("hf:")
    if pre.source != "synthetic" or imported:
      corpus = "an imported checkpoint" if imported else f"data.source={pre.source}"
      raise UserError(f"--init={init.workdir} was pretrained on {corpus}, so its vocabulary does "
                      "not cover the synthetic task; pretrain on the synthetic corpus or finetune "
                      "on tsv/tfds data.")
    if (pre.synthetic_seed, pre.synthetic_words) != (data.synthetic_seed, data.synthetic_words):
      raise UserError(f"--init={init.workdir} was pretrained on the synthetic language with seed "
                      f"{pre.synthetic_seed} and {pre.synthetic_words} words, but the task uses seed "
                      f"{data.synthetic_seed} and {data.synthetic_words} words; set data.synthetic_seed "
                      "and data.synthetic_words to match.")


def unknown_fraction(rows: dict, tokenizer) -> float:
  real = rows["tokens"] != tokenizer.pad_id
  return float(np.sum((rows["tokens"] == tokenizer.unk_id) & real) / max(np.sum(real), 1))


def workdir_tokenizer(workdir: str, init: PretrainedEncoder):
  """The finetuning run's copy of the --init tokenizer (so the run is self-contained), checked
  against the init's on resume."""
  own = os.path.join(workdir, "tokenizer")
  source = os.path.join(init.workdir, "tokenizer")
  if not os.path.isdir(source):
    raise UserError(f"--init={init.workdir} has no tokenizer/ directory; point it at a complete "
                    "`tl-jax pretrain` or `tl-jax import-hf` workdir.")
  # Process 0 makes the one copy; every process passes the barrier whatever it found, since
  # process 0's copy may already be there when another process looks.
  if not os.path.isdir(own) and jax.process_index() == 0:
    shutil.copytree(source, own + ".tmp", dirs_exist_ok=True)
    os.replace(own + ".tmp", own)
  distributed.barrier("tl_jax finetune tokenizer")
  loop.check_shared(own, workdir)
  ours, theirs = load_tokenizer(own), load_tokenizer(source)
  if ours.sha256() != theirs.sha256():
    raise UserError(f"{workdir}/tokenizer differs from the tokenizer of --init={init.workdir}, "
                    "whose run must have been redone; finetune it into a new --workdir.")
  return ours


def resolve_steps(config: FinetuneConfig, num_train: int) -> FinetuneConfig:
  """A copy with max_steps from `epochs` and warmup from `warmup_fraction` (the config.json keeps
  the fractions)."""
  resolved = copy.deepcopy(config)
  t = resolved.train
  if t.epochs > 0:
    t.max_steps = max(1, math.ceil(t.epochs * num_train / t.batch_size))
  if t.warmup_fraction > 0:
    t.warmup_steps = round(t.warmup_fraction * t.max_steps)
  if t.learning_rate == 0:
    t.learning_rate = default_learning_rate(config.model.d_model)
  return resolved


def default_learning_rate(d_model: int) -> float:
  """RoBERTa finetunes base (768) at 1e-5..3e-5 and large at 1e-5; narrower models take larger steps."""
  return float(np.clip(2e-5 * 768 / d_model, 1e-5, 1e-4))


# ---------------------------------------------------------------------------
# The task.


def build(config: FinetuneConfig, workdir: str, devices=None) -> Setup:
  mesh = make_mesh(config, devices)
  rules = rules_for(config.parallel.rules)
  data = config.data
  init = PretrainedEncoder.open(config.init.workdir)
  source = make_classification_source(data)
  source.check()
  check_vocabulary(init, init.tokenizer(), data)
  checkpoint_choice = None if config.init.from_scratch else init.choose(config.init.checkpoint)

  with Timer() as t:
    tokenizer = workdir_tokenizer(workdir, init)
    token_types = config.model.type_vocab_size >= 2  # BERT's [CLS] A [SEP] B [SEP] with segments
    encoded = lambda split: encode(source.examples(split), tokenizer, data.seq_len, data.truncation,
                                   token_types)
    train_rows, train_truncated = encoded("train")
    eval_rows = {split: encoded(split) for split in source.eval_splits}
  unknown = unknown_fraction(train_rows, tokenizer)
  if unknown > MAX_UNKNOWN_FRACTION:
    raise UserError(f"the tokenizer of --init={init.workdir} maps {unknown:.0%} of this task's tokens "
                    "to <unk>: it was trained on other text; pretrain on text like the task's.")
  num_train = len(train_rows["label"])
  log(f"data: {num_train:,} train examples ({train_truncated:,} truncated to {data.seq_len} tokens), "
      + ", ".join(f"{split} {len(rows['label']):,}" for split, (rows, _) in eval_rows.items())
      + f"; labels {', '.join(source.label_names)} ({t.seconds:.1f}s)")

  resolved = resolve_steps(config, num_train)
  train = resolved.train
  log(f"finetuning for {train.max_steps} steps of {train.batch_size} ("
      f"{train.max_steps * train.batch_size / num_train:.2f} epochs), warmup {train.warmup_steps}, "
      f"peak learning rate {train.learning_rate:g}")
  loader = TrainLoader(EncodedExamples(train_rows, data.seq_len), train.batch_size, train.seed,
                       jax.process_index(), jax.process_count())
  filler = filler_row(tokenizer, data.seq_len)
  eval_sets = {split: eval_batches(rows, config.eval.batch_size, filler)
               for split, (rows, _) in eval_rows.items()}

  vocab_size = padded_vocab(tokenizer.vocab_size)
  model = Classifier(config.model, vocab_size, len(source.label_names), config.head.pooling)
  tx = optimizer(train)
  compression = training_compression(config, model, data.seq_len, train.max_steps)
  init_fn = functools.partial(init_state, model, tx, train.seed, np.zeros((1, data.seq_len), np.int32),
                              compression.masked if compression else None)
  abstract, state_shardings, placed_init = loop.sharded_state(init_fn, mesh, rules)
  if checkpoint_choice is not None:
    pretrained_abstract = init.abstract_state(mesh, rules, vocab_size, data.seq_len)

  def fresh_state():
    state = placed_init()
    if checkpoint_choice is None:
      log("encoder: fresh weights (init.from_scratch=true)")
      return state
    pretrained, described = init.encoder_params(checkpoint_choice, mesh, *pretrained_abstract)
    log(f"encoder: {described}")
    return state.replace(params={**state.params, **pretrained})

  batch_sharding = {k: shd.batch_sharding(mesh, rules, 1 if k == "label" else 2)
                    for k in ("tokens", "types", "label")}
  eval_sharding = {**batch_sharding, "weight": shd.batch_sharding(mesh, rules, 1)}
  replicated = shd.replicated(mesh)
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule(train),
                           pad_id=tokenizer.pad_id, grad_accum=train.grad_accum,
                           compression=compression)
  train_fn = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model=model, pad_id=tokenizer.pad_id,
                                      compression=compression),
                    in_shardings=(state_shardings.params, eval_sharding), out_shardings=replicated)
  best = BestParams(workdir, "accuracy", higher_is_better=True)
  primary = source.eval_splits[0]

  def compile_eval(state):
    example = next(iter(eval_sets.values()))[0]
    compiled = eval_fn.lower(state.params, loop.abstract_batch(host_rows(example), eval_sharding)).compile()

    def evaluate(params, step):
      values = {}
      for split, batches in eval_sets.items():
        sums = np.zeros(3)
        for batch in batches:
          sums += np.array(jax.device_get(compiled(params, shd.global_batch(host_rows(batch), eval_sharding))))
        suffix = "" if split == primary else f"_{split}"
        values[f"eval_loss{suffix}"] = sums[0] / max(sums[2], 1.0)
        values[f"accuracy{suffix}"] = sums[1] / max(sums[2], 1.0)
      # While sparsity still rises, the model is not yet the pruned one asked for.
      at_target = compression is None or not compression.pruning or step >= compression.end_step
      if at_target and best.offer(params, step, values["accuracy"], split=primary):
        log(f"new best accuracy {values['accuracy']:.4f} on {primary} at step {step}: {best.directory}")
      return values
    return evaluate

  extra_keys = tuple(f"accuracy_{split}" for split in source.eval_splits[1:])
  return Setup(
      config=resolved, mesh=mesh, rules=rules, loader=loader,
      state_shardings=state_shardings, abstract_state=abstract, init_fn=fresh_state,
      train_fn=train_fn, batch_sharding=batch_sharding,
      tokens_per_step=train.batch_size * data.seq_len,
      flops_per_token=flops.encoder_flops_per_token(config.model, data.seq_len),
      compile_eval=compile_eval, eval_keys=("eval_loss", "accuracy") + extra_keys)


def training_compression(config: FinetuneConfig, model, seq_len: int, max_steps: int):
  """The run's pruning / quantization-aware training (compress/training.py), or None; shape
  conditions (N:M blocks, quantization groups) are checked here, before anything compiles."""
  if config.prune.method == "none" and config.qat.method == "none":
    return None
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, seq_len), np.int32)))
  layouts = compress_apply.flat_layouts(compress_layout.layouts(boxed["params"]))
  compress_apply.check_shapes(layouts, config.qat, config.prune)
  compression = compress_training.TrainingCompression(layouts, config.prune, config.qat, max_steps)
  p = config.prune
  if compression.pruning:
    target = f"{p.n}:{p.m}" if p.method == "nm" else f"sparsity {p.sparsity:g} ({p.schedule} schedule)"
    log(f"pruning {p.targets} to {target}, steps {compression.begin_step}..{compression.end_step}; "
        f"best parameters are kept from step {compression.end_step} on")
  if config.qat.method != "none":
    log(f"quantization-aware training: {config.qat.method} {config.qat.bits} bits on {config.qat.targets}")
  return compression


def run(config: FinetuneConfig, workdir: str, devices=None, on_ready=None) -> int:
  return loop.run(build(config, workdir, devices), workdir, on_ready)
