"""The paper's masked-LM grid at full scale (RQ1), then MNLI and compression for five sizes.

Pretraining: every depth {3, 6, 12, 18, 24} x width {256, 512, 768, 1024, 1536} of
configs/mlm.py's `dL-wW` presets (64-dim heads, FFN 4 x width), 25 runs, each for the same
budget of training seconds, on English Wikipedia through tensorflow-datasets
(wikipedia/20230601.en: its first 2,000 articles are held out for evaluation, the rest trains).
The budget ends every run; the step limit is out of reach, so the learning rate is held after
warmup whatever the size's speed.

Then the grid's diagonal, d3-w256, d6-w512, d12-w768, d18-w1024 and d24-w1536 (small to large,
the comparison the compression question asks for), is finetuned on MNLI (configs/glue.py:mnli
from its best-eval-loss parameters; validation_matched and _mismatched reported) and
compressed with the `paper` grid (configs/compress.py: quantization 2-8 bits, pruning 10-90%,
2:4, and both).

Variants: the budget, `configs/sweeps/paper_mlm.py:24h` (the default), `:6h`, `:3600`.

Time and hardware: 25 x the budget of pretraining plus compile, data and evals (the first stage
also tokenizes all of Wikipedia into the shared cache, $TL_JAX_CACHE, once: hours on one host),
and five MNLI runs of 3 epochs (~37k steps of 32): about 26 days at 24h on one machine, run in
sequence; spread it with `--only=STAGE` over machines sharing the root. Meant for a TPU pod
slice or a multi-GPU host: bf16 compute, 2,048 sequences of 128 tokens per step for every
size, pre-LN (post-LN at 18-24 layers does not train without a long warmup; one architecture
across the grid keeps depth the only change). The mesh is the launcher's: add it to the sweep
command and it reaches every training stage, e.g.

  tl-jax sweep --config=configs/sweeps/paper_mlm.py:24h --root=gs://.../rq1 \\
      --config.parallel.data=-1 --config.parallel.fsdp=8 --config.data.tfds_data_dir=/data/tfds
"""

from tl_jax.sweep import Sweep, parse_seconds, size_stages

DEPTHS = (3, 6, 12, 18, 24)
WIDTHS = (256, 512, 768, 1024, 1536)
FINETUNED = ("d3-w256", "d6-w512", "d12-w768", "d18-w1024", "d24-w1536")
HELD_OUT_ARTICLES = 2000


def pretrain_overrides(seconds: float) -> dict:
  return {
      "data.source": "tfds",
      "data.tfds_name": "wikipedia/20230601.en",
      "data.tfds_train_split": f"train[{HELD_OUT_ARTICLES}:]",  # Wikipedia has no validation split
      "data.tfds_eval_split": f"train[:{HELD_OUT_ARTICLES}]",
      "data.max_train_tokens": 0,  # all of it
      "data.vocab_size": 32000,
      "data.tokenizer_train_chars": 50_000_000,
      "model.dtype": "bfloat16",
      "model.pre_ln": True,
      "train.batch_size": 2048,
      "train.learning_rate": 5e-4,
      "train.warmup_steps": 2000,
      "train.max_train_seconds": seconds,
      "train.max_steps": 100_000_000,
      "train.log_every": 200,
      "eval.every_steps": 0,
      "eval.every_seconds": max(seconds // 48, 1),  # 48 points on every curve
      "eval.num_batches": 16,
      "checkpoint.every_steps": 5000,
  }


def get_sweep(variant: str | None) -> Sweep:
  seconds = parse_seconds(variant or "24h", "budget")
  stages = []
  for depth in DEPTHS:
    for width in WIDTHS:
      size = f"d{depth}-w{width}"
      if size in FINETUNED:
        stages += size_stages(size, pretrain_overrides(seconds), "configs/glue.py:mnli",
                              {"train.log_every": 500}, "configs/compress.py:paper")
      else:
        stages += size_stages(size, pretrain_overrides(seconds))
  return Sweep("paper_mlm", f"RQ1 masked-LM grid ({len(DEPTHS)} depths x {len(WIDTHS)} widths, "
               f"{seconds:g} training seconds each, Wikipedia), MNLI and compression for "
               f"{', '.join(FINETUNED)}", stages)
