"""`tl-jax import-hf`: a Hugging Face RoBERTa or BERT checkpoint as a tl_jax workdir.

Reads a directory that `transformers`' `save_pretrained` wrote (config.json,
model.safetensors or its sharded index, and the tokenizer files) with numpy
alone, maps every tensor onto the `MaskedLM` parameter tree and writes a workdir
that looks like a finished pretraining run: `config.json`, `tokenizer/` (the
checkpoint's own tokenizer, data/hf_tokenizer.py) and `best/` (the parameters,
as `BestParams` saves them), which `tl-jax finetune --init` starts from.

The models are the same function: BERT/RoBERTa are post-LN with exact GELU;
RoBERTa's positions start at padding_idx + 1 (`model.position_offset`) and both
add token-type embeddings (`model.type_vocab_size`, `encoder/type_embed`).
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np

from tl_jax import config as config_lib
from tl_jax.errors import UserError

_FAMILIES = {"roberta": "RoBERTa", "bert": "BERT"}
# Hugging Face's config defaults (BertConfig / RobertaConfig), for keys a config.json omits.
_HF_DEFAULTS = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
                "hidden_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
                "layer_norm_eps": 1e-12}
# Non-parameter buffers some older checkpoints saved; nothing to import.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_NUMBERS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "type_vocab_size")


def import_hf(source_dir: str, workdir: str) -> str:
  """Imports the checkpoint in `source_dir` into the new workdir `workdir`; returns a summary line."""
  source = os.path.abspath(source_dir)
  workdir = os.path.abspath(workdir)
  _check_workdir(workdir)
  hf = _read_config(source)
  family = hf["model_type"]
  model_config = _model_config(hf, source)
  files = _weight_files(source)
  vocab = hf["vocab_size"]
  tokenizer = _tokenizer(source, vocab)

  config = config_lib.Config(model=model_config, name=f"hf:{checkpoint_name(hf, source)}")
  config.data.vocab_size = vocab
  config.data.seq_len = min(512, model_config.max_len - model_config.position_offset)
  config_lib.validate(config)

  tensors = _load_tensors(source, files)
  params, head_imported, ignored = _map_weights(tensors, hf, config, source)
  del tensors

  _write(workdir, source, config, tokenizer, params)
  count = sum(int(np.prod(p.shape)) for p in _flatten(params).values())
  arch = (hf.get("architectures") or [family])[0]
  m = model_config
  head = ("MLM head imported" if head_imported
          else "no MLM head in the checkpoint (a bare encoder), so it was initialised as tl_jax would")
  skipped = (f"; ignored {len(ignored)} tensor(s) a masked LM does not use ({', '.join(ignored[:4])}"
             f"{', ...' if len(ignored) > 4 else ''})" if ignored else "")
  return (f"imported {_FAMILIES[family]} ({arch}) from {source} into {workdir}: {m.num_layers} layers, "
          f"d_model {m.d_model}, {m.num_heads} heads, d_ff {m.d_ff}, vocab {vocab}, "
          f"{count / 1e6:.1f}M parameters; {head}{skipped}.")


# ---------------------------------------------------------------------------
# Checks and reading.


def _check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} is a file; pass a new or empty directory as --workdir.")
  for name in ("config.json", "checkpoints", "best", "tokenizer"):
    if os.path.exists(os.path.join(workdir, name)):
      raise UserError(f"workdir {workdir} already holds {name} from an earlier run; import into a new "
                      "or empty --workdir.")


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); restore it from the "
                    "checkpoint's source.") from None


def _read_config(source: str) -> dict:
  if not os.path.isdir(source):
    raise UserError(f"--source {source} is not a directory; point it at a directory saved with "
                    "transformers' save_pretrained().")
  path = os.path.join(source, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{source} holds no config.json; point --source at a directory saved with "
                    "transformers' save_pretrained().")
  hf = _read_json(path)
  family = hf.get("model_type")
  if family not in _FAMILIES:
    raise UserError(f"{path} has model_type {family!r}, which tl-jax import-hf does not read; import a "
                    "RoBERTa or BERT checkpoint (model_type roberta or bert).")
  hf = {**_HF_DEFAULTS, "pad_token_id": 1 if family == "roberta" else 0, **hf}
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise UserError(f"{path} describes a decoder (is_decoder or add_cross_attention is true); import "
                    "an encoder checkpoint instead.")
  if hf["hidden_act"] != "gelu":
    raise UserError(f"{path} has hidden_act {hf['hidden_act']!r}, but tl_jax's encoder uses exact "
                    "GELU; import a checkpoint with hidden_act gelu.")
  positions = hf.get("position_embedding_type") or "absolute"
  if positions != "absolute":
    raise UserError(f"{path} has position_embedding_type {positions!r}, but tl_jax has only absolute "
                    "learned positions; import a checkpoint with absolute positions.")
  for key in _NUMBERS:
    if not isinstance(hf[key], int) or hf[key] <= 0:
      raise UserError(f"{path} has {key}={hf[key]!r}, which must be a positive integer; fix config.json.")
  if hf["hidden_size"] % hf["num_attention_heads"]:
    raise UserError(f"{path} has hidden_size {hf['hidden_size']} not divisible by num_attention_heads "
                    f"{hf['num_attention_heads']}; fix config.json.")
  return hf


def checkpoint_name(hf: dict, source: str) -> str:
  """What the checkpoint calls itself: its hub id (`_name_or_path`, e.g. FacebookAI/roberta-base),
  else its architecture (RobertaForMaskedLM); the folder's name only when it says neither (a
  folder is usually just `model` or `checkpoint`)."""
  name = str(hf.get("_name_or_path") or "")
  if name and not os.path.isabs(name) and not name.startswith("."):
    return name
  architectures = hf.get("architectures") or []
  return str(architectures[0]) if architectures else os.path.basename(source)


def _model_config(hf: dict, source: str) -> config_lib.ModelConfig:
  offset = hf["pad_token_id"] + 1 if hf["model_type"] == "roberta" else 0
  if hf["max_position_embeddings"] - offset < 8:
    raise UserError(f"{source}/config.json has max_position_embeddings {hf['max_position_embeddings']}, "
                    "too few positions for a sequence of 8 tokens; fix config.json.")
  return config_lib.ModelConfig(
      num_layers=hf["num_hidden_layers"], decoder_layers=0, d_model=hf["hidden_size"],
      num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
      max_len=hf["max_position_embeddings"], positions="learned", dropout=float(hf["hidden_dropout_prob"]),
      pre_ln=False, dtype="float32", attention="xla", ln_eps=float(hf["layer_norm_eps"]),
      type_vocab_size=hf["type_vocab_size"], position_offset=offset)


def _weight_files(source: str) -> list[str]:
  """The safetensors files holding the weights, relative to `source`."""
  if os.path.isfile(os.path.join(source, "model.safetensors")):
    return ["model.safetensors"]
  index = os.path.join(source, "model.safetensors.index.json")
  if os.path.isfile(index):
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise UserError(f"{index} has no weight_map; re-save the checkpoint with transformers.")
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.isfile(os.path.join(source, f))]
    if missing:
      raise UserError(f"{source} lacks the shard {missing[0]} that model.safetensors.index.json names; "
                      "download every shard of the checkpoint.")
    return files
  if any(os.path.isfile(os.path.join(source, f)) for f in ("pytorch_model.bin",
                                                           "pytorch_model.bin.index.json")):
    raise UserError(f"{source} holds only PyTorch weights (pytorch_model.bin), which tl_jax does not "
                    "unpickle; convert them to model.safetensors with transformers and torch by running "
                    "AutoModelForMaskedLM.from_pretrained(DIR).save_pretrained(DIR).")
  raise UserError(f"{source} holds no model.safetensors (nor model.safetensors.index.json); save the "
                  "checkpoint there with transformers' save_pretrained().")


def _tokenizer(source: str, vocab: int):
  from tl_jax.data.hf_tokenizer import HFTokenizer
  tokenizer = HFTokenizer(source)
  if tokenizer.vocab_size != vocab:
    raise UserError(f"the tokenizer in {source} has {tokenizer.vocab_size} tokens but config.json's "
                    f"vocab_size is {vocab}; put the tokenizer the model was trained with beside it.")
  return tokenizer


def _load_tensors(source: str, files: list[str]) -> dict[str, np.ndarray]:
  try:
    import ml_dtypes  # noqa: F401  (registers numpy's bfloat16, which bf16 checkpoints need)
    from safetensors.numpy import load_file
  except ImportError:
    raise UserError("importing Hugging Face checkpoints needs the safetensors package; install it with "
                    "pip install 'tl_jax[hf]'.") from None
  tensors = {}
  for name in files:
    path = os.path.join(source, name)
    try:
      loaded = load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError on damaged files
      raise UserError(f"{path} cannot be read ({str(e).splitlines()[0]}); download it again.") from None
    tensors.update({key: np.asarray(value, np.float32) for key, value in loaded.items()})
  return tensors


# ---------------------------------------------------------------------------
# Mapping Hugging Face tensor names onto the MaskedLM parameter tree.


def _flatten(tree) -> dict[str, object]:
  from flax import traverse_util
  return traverse_util.flatten_dict(tree, sep="/")


def _plan(config: config_lib.ModelConfig, family: str) -> dict[str, tuple[tuple[str, ...], str]]:
  """tl_jax path -> (Hugging Face names, first present wins; how to convert).

  How: `linearN` a torch Linear weight [out, in] transposed and split into a
  kernel with N input axes; `reshape` a vector; `same` as is; `rows` the
  vocabulary's rows, padded with zeros up to the padded vocabulary.
  """
  plan = {}

  def linear(target: str, source: str, n_in: int):  # torch Linear [out, in] -> kernel [in..., out...]
    plan[f"{target}/kernel"] = ((f"{source}.weight",), f"linear{n_in}")
    plan[f"{target}/bias"] = ((f"{source}.bias",), "reshape")

  def norm(target: str, source: str):
    plan[f"{target}/scale"] = ((f"{source}.weight",), "reshape")
    plan[f"{target}/bias"] = ((f"{source}.bias",), "reshape")

  plan["token_embed/embedding"] = (("embeddings.word_embeddings.weight",), "rows")
  plan["encoder/position_embed/embedding"] = (("embeddings.position_embeddings.weight",), "same")
  if config.type_vocab_size:
    plan["encoder/type_embed/embedding"] = (("embeddings.token_type_embeddings.weight",), "same")
  norm("encoder/ln_embed", "embeddings.LayerNorm")
  for i in range(config.num_layers):
    src, tgt = f"encoder.layer.{i}.", f"encoder/layer_{i}/"
    for name in ("query", "key", "value"):
      linear(f"{tgt}attention/{name}", f"{src}attention.self.{name}", 1)
    linear(f"{tgt}attention/out", f"{src}attention.output.dense", 2)
    norm(f"{tgt}ln_attention", f"{src}attention.output.LayerNorm")
    linear(f"{tgt}mlp/wi", f"{src}intermediate.dense", 1)
    linear(f"{tgt}mlp/wo", f"{src}output.dense", 1)
    norm(f"{tgt}ln_mlp", f"{src}output.LayerNorm")
  if family == "roberta":
    linear("head_dense", "lm_head.dense", 1)
    norm("head_ln", "lm_head.layer_norm")
    plan["head_bias"] = (("lm_head.bias", "lm_head.decoder.bias"), "rows")
  else:
    linear("head_dense", "cls.predictions.transform.dense", 1)
    norm("head_ln", "cls.predictions.transform.LayerNorm")
    plan["head_bias"] = (("cls.predictions.bias", "cls.predictions.decoder.bias"), "rows")
  return plan


def _source_shape(how: str, target: tuple[int, ...], vocab: int) -> tuple[int, ...]:
  if how.startswith("linear"):
    n_in = int(how[len("linear"):])
    return (math.prod(target[n_in:]), math.prod(target[:n_in]))
  if how == "rows":
    return (vocab,) + tuple(target[1:])
  if how == "reshape":  # a vector: biases, LayerNorm
    return (math.prod(target),)
  return tuple(target)


def _convert(how: str, x: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
  if how.startswith("linear"):
    return np.ascontiguousarray(x.T).reshape(target)
  if how == "rows":  # zero rows up to the padded vocabulary
    return np.concatenate([x, np.zeros((target[0] - x.shape[0],) + x.shape[1:], x.dtype)])
  return x.reshape(target)


def _canonical(name: str, family: str) -> str:
  """`roberta.`/`bert.` prefix dropped; the oldest BERT conversions' LayerNorm gamma/beta renamed."""
  if name.startswith(family + "."):
    name = name[len(family) + 1:]
  if ".LayerNorm." in name or ".layer_norm." in name:
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
  return name


