"""The one typed config tree of a run, command-line overrides, and validation.

A config is plain data: nested dataclasses whose fields have scalar types
(int, float, bool, str). Presets live in `configs/*.py` as functions returning a
`Config`; the command line loads a preset, applies `--config.a.b=VALUE`
overrides, validates, and writes the resolved tree to `WORKDIR/config.json`.
Every check raises `UserError` with one sentence naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import traceback
import typing
from typing import Any

from tl_jax.errors import UserError


@dataclasses.dataclass
class ModelConfig:
  """Transformer shape; width and depth are free parameters.

  Masked-LM pretraining uses the encoder alone; translation adds a decoder of
  `decoder_layers` layers (`num_layers` is then the encoder depth).
  """
  num_layers: int = 12
  decoder_layers: int = 0
  d_model: int = 768
  num_heads: int = 12
  d_ff: int = 0  # 0 means 4 x d_model, as in the paper's grid.
  max_len: int = 512  # longest sequence the position embeddings cover
  positions: str = "learned"  # learned (RoBERTa) | sinusoidal (Vaswani et al.)
  dropout: float = 0.1
  pre_ln: bool = False  # RoBERTa is post-LN; pre-LN trains deep models more stably.
  dtype: str = "bfloat16"  # compute dtype; parameters stay float32
  attention: str = "auto"  # auto | xla | cudnn; auto picks cuDNN on GPU with bf16/fp16
  scan_layers: bool = False  # one compiled layer body: faster compiles for deep models
  remat: str = "none"  # none | full | dots (save matmul outputs, recompute the rest)
  # The token embedding's gradient: onehot (a matrix product; on GPU far faster than the
  # scatter where ids repeat, e.g. <mask>) | scatter (XLA's scatter-add; far faster on CPU) |
  # sorted (ids sorted, each run of one id summed, each row written once) |
  # auto (sorted on GPU, onehot on TPU, scatter on CPU: tl_jax/models/layers.py embed_grad_method)
  embed_grad: str = "auto"
  # The training step's Dense matmuls in float8 (e4m3 operands, e5m2 gradients, per-tensor
  # scales from each tensor's amax): a speed option for GPUs with fp8 matrix units (Hopper).
  # Evaluation, decoding and compression compute in `dtype`. Parameters are unchanged. Its
  # compile is longer by the autotuner's checks of fp8 GEMMs: XLA_FLAGS=--xla_gpu_autotune_level=1
  # skips them (docs/BENCHMARKS.md, 2026-12-07 night).
  fp8: bool = False
  # The GELU of the MLPs and the LM head: exact (erf; RoBERTa's, and Hugging Face's "gelu") |
  # tanh (its tanh approximation, within 5e-4 of it: the original BERT's, GPT-2's), which is
  # cheaper on GPUs (docs/BENCHMARKS.md, 2026-12-07). Part of the architecture: finetuning
  # keeps the pretrained model's.
  gelu: str = "exact"
  # The projections of attention that read one input (self-attention's query, key and value;
  # cross-attention's key and value) as one matmul over their stacked kernels, as MaxText's
  # fused_qkv does: one wider product, and the input's gradient in one product instead of a sum
  # of three. The parameters stay the three Dense layers', so checkpoints are the same either way.
  # Like fp8, the train step's alone. Its GPU speed is not measured yet (bench/speed.py variant
  # fused-qkv).
  fused_qkv: bool = False
  # Random bits behind each dropout decision: 32 (flax's nn.Dropout: a float uniform an element,
  # one threefry hash each) | 16 (four draws from each hash's 64 bits, a quarter of the hashing,
  # with the rate rounded to a multiple of 1/65536: tl_jax/models/dropout.py). Its GPU speed is
  # not measured yet (bench/speed.py variant dropout-16).
  dropout_bits: int = 32
  ln_eps: float = 1e-5
  # Imported checkpoints (tl-jax import-hf) differ from tl_jax's own encoders only here:
  type_vocab_size: int = 0  # token-type (segment) embeddings: BERT 2, RoBERTa 1, tl_jax 0 (none)
  position_offset: int = 0  # first position id: RoBERTa 2 (padding_idx + 1), else 0


@dataclasses.dataclass
class DataConfig:
  """Where text comes from, how it is tokenized, cached and masked."""
  source: str = "synthetic"  # synthetic | text | tfds
  seq_len: int = 128
  # synthetic: the project's own language (tl_jax/data/synthetic.py)
  synthetic_seed: int = 0
  synthetic_words: int = 3000
  # 3: the original language; 4 adds entity documents (facts to memorise, favourite nouns
  # recurring through a document), so bigger models keep gaining. Old workdirs mean 3.
  synthetic_version: int = 3
  # text: comma-separated files or globs of UTF-8 text, one document (paragraph) a line
  train_files: str = ""
  eval_files: str = ""
  # tfds: read through tfds.data_source (array_record), no TensorFlow needed
  tfds_name: str = ""
  tfds_data_dir: str = ""
  tfds_train_split: str = "train"
  tfds_eval_split: str = "validation"
  tfds_text_key: str = "text"
  # token budget of the packed caches; 0 = the whole source (required > 0 for synthetic)
  max_train_tokens: int = 2_000_000
  max_eval_tokens: int = 65_536
  # sentencepiece
  vocab_size: int = 2000
  tokenizer_type: str = "unigram"  # unigram | bpe
  tokenizer_train_chars: int = 5_000_000
  cache_dir: str = ""  # '' = $TL_JAX_CACHE or ~/.cache/tl_jax
  # dynamic masking (RoBERTa): of the selected tokens 80% <mask>, 10% random, 10% kept
  mask_prob: float = 0.15
  mask_token_frac: float = 0.8
  random_token_frac: float = 0.1
  # positions per row the LM head scores: -1 = a bound on the selected count (masking.py), 0 = all
  max_predictions: int = -1
  prefetch: int = 2  # host batches prepared ahead by a background thread


@dataclasses.dataclass
class TrainConfig:
  seed: int = 0
  batch_size: int = 32  # global, in sequences
  grad_accum: int = 1  # micro-batches per optimizer step
  learning_rate: float = 6e-4
  warmup_steps: int = 100
  # The warmup as a fraction of the steps the decay ends at (max_steps, decay_steps, or a seconds
  # horizon's end once fixed), replacing warmup_steps when > 0: a seconds budget then gives a
  # slow model and a fast one the same share of their steps. Before a seconds horizon's end is
  # fixed, the rate rises at warmup_steps' pace (optimizer.with_horizon says what follows).
  warmup_fraction: float = 0.0
  decay_steps: int = 0  # linear decay to 0 over this many steps; 0 = max_steps
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-6
  weight_decay: float = 0.01
  grad_clip: float = 1.0  # global norm; 0 disables
  max_steps: int = 1000
  max_train_seconds: float = 0.0  # wall-clock budget in training seconds; 0 = none
  target_eval_loss: float = 0.0  # stop once eval_loss <= this; 0 = none
  log_every: int = 20  # steps between synchronized metric lines
  schedule: str = "linear"  # linear (warmup, linear decay) | inverse_sqrt (warmup, then 1/sqrt(step))
  # What the linear decay is laid out over: `steps` (max_steps, or decay_steps), or `seconds`:
  # it ends where max_train_seconds runs out, at a step fixed from the pace measured early in
  # the run and kept in the optimizer state (so a resumed run keeps it).
  schedule_horizon: str = "steps"
  label_smoothing: float = 0.0  # translation uses 0.1
  peak_tflops: float = 0.0  # bf16 peak for MFU; 0 = from the device table
  mu_dtype: str = "float32"  # Adam's first moment: float32 | bfloat16 (saves 2 bytes a parameter)
  # Translation: make the output layer's logits this many target tokens at a time inside the loss
  # and again in its gradient (tl_jax/train/xent.py), never all at once; 0 = all at once.
  loss_chunk: int = 0
  # A step with a non-finite loss or gradient: stop the run (keeping the last good checkpoint),
  # or skip it on device (no update; counted as skipped_steps; 10 in a row still stop the run).
  on_nonfinite: str = "stop"  # stop | skip


@dataclasses.dataclass
class ParallelConfig:
  """Mesh shape over all devices of all hosts; -1 on one axis takes the devices left over.

  `preset` chooses the shape instead of data/fsdp: data_parallel (every device a replica),
  fsdp (parameters and optimizer state split over every device), fsdp_tensor (tensor
  parallelism over `tensor` devices of a host, FSDP over the rest). `dcn_data` splits the
  data axis over slices of a multi-slice TPU (or hosts of a GPU cluster): only gradients cross
  that slower network, and each slice keeps the rest of the mesh (tl_jax/parallel/mesh.py).
  """
  preset: str = ""  # '' (the sizes below) | data_parallel | fsdp | fsdp_tensor
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1  # slices (or hosts) the data axis spans; 1 = one slice or one host
  rules: str = "default"  # a table name from tl_jax/parallel/rules.py


@dataclasses.dataclass
class CheckpointConfig:
  every_steps: int = 500
  every_seconds: float = 600.0  # also save when this much elapsed time passed; 0 = off
  keep: int = 3
  async_save: bool = True


@dataclasses.dataclass
class EvalConfig:
  every_steps: int = 200  # 0 = off
  every_seconds: float = 0.0  # evaluate at every multiple of T training seconds; 0 = off
  num_batches: int = 8
  batch_size: int = 32
  seed: int = 1234  # fixed masks: the same positions every evaluation


def _section(cls):
  return dataclasses.field(default_factory=cls)


@dataclasses.dataclass
class RunConfig:
  """The sections every task's tree has; each task adds its own data, train and eval."""
  model: ModelConfig = _section(ModelConfig)
  parallel: ParallelConfig = _section(ParallelConfig)
  checkpoint: CheckpointConfig = _section(CheckpointConfig)
  name: str = ""  # the preset it came from, for reports


