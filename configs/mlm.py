"""Masked-LM pretraining presets: `--config=configs/mlm.py:PRESET`.

Presets:
  tiny             CPU, seconds to compile, learns the synthetic language in a minute or two
  tiny-wikitext    tiny on WikiText-2 from ../shared/data (valid split to train, test to evaluate)
  small            a step up for a laptop or a small GPU
  roberta-base     12 x 768, the paper's RoBERTa-base shape
  roberta-large    24 x 1024
  gpu-smoke        a base-sized run that fills one GPU for a few minutes
  dL-wW            the paper's grid: depth L in {3,6,12,18,24} x width W in {256,512,768,1024,1536},
                   64-dim heads, FFN 4 x width (e.g. d6-w512)
"""

import re

from tl_jax.config import Config
from tl_jax.errors import UserError

GRID_DEPTHS = (3, 6, 12, 18, 24)
GRID_WIDTHS = (256, 512, 768, 1024, 1536)


def _base() -> Config:
  c = Config()
  c.data.seq_len = 128
  c.data.vocab_size = 8000
  c.data.max_train_tokens = 50_000_000
  c.train.batch_size = 256
  c.train.learning_rate = 5e-4
  c.train.warmup_steps = 1000
  c.train.max_steps = 100_000
  c.eval.every_steps = 1000
  c.checkpoint.every_steps = 2000
  return c


def _shape(c: Config, layers: int, width: int) -> Config:
  c.model.num_layers = layers
  c.model.d_model = width
  c.model.num_heads = width // 64
  c.model.d_ff = 4 * width
  return c


def tiny() -> Config:
  c = Config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 128, 2, 512
  c.model.max_len = 64
  c.model.dropout = 0.0
  c.model.dtype = "float32"  # CPUs have no fast bf16 matmul; GPU presets use bf16
  c.data.seq_len = 64
  c.data.vocab_size = 2000
  c.data.max_train_tokens = 1_000_000
  c.data.max_eval_tokens = 32_768
  c.data.tokenizer_train_chars = 2_000_000
  c.train.batch_size = 32
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = 50
  c.train.max_steps = 600
  c.train.log_every = 20
  c.eval.every_steps = 100
  c.eval.num_batches = 8
  c.eval.batch_size = 32
  c.checkpoint.every_steps = 200
  return c


def tiny_wikitext() -> Config:
  c = tiny()
  c.data.source = "text"
  c.data.train_files = "../shared/data/wikitext2/valid.txt"
  c.data.eval_files = "../shared/data/wikitext2/test.txt"
  c.data.max_train_tokens = 0  # all of it
  return c


def small() -> Config:
  c = _shape(_base(), 4, 256)
  c.data.max_train_tokens = 5_000_000
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 200
  c.train.max_steps = 5000
  c.eval.every_steps = 500
  return c


def roberta_base() -> Config:
  return _shape(_base(), 12, 768)


def roberta_large() -> Config:
  c = _shape(_base(), 24, 1024)
  c.model.pre_ln = True  # post-LN at 24 layers needs a long warmup to train at all
  c.train.learning_rate = 3e-4
  return c


def gpu_smoke() -> Config:
  c = roberta_base()
  c.data.vocab_size = 4096  # the synthetic language has ~5k word forms; 8k pieces cannot be learned
  c.data.max_train_tokens = 20_000_000
  c.train.batch_size = 256
  c.train.max_steps = 600
  c.train.warmup_steps = 100
  c.train.log_every = 50
  c.eval.every_steps = 200
  c.checkpoint.every_steps = 100_000
  return c


PRESETS = {
    "tiny": tiny,
    "tiny-wikitext": tiny_wikitext,
    "small": small,
    "roberta-base": roberta_base,
    "roberta-large": roberta_large,
    "gpu-smoke": gpu_smoke,
}


def get_config(preset: str) -> Config:
  if preset in PRESETS:
    config = PRESETS[preset]()
  elif m := re.fullmatch(r"d(\d+)-w(\d+)", preset):
    layers, width = int(m.group(1)), int(m.group(2))
    if layers not in GRID_DEPTHS or width not in GRID_WIDTHS:
      raise UserError(f"preset {preset!r} is off the paper's grid (depths {GRID_DEPTHS}, widths "
                      f"{GRID_WIDTHS}); override model.num_layers / model.d_model instead.")
    config = _shape(_base(), layers, width)
  else:
    raise UserError(f"unknown preset {preset!r} in configs/mlm.py; choose one of "
                    f"{', '.join(PRESETS)} or a grid point dL-wW such as d6-w512.")
  config.name = preset
  return config