def _abbreviate(names: list[str]) -> str:
  return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _map_weights(tensors: dict, hf: dict, config: config_lib.Config, source: str):
  """(params of MaskedLM, whether the MLM head came from the checkpoint, ignored tensor names)."""
  import flax.linen as nn
  import jax
  from flax import traverse_util

  from tl_jax.models.encoder import MaskedLM, padded_vocab

  family, vocab, m = hf["model_type"], hf["vocab_size"], config.model
  model = MaskedLM(m, padded_vocab(vocab))
  example = np.zeros((1, config.data.seq_len), np.int32)
  init_rng, _ = jax.random.split(jax.random.key(config.train.seed))  # as train/state.py's init_state
  init = lambda: nn.meta.unbox(model.init({"params": init_rng}, example, deterministic=True)["params"])
  targets = {k: tuple(v.shape) for k, v in _flatten(jax.eval_shape(init)).items()}
  plan = _plan(m, family)
  assert set(plan) == set(targets), sorted(set(plan) ^ set(targets))

  names = {}  # canonical name -> name in the file
  for name in tensors:
    names.setdefault(_canonical(name, family), name)
  used, out, missing = set(), {}, []
  for path, (sources, how) in plan.items():
    present = [s for s in sources if s in names]
    if not present:
      missing.append(path)
      continue
    first = tensors[names[present[0]]]
    for other in present[1:]:  # tied copies (the MLM bias saved twice) must agree
      if not np.array_equal(tensors[names[other]], first):
        raise UserError(f"{source} holds {names[present[0]]} and {names[other]} with different values "
                        "where transformers ties them; re-save the checkpoint with transformers.")
    expected = _source_shape(how, targets[path], vocab)
    if first.shape != expected:
      raise UserError(f"tensor {names[present[0]]} in {source} has shape {list(first.shape)} but "
                      f"config.json implies {list(expected)}; the checkpoint and its config.json disagree.")
    out[path] = _convert(how, first, targets[path])
    used.update(present)

  head_paths = [p for p in plan if p.startswith("head_")]
  encoder_missing = [p for p in missing if p not in head_paths]
  if encoder_missing:
    wanted = [plan[p][0][0] for p in encoder_missing]
    raise UserError(f"{source} lacks {len(wanted)} tensor(s) of the encoder its config.json describes "
                    f"({_abbreviate(wanted)}); download the whole checkpoint or fix config.json.")
  head_imported = not missing
  if missing and len(missing) < len(head_paths):
    wanted = [plan[p][0][0] for p in missing]
    raise UserError(f"{source} holds part of an MLM head but lacks {_abbreviate(wanted)}; download the "
                    "whole checkpoint.")
  if head_imported:
    decoder = "lm_head.decoder.weight" if family == "roberta" else "cls.predictions.decoder.weight"
    untied = hf.get("tie_word_embeddings", True) is False
    if decoder in names:
      used.add(decoder)
      embeddings = tensors[names["embeddings.word_embeddings.weight"]]
      untied = not np.array_equal(tensors[names[decoder]], embeddings)
    if untied:
      raise UserError(f"{source}'s MLM decoder is not tied to its word embeddings, but tl_jax's is; "
                      "import a checkpoint with tie_word_embeddings true.")
  else:
    head = jax.jit(lambda: {k: v for k, v in init().items() if k.startswith("head_")})()
    out.update({k: np.asarray(v) for k, v in _flatten(head).items()})

  leftover = sorted(names[n] for n in names if n not in used and n not in _BUFFERS)
  strays = [n for n in leftover if _canonical(n, family).startswith(("embeddings.", "encoder."))]
  if strays:
    raise UserError(f"{source} holds {len(strays)} encoder tensor(s) that config.json does not describe "
                    f"({_abbreviate(strays)}); the checkpoint and its config.json disagree.")
  try:
    device = jax.devices("cpu")[0]  # host memory: the accelerator may be busy or small
  except RuntimeError:  # JAX_PLATFORMS excludes the CPU
    device = jax.devices()[0]
  params = traverse_util.unflatten_dict({k: jax.device_put(v, device) for k, v in out.items()}, sep="/")
  return params, head_imported, leftover