@dataclasses.dataclass
class Config(RunConfig):
  """Masked-LM pretraining (`tl-jax pretrain`)."""
  data: DataConfig = _section(DataConfig)
  train: TrainConfig = _section(TrainConfig)
  eval: EvalConfig = _section(EvalConfig)
  task: str = "pretrain"


@dataclasses.dataclass
class TranslationDataConfig:
  """Sentence pairs: where they come from, filtering, tokenizer and packing."""
  source: str = "synthetic"  # synthetic | text | tfds
  src_lang: str = "en"
  tgt_lang: str = "fr"
  # synthetic: the synthetic language and its transduction (tl_jax/data/synthetic.py)
  synthetic_seed: int = 0
  synthetic_words: int = 3000
  # text: line-aligned files PREFIX.<src_lang> and PREFIX.<tgt_lang>
  train_prefix: str = ""
  eval_prefix: str = ""
  test_prefix: str = ""
  # tfds: e.g. wmt14_translate/fr-en (validation = newstest2013, test = newstest2014)
  tfds_name: str = ""
  tfds_data_dir: str = ""
  tfds_train_split: str = "train"
  tfds_eval_split: str = "validation"
  tfds_test_split: str = "test"
  max_train_pairs: int = 200_000  # 0 = all (required > 0 for synthetic)
  max_eval_pairs: int = 1000
  # filtering, counted in the log: pairs longer than seq_len tokens on either side, or whose
  # length ratio exceeds max_length_ratio, are dropped from training
  seq_len: int = 64  # packed row length, source and target alike
  max_length_ratio: float = 2.5
  # joint sentencepiece over both sides
  vocab_size: int = 4000
  tokenizer_type: str = "unigram"
  tokenizer_train_chars: int = 5_000_000
  cache_dir: str = ""
  prefetch: int = 2


