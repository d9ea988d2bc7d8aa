"""Translation at equal budgets: WMT14 En->Fr over encoder/decoder depth x width (RQ1 for MT).

Grid (this file's choice): encoder = decoder depth {2, 4, 6, 8} x width {256, 512, 768, 1024}
of configs/translate.py's `eL-dL-wW` presets (the `base` recipe: 64-dim heads, FFN 4 x width,
32k joint sentencepiece vocabulary, inverse-sqrt schedule, label smoothing 0.1), 16 runs, each
for the same budget of training seconds on all of wmt14_translate/fr-en through
tensorflow-datasets (newstest2013 to evaluate, BLEU with beam 4 on 500 of its sentences at
every eval; newstest2014 is the test split). The budget ends every run, not a step count.
Each translator is then compressed with the `paper` grid (configs/compress.py, GPTQ included),
scored by BLEU on the same 500 sentences (RQ2/RQ3 for translation).

Variants: the budget, `configs/sweeps/paper_translate.py:24h` (the default), `:6h`, `:3600`.

Time and hardware: 16 x the budget plus compile, data (the first run tokenizes the 36M pairs
into the shared cache once) and evals: about 17 days at 24h on one machine in sequence; spread
it with `--only=STAGE` over machines sharing the root. bf16 compute and 256 packed rows of 128
target tokens per step (about transformer-base's tokens per batch); the mesh is the
launcher's, e.g. `--config.parallel.fsdp=8 --config.data.tfds_data_dir=/data/tfds` added to
the sweep command reaches every stage.
"""

from tl_jax.sweep import Sweep, parse_seconds, translate_stages

DEPTHS = (2, 4, 6, 8)
WIDTHS = (256, 512, 768, 1024)


def get_sweep(variant: str | None) -> Sweep:
  seconds = parse_seconds(variant or "24h", "budget")
  overrides = {
      "data.source": "tfds",
      "data.tfds_name": "wmt14_translate/fr-en",
      "data.max_train_pairs": 0,  # all of it
      "model.dtype": "bfloat16",
      "train.max_train_seconds": seconds,
      "train.max_steps": 100_000_000,
      "train.log_every": 200,
      "eval.every_steps": 0,
      "eval.every_seconds": max(seconds // 24, 1),
      "checkpoint.every_steps": 5000,
  }
  stages = []
  for d in DEPTHS:
    for w in WIDTHS:
      stages += translate_stages(f"e{d}-d{d}-w{w}", overrides, "configs/compress.py:paper")
  return Sweep("paper_translate", f"WMT14 En-Fr, encoder=decoder depth {DEPTHS} x width {WIDTHS}, "
               f"{seconds:g} training seconds each, then the paper compression grid", stages)