# ---------------------------------------------------------------------------
# Writing the workdir.


def _write(workdir: str, source: str, config: config_lib.Config, tokenizer, params) -> None:
  """Builds the workdir in a sibling directory, then moves it into place."""
  from tl_jax.data.hf_tokenizer import SPECIAL_IDS_FILE, HFTokenizer
  from tl_jax.train.best import BestParams

  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  tmp = f"{workdir}.import-tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.join(tmp, "tokenizer"))
  try:
    for name in tokenizer.files():
      shutil.copyfile(os.path.join(source, name), os.path.join(tmp, "tokenizer", name))
    with open(os.path.join(tmp, "tokenizer", SPECIAL_IDS_FILE), "w") as f:
      json.dump(tokenizer.special_ids(), f, indent=2)
      f.write("\n")
    copied = HFTokenizer(os.path.join(tmp, "tokenizer"))
    assert (copied.vocab_size, copied.special_ids()) == (tokenizer.vocab_size, tokenizer.special_ids())
    BestParams(tmp, "eval_loss", higher_is_better=False).save(
        params, {"step": 0, "metric": "eval_loss", "source": f"hf:{source}"})
    config_lib.save(config, os.path.join(tmp, "config.json"))
    if not os.path.exists(workdir):
      os.rename(tmp, workdir)
    else:  # an existing directory without a run: move the parts in, config.json last
      for name in ("tokenizer", "best", "config.json"):
        os.rename(os.path.join(tmp, name), os.path.join(workdir, name))
      os.rmdir(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