@dataclasses.dataclass
class TranslateEvalConfig(EvalConfig):
  beam_size: int = 4
  length_penalty: float = 0.6
  bleu_pairs: int = 500  # eval pairs decoded for BLEU each eval (0 = all eval pairs)
  decode_batch_size: int = 64


@dataclasses.dataclass
class TranslateConfig(RunConfig):
  """Translation (`tl-jax translate`)."""
  data: TranslationDataConfig = _section(TranslationDataConfig)
  train: TrainConfig = _section(TrainConfig)
  eval: TranslateEvalConfig = _section(TranslateEvalConfig)
  task: str = "translate"


@dataclasses.dataclass
class InitConfig:
  """Where a finetuning run's encoder, tokenizer and model shape come from."""
  workdir: str = ""  # a `tl-jax pretrain` or `tl-jax import-hf` workdir (the --init flag)
  checkpoint: str = "auto"  # auto (newest checkpoint, else best params) | latest | best
  from_scratch: bool = False  # same shape and tokenizer, fresh weights: the no-pretraining baseline


@dataclasses.dataclass
class HeadConfig:
  """The classification head (fresh at the start of finetuning)."""
  pooling: str = "first"  # first (<s>/[CLS], RoBERTa's) | mean (average of the real tokens)


@dataclasses.dataclass
class ClassifyDataConfig:
  """Labelled sentences or sentence pairs for finetuning."""
  source: str = "synthetic"  # synthetic | tsv | tfds
  # synthetic: a task on the synthetic language (tl_jax/data/synthetic.py), labels 0/1:
  # sentiment (polarity under negation scope) | agreement (subject-verb number across a phrase)
  synthetic_task: str = "sentiment"
  synthetic_seed: int = 0
  synthetic_words: int = 3000
  # tsv: UTF-8 files with a header row naming the columns below
  train_files: str = ""  # comma-separated files or globs
  eval_files: str = ""  # '' = carve dev_fraction of the train rows off (seeded by dev_seed)
  dev_fraction: float = 0.05
  dev_seed: int = 0
  # tfds: e.g. glue/sst2, glue/mnli (read through tfds.data_source, no TensorFlow)
  tfds_name: str = ""
  tfds_data_dir: str = ""
  tfds_train_split: str = "train"
  tfds_eval_splits: str = "validation"  # comma-separated; the first picks the best checkpoint
  # columns / features
  text_field: str = "sentence"
  pair_field: str = ""  # second sentence of a pair task (e.g. hypothesis); '' = single sentences
  label_field: str = "label"
  labels: str = ""  # comma-separated label values as written in the data; '' = from tfds / 0,1
  max_train_examples: int = 0  # 0 = all (required > 0 for synthetic)
  max_eval_examples: int = 0  # per eval split; 0 = all (required > 0 for synthetic)
  # tokenized inputs: <s> A </s></s> B </s> (RoBERTa), or [CLS] A [SEP] B [SEP] with token types
  seq_len: int = 128
  truncation: str = "longest_first"  # longest_first | only_first | only_second
  # Batches hold rows of similar length cut to at most this many lengths (each a compiled shape),
  # chosen per split to waste the fewest positions; 0 pads every row to seq_len.
  length_buckets: int = 8
  prefetch: int = 2


@dataclasses.dataclass
class FinetuneTrainConfig(TrainConfig):
  """RoBERTa's finetuning recipe; `epochs` > 0 sets max_steps from the training set size."""
  learning_rate: float = 0.0  # 0 = by width: 2e-5 at d_model 768, scaled by 768 / d_model, in [1e-5, 1e-4]
  weight_decay: float = 0.1
  b2: float = 0.98
  epochs: float = 3.0  # 0 = train.max_steps decides
  warmup_fraction: float = 0.06  # RoBERTa's
  batch_size: int = 32
  log_every: int = 50


@dataclasses.dataclass
class ClassifyEvalConfig:
  every_steps: int = 500  # 0 = off
  every_seconds: float = 0.0
  batch_size: int = 64  # every example of every eval split is scored


@dataclasses.dataclass
class QuantConfig:
  """Weight quantization (tl_jax/compress/quantize.py); bits are 1..8."""
  method: str = "none"  # none | uniform | kmeans (2^bits centroids per matrix)
  bits: int = 8
  symmetric: bool = True  # uniform: absmax grid (qwix's), else min/max with a zero point
  granularity: str = "channel"  # uniform: one scale per tensor | channel (output feature) | group
  group_size: int = 128  # granularity=group: input rows per scale
  kmeans_iters: int = 20
  # gptq (tl_jax/compress/methods/gptq.py): rows quantized per lazy update, and the Hessian's
  # damping as a fraction of its mean diagonal (the reference implementation's defaults)
  gptq_block_size: int = 128
  gptq_damping: float = 0.01
  # parameter groups to quantize: attention, ffn, embedding, head, norm, bias
  targets: str = "attention,ffn,embedding,head"


