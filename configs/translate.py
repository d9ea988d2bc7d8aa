"""Translation presets: `--config=configs/translate.py:PRESET`.

Presets:
  tiny        CPU, the synthetic En->Fr-like task; BLEU rises within a few minutes
  multi30k    Multi30k En->Fr from ../shared/data (a 10-minute GPU run)
  base        6+6 x 512, 8 heads, FFN 2048 (Vaswani et al. base)
  big         6+6 x 1024, 16 heads, FFN 4096 (transformer-big)
  eL-dL-wW    grid: encoder depth, decoder depth, width (64-dim heads, FFN 4 x width), e.g. e6-d6-w512
"""

import re

from tl_jax.config import TranslateConfig
from tl_jax.errors import UserError


def _common() -> TranslateConfig:
  c = TranslateConfig()
  c.model.positions = "sinusoidal"
  c.model.dropout = 0.1
  c.train.schedule = "inverse_sqrt"
  c.train.label_smoothing = 0.1
  c.train.b1, c.train.b2, c.train.eps = 0.9, 0.98, 1e-9
  c.train.weight_decay = 0.0
  c.train.grad_clip = 0.0
  return c


def _shape(c: TranslateConfig, enc: int, dec: int, width: int, heads: int | None = None):
  c.model.num_layers, c.model.decoder_layers, c.model.d_model = enc, dec, width
  c.model.num_heads = heads or width // 64
  c.model.d_ff = 4 * width
  return c


def tiny() -> TranslateConfig:
  c = _shape(_common(), 2, 2, 128, 4)
  c.model.max_len = 64
  c.model.dtype = "float32"
  c.model.dropout = 0.0
  c.data.seq_len = 64
  c.data.vocab_size = 2000
  c.data.max_train_pairs = 100_000
  c.data.max_eval_pairs = 200
  c.data.tokenizer_train_chars = 2_000_000
  c.train.batch_size = 32
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = 100
  c.train.max_steps = 800
  c.train.log_every = 50
  c.eval.every_steps = 200
  c.eval.num_batches = 4
  c.eval.batch_size = 16
  c.eval.bleu_pairs = 100
  c.eval.decode_batch_size = 50
  c.eval.beam_size = 1
  c.checkpoint.every_steps = 400
  return c


def multi30k() -> TranslateConfig:
  c = _shape(_common(), 6, 6, 512, 8)
  c.model.dtype = "bfloat16"
  c.model.max_len = 128
  c.model.dropout = 0.3
  c.data.source = "text"
  c.data.train_prefix = "../shared/data/multi30k/train"
  c.data.eval_prefix = "../shared/data/multi30k/test_2016_flickr"
  c.data.test_prefix = "../shared/data/multi30k/test_2016_flickr"
  c.data.max_train_pairs = 0
  c.data.max_eval_pairs = 0
  c.data.vocab_size = 8000
  c.data.seq_len = 128
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 1000
  c.train.max_steps = 6000
  c.train.max_train_seconds = 480
  c.train.log_every = 100
  c.eval.every_steps = 1000
  c.eval.num_batches = 8
  c.eval.batch_size = 32
  c.eval.bleu_pairs = 0
  c.eval.decode_batch_size = 256
  c.checkpoint.every_steps = 100_000
  return c


def base() -> TranslateConfig:
  c = _shape(_common(), 6, 6, 512, 8)
  c.model.max_len = 256
  c.data.seq_len = 128
  c.data.vocab_size = 32000
  c.train.batch_size = 256
  c.train.learning_rate = 7e-4
  c.train.warmup_steps = 4000
  c.train.max_steps = 100_000
  c.eval.every_steps = 2000
  return c


def big() -> TranslateConfig:
  c = _shape(base(), 6, 6, 1024, 16)
  c.model.dropout = 0.3
  c.train.learning_rate = 5e-4
  return c


PRESETS = {"tiny": tiny, "multi30k": multi30k, "base": base, "big": big}


def get_config(preset: str) -> TranslateConfig:
  if preset in PRESETS:
    config = PRESETS[preset]()
  elif m := re.fullmatch(r"e(\d+)-d(\d+)-w(\d+)", preset):
    config = _shape(base(), int(m.group(1)), int(m.group(2)), int(m.group(3)))
  else:
    raise UserError(f"unknown preset {preset!r} in configs/translate.py; choose one of "
                    f"{', '.join(PRESETS)} or a grid point eL-dL-wW such as e6-d6-w512.")
  config.name = preset
  return config
