"""A reduced paper sweep for one H100: three sizes, equal pretraining budgets, SST-2, compression.

d3-w256, d6-w512 and d12-w768 (configs/mlm.py grid presets) are pretrained on WikiText-2 valid
plus the English side of Multi30k exactly as bench/pretrain_text.sh does (all the text, eval on
WikiText-2 test four times over the budget, no step limit), each for the same budget of training
seconds; each is then finetuned on SST-2 (configs/glue.py:sst2 from its best-eval-loss
parameters) and compressed with the `paper` grid (configs/compress.py, 39 points). It is
bench/sst2_compress.sh as a sweep.

Variants: the budget in seconds, `configs/sweeps/gpu_reduced.py:120` (the default) or `:300`.
Data: $TL_JAX_DATA, else ../shared/data (relative to where the sweep runs), holding
wikitext2/{valid,test}.txt, multi30k/train.en and sst2/train.tsv.

Time (estimated from the README's H100 measurements, not yet measured as a sweep): each size
takes its budget plus about a minute of data, compile and evals, SST-2 finetuning one to two
minutes, the grid one to two minutes; about 15 minutes at 120 s. Where one call is capped at 10
minutes, run it under `timeout` (SIGTERM checkpoints the running stage, the sweep exits 143) and
repeat the same command until it prints `sweep gpu_reduced finished`:

  timeout 590 tl-jax sweep --config=configs/sweeps/gpu_reduced.py:120 --root=runs/gpu_reduced
"""

import os

from tl_jax.errors import UserError
from tl_jax.sweep import Sweep, parse_seconds, size_stages

SIZES = ("d3-w256", "d6-w512", "d12-w768")
DEFAULT_SECONDS = 120


def get_sweep(variant: str | None) -> Sweep:
  seconds = parse_seconds(variant, "budget") if variant else DEFAULT_SECONDS
  if seconds < 4:
    raise UserError(f"budget {variant!r} is too short to evaluate four times; give at least 4 seconds.")
  data = os.environ.get("TL_JAX_DATA", "../shared/data").rstrip("/")
  pretrain = {  # bench/pretrain_text.sh
      "data.source": "text",
      "data.train_files": f"{data}/wikitext2/valid.txt,{data}/multi30k/train.en",
      "data.eval_files": f"{data}/wikitext2/test.txt",
      "data.max_train_tokens": 0,
      "train.max_train_seconds": seconds,
      "train.max_steps": 1_000_000,
      "train.log_every": 100,
      "eval.every_steps": 0,
      "eval.every_seconds": seconds // 4,
      "checkpoint.every_steps": 1_000_000,  # SIGTERM and checkpoint.every_seconds still save
  }
  finetune = {  # bench/sst2_compress.sh
      "data.train_files": f"{data}/sst2/train.tsv",
      "train.log_every": 500,
      "eval.every_steps": 500,
      "checkpoint.every_steps": 1_000_000,
  }
  stages = []
  for size in SIZES:
    stages += size_stages(size, pretrain, "configs/glue.py:sst2", finetune,
                          "configs/compress.py:paper")
  return Sweep("gpu_reduced", f"{', '.join(SIZES)} pretrained {seconds:g} training seconds each on "
               "WikiText-2 + Multi30k English, finetuned on SST-2, compressed with the paper grid",
               stages)