@dataclasses.dataclass
class PruneConfig:
  """Weight pruning (tl_jax/compress/prune.py): magnitude (global or per matrix) or N:M."""
  method: str = "none"  # none | magnitude | nm
  sparsity: float = 0.0  # magnitude: the fraction of target weights set to zero, in [0, 1)
  scope: str = "global"  # magnitude: global (one threshold) | layer (every matrix alike)
  n: int = 2  # nm: keep n of every m consecutive input weights
  m: int = 4
  targets: str = "attention,ffn"  # the paper prunes the Transformer layers' matrices
  # While finetuning: sparsity rises from 0 to `sparsity` on Zhu & Gupta's cubic schedule between
  # these fractions of the run, masks recomputed every `every_steps` (oneshot: all at once, at begin).
  schedule: str = "cubic"  # cubic | oneshot
  begin_fraction: float = 0.0
  end_fraction: float = 0.7
  every_steps: int = 50


@dataclasses.dataclass
class FinetuneConfig(RunConfig):
  """Sentence(-pair) classification from a pretrained encoder (`tl-jax finetune`).

  `model` is the init workdir's, copied when the run starts; only the fields in
  FINETUNE_MODEL_FIELDS (dropout, dropout_bits, dtype, attention, remat, embed_grad, fp8,
  fused_qkv) may be changed.
  """
  init: InitConfig = _section(InitConfig)
  head: HeadConfig = _section(HeadConfig)
  data: ClassifyDataConfig = _section(ClassifyDataConfig)
  train: FinetuneTrainConfig = _section(FinetuneTrainConfig)
  eval: ClassifyEvalConfig = _section(ClassifyEvalConfig)
  # Compression while finetuning: pruning masks live in the train state; `qat` trains through
  # fake quantization (straight-through gradients). Both off by default.
  prune: PruneConfig = _section(PruneConfig)
  qat: QuantConfig = _section(QuantConfig)
  task: str = "finetune"


@dataclasses.dataclass
class CompressConfig:
  """A grid of compression points over one finetuned workdir (`tl-jax compress`).

  Points: the uncompressed model; each quantizer in `quant_methods` at each of `bits`;
  magnitude pruning at each of `sparsities`; N:M pruning if `nm`; and each of
  `combined_sparsities` pruned, then quantized at each of `combined_bits`. `quant` and
  `prune` hold the settings every point shares (granularity, scope, targets, ...).
  """
  quant: QuantConfig = dataclasses.field(default_factory=lambda: QuantConfig(method="uniform"))
  prune: PruneConfig = dataclasses.field(default_factory=lambda: PruneConfig(method="magnitude"))
  quant_methods: str = "uniform"  # comma-separated: uniform, kmeans, gptq
  bits: str = "8,6,4,3,2"
  sparsities: str = "0.3,0.5,0.7,0.9"
  nm: bool = False
  combined_sparsities: str = "0.5"
  combined_bits: str = "4"
  checkpoint: str = "best"  # best | latest: which parameters of the workdir to compress
  eval_batch_size: int = 64  # classification rows per eval batch; 0 = the run's eval config
  # 0 = the whole first eval split; translation: at most this many BLEU sentences, and the
  # eval-loss batches holding the first this many pairs; masked LM: the eval batches holding
  # the first this many rows
  max_eval_examples: int = 0
  calibration_batches: int = 16  # training batches of the run's task whose inputs calibrate GPTQ
  analysis: bool = True  # per-layer weight error, output KL, kurtosis and outliers per point
  export: bool = False  # write each point packed to WORKDIR/compressed/POINT, reload, re-evaluate
  rerun: bool = False  # measure points again that compress.jsonl holds with the same settings
  name: str = ""
  task: str = "compress"


ROOTS = {"pretrain": Config, "translate": TranslateConfig, "finetune": FinetuneConfig,
         "compress": CompressConfig}


# ---------------------------------------------------------------------------
# Loading presets and applying overrides.


def file_function(path: str, function: str, kind: str, example: str):
  """`function` defined by the Python file at `path` (a preset or sweep file). A mistake in that
  file, while loading it or calling the function, is a UserError naming the line."""
  if not os.path.isfile(path):
    raise UserError(f"{kind} file {path!r} does not exist; pass --config={example} with a path "
                    "relative to where you run tl-jax.")
  module_spec = importlib.util.spec_from_file_location(f"_tl_jax_{kind}_file", path)
  module = importlib.util.module_from_spec(module_spec)
  _run_user_code(path, kind, module_spec.loader.exec_module, module)
  if not hasattr(module, function):
    raise UserError(f"{kind} file {path} defines no {function}(); add one.")
  return functools.partial(_run_user_code, path, kind, getattr(module, function))


def _run_user_code(path: str, kind: str, fn, *args):
  try:
    return fn(*args)
  except UserError:
    raise
  except Exception as e:
    line = e.lineno if isinstance(e, SyntaxError) else next(
        (f.lineno for f in reversed(traceback.extract_tb(e.__traceback__))
         if os.path.abspath(f.filename) == os.path.abspath(path)), None)
    at = f" at line {line}" if line else ""
    text = e.msg if isinstance(e, SyntaxError) else str(e).strip()
    detail = f" ({text.splitlines()[0]})" if text else ""
    raise UserError(f"{kind} file {path} raised {type(e).__name__}{at}{detail}; fix that "
                    "file.") from None


def parse_overrides(args: list[str], hint: str) -> dict[str, str]:
  """`--config.a.b=V` flags -> {"a.b": "V"}; anything else is refused, pointing to `hint`."""
  overrides = {}
  for item in args:
    key, eq, value = item.partition("=")
    if not key.startswith("--config.") or not eq:
      raise UserError(f"unknown argument {item!r}; {hint}.")
    overrides[key[len("--config."):]] = value
  return overrides


def load_preset(spec: str) -> Config:
  """`configs/mlm.py:tiny` -> the Config that file's `get_config('tiny')` returns."""
  path, _, preset = spec.partition(":")
  config = file_function(path, "get_config", "config", "configs/mlm.py:PRESET")(preset)
  config.name = config.name or preset
  return config


def _field_types(obj) -> dict[str, Any]:
  hints = typing.get_type_hints(type(obj))
  return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _parse_value(text: str, kind, where: str):
  if kind is bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
      return True
    if lowered in ("0", "false", "no", "off"):
      return False
    raise UserError(f"--config.{where}={text} is not a boolean; use true or false.")
  try:
    if kind is int:
      if "e" in text.lower():  # 2e6 is a fine step count, 1.5e0 is not
        value = float(text)
        if value != int(value):
          raise ValueError
        return int(value)
      return int(text.replace("_", ""))
    if kind is float:
      return float(text)
  except (ValueError, OverflowError):
    raise UserError(f"--config.{where}={text} is not a valid {kind.__name__}.") from None
  return text


def set_field(config: Config, dotted: str, text: str) -> None:
  """Sets `config.<dotted>` from its command-line text, typed by the field."""
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    types = _field_types(node)
    where = ".".join(parts[: i + 1])
    if part not in types:
      known = ", ".join(sorted(types))
      prefix = ".".join(parts[:i]) or "the config"
      raise UserError(f"unknown config field {where!r}; fields of {prefix} are: {known}.")
    if i == len(parts) - 1:
      if dataclasses.is_dataclass(types[part]):
        raise UserError(f"--config.{where} is a section, not a value; set one of its fields.")
      setattr(node, part, _parse_value(text, types[part], where))
    else:
      node = getattr(node, part)
      if not dataclasses.is_dataclass(node):
        raise UserError(f"config field {'.'.join(parts[: i + 1])!r} has no sub-fields.")


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
  for dotted, text in overrides.items():
    set_field(config, dotted, text)
  return config


# ---------------------------------------------------------------------------
# JSON round trip (config.json in the workdir).


def to_dict(config: Config) -> dict:
  return dataclasses.asdict(config)


def from_dict(data: dict):
  """The config tree of the task recorded in `data` (pretraining where none is)."""
  def build(cls, values: dict, where: str):
    types = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
      if key not in types:
        raise UserError(f"config.json has unknown field '{where}{key}'; it was written by another "
                        "version of tl_jax: remove the field or start a new workdir.")
      kind = types[key]
      kwargs[key] = build(kind, value, f"{where}{key}.") if dataclasses.is_dataclass(kind) else value
    return cls(**kwargs)
  root = ROOTS.get(data.get("task", "pretrain"))
  if root is None:
    raise UserError(f"config.json names an unknown task {data.get('task')!r}; start a new workdir.")
  return build(root, data, "")


def save(config: Config, path: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_dict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def load(path: str) -> Config:
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); restore it or "
                    "start a new workdir.") from None
  if isinstance(data, dict) and "task" not in data and ("model_type" in data or "architectures" in data):
    folder = os.path.dirname(path) or "."
    raise UserError(f"{folder} is a Hugging Face model folder, not a tl_jax workdir; import it "
                    f"first with `tl-jax import-hf --source={folder} --workdir=NEW_DIR` and point "
                    "the flag at NEW_DIR.")
  return from_dict(data)


def differences(old: Config, new: Config) -> list[str]:
  """`field: old -> new` for every leaf that differs."""
  out = []
  def walk(a: dict, b: dict, prefix: str):
    for key in sorted(set(a) | set(b)):
      va, vb = a.get(key), b.get(key)
      if isinstance(va, dict) and isinstance(vb, dict):
        walk(va, vb, f"{prefix}{key}.")
      elif va != vb:
        out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
  walk(to_dict(old), to_dict(new), "")
  return out


# ---------------------------------------------------------------------------
# Validation: everything that can be checked before data or compilation.

_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.attention": ("auto", "xla", "cudnn"),
    "model.remat": ("none", "full", "dots"),
    "model.embed_grad": ("auto", "onehot", "scatter", "sorted"),
    "model.gelu": ("exact", "tanh"),
    "model.dropout_bits": (32, 16),
    "model.positions": ("learned", "sinusoidal"),
    "train.schedule": ("linear", "inverse_sqrt"),
    "train.schedule_horizon": ("steps", "seconds"),
    "train.mu_dtype": ("float32", "bfloat16"),
    "train.on_nonfinite": ("stop", "skip"),
}
_TASK_CHOICES = {
    "pretrain": {"data.source": ("synthetic", "text", "tfds"), "data.tokenizer_type": ("unigram", "bpe")},
    "translate": {"data.source": ("synthetic", "text", "tfds"), "data.tokenizer_type": ("unigram", "bpe")},
    "finetune": {"data.source": ("synthetic", "tsv", "tfds"),
                 "data.synthetic_task": ("sentiment", "agreement"),
                 "head.pooling": ("first", "mean"),
                 "data.truncation": ("longest_first", "only_first", "only_second"),
                 "init.checkpoint": ("auto", "latest", "best"),
                 "prune.method": ("none", "magnitude", "nm"), "prune.scope": ("global", "layer"),
                 "prune.schedule": ("cubic", "oneshot"), "qat.method": ("none", "uniform", "kmeans"),
                 "qat.granularity": ("tensor", "channel", "group")},
    "compress": {"quant.granularity": ("tensor", "channel", "group"),
                 "prune.method": ("none", "magnitude", "nm"), "prune.scope": ("global", "layer"),
                 "checkpoint": ("best", "latest")},
}


def _check_positive(values: dict) -> None:
  for name, value in values.items():
    if value <= 0:
      raise UserError(f"config field {name}={value} must be positive.")


PARALLEL_PRESETS = ("", "data_parallel", "fsdp", "fsdp_tensor")


def validate_parallel(p: ParallelConfig) -> None:
  if p.preset not in PARALLEL_PRESETS:
    raise UserError(f"config field parallel.preset={p.preset!r} is not one of data_parallel, fsdp, "
                    "fsdp_tensor (or '' for the data/fsdp/tensor sizes).")
  for name, value in (("parallel.data", p.data), ("parallel.fsdp", p.fsdp), ("parallel.tensor", p.tensor)):
    if value == 0 or value < -1:
      raise UserError(f"config field {name}={value} must be a positive size or -1 (fill).")
  if [p.data, p.fsdp, p.tensor].count(-1) > 1:
    raise UserError("only one of parallel.data, parallel.fsdp, parallel.tensor may be -1.")
  if p.dcn_data < 1:
    raise UserError(f"config field parallel.dcn_data={p.dcn_data} must be at least 1 (the number of "
                    "slices or hosts the data axis spans).")
  if p.preset and (p.data, p.fsdp) != (-1, 1):
    raise UserError(f"parallel.preset={p.preset} sets parallel.data and parallel.fsdp itself; drop "
                    "--config.parallel.data/fsdp or the preset.")
  if p.preset in ("data_parallel", "fsdp") and p.tensor != 1:
    raise UserError(f"parallel.preset={p.preset} has no tensor parallelism but parallel.tensor="
                    f"{p.tensor}; use parallel.preset=fsdp_tensor.")
  if p.preset == "fsdp_tensor" and p.tensor < 2:
    raise UserError("parallel.preset=fsdp_tensor needs parallel.tensor > 1, the devices of a host "
                    "that split each layer (e.g. --config.parallel.tensor=4).")
  if not p.preset and p.data != -1 and p.data % p.dcn_data:
    raise UserError(f"parallel.data={p.data} does not split over parallel.dcn_data={p.dcn_data} "
                    "slices; make parallel.data a multiple of parallel.dcn_data.")


def validate(config) -> None:
  """Checks the fields of any task's tree; raises UserError naming field and fix."""
  choices_of = _TASK_CHOICES[config.task] if config.task == "compress" else {
      **_CHOICES, **_TASK_CHOICES[config.task]}
  for dotted, choices in choices_of.items():
    value = config
    for part in dotted.split("."):
      value = getattr(value, part)
    if value not in choices:
      raise UserError(f"config field {dotted}={value!r} is not one of {', '.join(map(str, choices))}.")
  if config.task == "compress":
    _validate_compress(config)
    return

  m, d, t, p = config.model, config.data, config.train, config.parallel
  _check_positive({
      "model.num_layers": m.num_layers, "model.d_model": m.d_model, "model.num_heads": m.num_heads,
      "model.max_len": m.max_len, "data.seq_len": d.seq_len,
      "train.batch_size": t.batch_size, "train.grad_accum": t.grad_accum,
      "train.max_steps": t.max_steps, "train.log_every": t.log_every,
      "eval.batch_size": config.eval.batch_size,
      "checkpoint.every_steps": config.checkpoint.every_steps, "checkpoint.keep": config.checkpoint.keep,
  })
  if t.schedule_horizon == "seconds" and not t.max_train_seconds > 0:
    raise UserError("train.schedule_horizon=seconds lays the decay out over train.max_train_seconds, "
                    "which is not set; set it, or use train.schedule_horizon=steps.")
  if t.schedule_horizon == "seconds" and (t.schedule != "linear" or t.decay_steps):
    raise UserError("train.schedule_horizon=seconds needs train.schedule=linear and no "
                    "train.decay_steps (the budget sets where the decay ends).")
  if not 0.0 <= t.warmup_fraction < 1.0:
    raise UserError(f"train.warmup_fraction={t.warmup_fraction} must be in [0, 1).")
  if t.warmup_fraction and t.schedule != "linear":
    raise UserError(f"train.warmup_fraction={t.warmup_fraction} needs train.schedule=linear; "
                    f"{t.schedule} has no end to take a fraction of: use train.warmup_steps.")
  if not 0.0 <= t.label_smoothing < 1.0:
    raise UserError(f"train.label_smoothing={t.label_smoothing} must be in [0, 1).")
  if t.loss_chunk < 0 or (t.loss_chunk and config.task != "translate"):
    raise UserError(f"train.loss_chunk={t.loss_chunk} must be 0, or a positive number of target "
                    "tokens for translation (the only task whose loss is chunked).")
  if m.d_model % m.num_heads:
    raise UserError(f"model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}; "
                    "choose heads that divide the width (the paper uses 64-dim heads).")
  if d.seq_len + m.position_offset > m.max_len:
    raise UserError(f"data.seq_len={d.seq_len} (plus model.position_offset={m.position_offset}) "
                    f"exceeds model.max_len={m.max_len}; raise model.max_len or shorten data.seq_len.")
  if d.seq_len < 8:
    raise UserError(f"data.seq_len={d.seq_len} is too short; use at least 8.")
  if not 0.0 <= m.dropout < 1.0:
    raise UserError(f"model.dropout={m.dropout} must be in [0, 1).")
  if m.dropout_bits == 16 and round(m.dropout * 65536) == 65536:
    raise UserError(f"model.dropout={m.dropout} rounds to 1 on 16-bit draws, dropping everything; "
                    "lower it, or set model.dropout_bits=32.")
  if t.batch_size % t.grad_accum:
    raise UserError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum="
                    f"{t.grad_accum}; each micro-batch needs the same size.")
  validate_parallel(p)
  {"translate": _validate_translation, "pretrain": _validate_pretraining,
   "finetune": _validate_finetuning}[config.task](config)


def _validate_tokenizer_data(config) -> None:
  d = config.data
  _check_positive({"data.vocab_size": d.vocab_size, "eval.num_batches": config.eval.num_batches})
  if d.vocab_size < 16:
    raise UserError(f"data.vocab_size={d.vocab_size} is too small; use at least 16.")


def _validate_translation(config: TranslateConfig) -> None:
  m, d, e = config.model, config.data, config.eval
  _validate_tokenizer_data(config)
  _check_positive({"model.decoder_layers": m.decoder_layers, "eval.beam_size": e.beam_size,
                   "eval.decode_batch_size": e.decode_batch_size,
                   "data.max_length_ratio": d.max_length_ratio})
  if d.source == "synthetic" and d.max_train_pairs <= 0:
    raise UserError("data.max_train_pairs must be positive for the unbounded synthetic source.")
  if d.source == "text" and not (d.train_prefix and d.eval_prefix):
    raise UserError("data.source=text needs data.train_prefix and data.eval_prefix (files "
                    "PREFIX.<src_lang> and PREFIX.<tgt_lang>).")
  if d.source == "tfds" and not d.tfds_name:
    raise UserError("data.source=tfds needs data.tfds_name (e.g. wmt14_translate/fr-en).")


def _validate_pretraining(config: Config) -> None:
  m, d = config.model, config.data
  _validate_tokenizer_data(config)
  if m.decoder_layers:
    raise UserError("model.decoder_layers must be 0 for masked-LM pretraining (an encoder).")
  if not 0.0 < d.mask_prob < 1.0:
    raise UserError(f"data.mask_prob={d.mask_prob} must lie strictly between 0 and 1.")
  if d.max_predictions < -1:
    raise UserError(f"data.max_predictions={d.max_predictions} must be -1 (a bound from "
                    "data.mask_prob), 0 (score every position) or a positive count.")
  if d.mask_token_frac + d.random_token_frac > 1.0 or min(d.mask_token_frac, d.random_token_frac) < 0:
    raise UserError("data.mask_token_frac + data.random_token_frac must be within [0, 1].")
  if d.source == "synthetic" and d.max_train_tokens <= 0:
    raise UserError("data.max_train_tokens must be positive for the unbounded synthetic source.")
  if d.synthetic_version not in SYNTHETIC_VERSIONS:
    raise UserError(f"data.synthetic_version={d.synthetic_version!r} is not one of "
                    f"{', '.join(map(str, SYNTHETIC_VERSIONS))}; use 3 (the original language) or "
                    "4 (with entity facts).")
  if d.source == "text" and not (d.train_files and d.eval_files):
    raise UserError("data.source=text needs data.train_files and data.eval_files (comma-separated "
                    "files or globs).")
  if d.source == "tfds" and not d.tfds_name:
    raise UserError("data.source=tfds needs data.tfds_name (e.g. wikipedia/20230601.en).")


SYNTHETIC_VERSIONS = (3, 4)  # data.synthetic_version; tl_jax/data/synthetic.py VERSIONS
MAX_LENGTH_BUCKETS = 32  # data.length_buckets: each bucket is one more compiled step
# Finetuning may change these model fields; every other one must match the init workdir's.
FINETUNE_MODEL_FIELDS = ("dropout", "dropout_bits", "dtype", "attention", "remat", "embed_grad", "fp8",
                         "fused_qkv")


def _validate_finetuning(config: FinetuneConfig) -> None:
  d, t = config.data, config.train
  if not config.init.workdir:
    raise UserError("finetuning needs --init=WORKDIR: a `tl-jax pretrain` or `tl-jax import-hf` workdir.")
  if config.model.decoder_layers:
    raise UserError("finetuning needs an encoder; the --init workdir holds a translation model.")
  if t.epochs < 0:
    raise UserError(f"train.epochs={t.epochs} must be >= 0 (0 lets train.max_steps decide).")
  if not 0 <= d.length_buckets <= MAX_LENGTH_BUCKETS:
    raise UserError(f"data.length_buckets={d.length_buckets} is outside 0..{MAX_LENGTH_BUCKETS}; set "
                    "it to a few lengths (each compiles once), or 0 to pad every row to data.seq_len.")
  if d.source == "synthetic" and (d.max_train_examples <= 0 or d.max_eval_examples <= 0):
    raise UserError("data.max_train_examples and data.max_eval_examples must be positive for the "
                    "unbounded synthetic source.")
  if d.source == "tsv" and not d.train_files:
    raise UserError("data.source=tsv needs data.train_files (a TSV with a header row).")
  if d.source == "tsv" and not d.eval_files and not 0.0 < d.dev_fraction < 1.0:
    raise UserError(f"data.dev_fraction={d.dev_fraction} must lie strictly between 0 and 1 to carve "
                    "a dev split off the training rows (or set data.eval_files).")
  if d.source == "tfds" and not d.tfds_name:
    raise UserError("data.source=tfds needs data.tfds_name (e.g. glue/sst2 or glue/mnli).")
  validate_prune(config.prune, "prune")
  validate_quant(config.qat, "qat")


def validate_quant(q: QuantConfig, where: str) -> None:
  if not 1 <= q.bits <= 8:
    raise UserError(f"{where}.bits={q.bits} is outside 1..8; choose a bit width from 1 to 8.")
  _check_positive({f"{where}.group_size": q.group_size, f"{where}.kmeans_iters": q.kmeans_iters,
                   f"{where}.gptq_block_size": q.gptq_block_size})
  if q.gptq_damping < 0:
    raise UserError(f"{where}.gptq_damping={q.gptq_damping} must be >= 0 (a fraction of the "
                    "Hessian's mean diagonal, e.g. 0.01).")
  _check_groups(q.targets, f"{where}.targets")


def validate_prune(p: PruneConfig, where: str) -> None:
  if not 0.0 <= p.sparsity < 1.0:
    raise UserError(f"{where}.sparsity={p.sparsity} is outside [0, 1); give the fraction of "
                    "weights to zero, e.g. 0.5.")
  if not 0 < p.n < p.m:
    raise UserError(f"{where}.n={p.n} and {where}.m={p.m} must satisfy 0 < n < m (2:4 keeps 2 of 4).")
  if not 0.0 <= p.begin_fraction < p.end_fraction <= 1.0:
    raise UserError(f"{where}.begin_fraction={p.begin_fraction} and end_fraction={p.end_fraction} "
                    "must satisfy 0 <= begin < end <= 1.")
  _check_positive({f"{where}.every_steps": p.every_steps})
  _check_groups(p.targets, f"{where}.targets")


def _check_groups(text: str, field: str) -> None:
  from tl_jax.compress.layout import parse_groups  # the group names live beside the layouts
  parse_groups(text, field)


def parse_list(text: str, kind, field: str) -> list:
  """`"8,6,4"` -> [8, 6, 4]: the grid fields of CompressConfig."""
  try:
    return [kind(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise UserError(f"config field {field}={text!r} is not a comma-separated list of "
                    f"{kind.__name__}s.") from None


def _validate_compress(config: CompressConfig) -> None:
  validate_quant(config.quant, "quant")
  validate_prune(config.prune, "prune")
  _check_positive({"eval_batch_size": config.eval_batch_size})
  for field in ("bits", "combined_bits"):
    for b in parse_list(getattr(config, field), int, field):
      if not 1 <= b <= 8:
        raise UserError(f"config field {field} holds {b} bits, outside 1..8; choose bit widths "
                        "from 1 to 8.")
  for field in ("sparsities", "combined_sparsities"):
    for v in parse_list(getattr(config, field), float, field):
      if not 0.0 <= v < 1.0:
        raise UserError(f"config field {field} holds sparsity {v}, outside [0, 1); give fractions "
                        "of weights to zero, e.g. 0.5.")
  from tl_jax.compress.methods import QUANTIZERS  # the method names live beside the methods
  if config.quant.method not in ("none", *QUANTIZERS):
    raise UserError(f"config field quant.method={config.quant.method!r} is not one of none, "
                    f"{', '.join(QUANTIZERS)}.")
  for method in parse_list(config.quant_methods, str, "quant_methods"):
    if method.strip() not in QUANTIZERS:
      raise UserError(f"quant_methods holds {method!r}; choose from {', '.join(QUANTIZERS)}.")
  _check_positive({"calibration_batches": config.calibration_batches})


def inherit_init_model(config: FinetuneConfig, overrides: dict[str, str]) -> FinetuneConfig:
  """Gives a finetuning config the model of its --init workdir, then re-applies the command
  line's model overrides, which may touch only FINETUNE_MODEL_FIELDS."""
  init = config.init.workdir
  if not init:
    raise UserError("finetuning needs --init=WORKDIR: a `tl-jax pretrain` or `tl-jax import-hf` workdir.")
  path = os.path.join(init, "config.json")
  if not os.path.exists(path):
    raise UserError(f"--init={init} holds no config.json; point it at a `tl-jax pretrain` or "
                    "`tl-jax import-hf` workdir.")
  pretrained = load(path)
  if pretrained.task != "pretrain":
    raise UserError(f"--init={init} is a `tl-jax {pretrained.task}` run; finetuning starts from a "
                    "masked-LM encoder (`tl-jax pretrain` or `tl-jax import-hf`).")
  config.model = dataclasses.replace(pretrained.model)
  for dotted, text in overrides.items():
    if dotted.startswith("model."):
      if dotted[len("model."):] not in FINETUNE_MODEL_FIELDS:
        raise UserError(f"--config.{dotted} comes from the --init workdir and cannot change when "
                        f"finetuning; only model.{', model.'.join(FINETUNE_MODEL_FIELDS)} can.")
      set_field(config, dotted, text)
  return config


def d_ff(model: ModelConfig) -> int:
  return model.d_ff or 4 * model.d_model
