"""RQ2/RQ3 for translation on one GPU: Multi30k translators of two sizes, each compressed.

Sizes: the `multi30k` preset (6+6 x 512, 8 heads) and the same recipe at 3+3 x 256 (4 heads).
Each is trained on Multi30k En->Fr (29k pairs, joint 8k sentencepiece) for `train.max_steps`
steps (4000: the README measured BLEU 58.7 there on an H100 for the 6+6 x 512), then compressed
with the `paper` grid (uniform, k-means and GPTQ at 8/6/4/3/2 bits, magnitude pruning 10-90%,
2:4, pruning then 8/6/4 bits), every point scored by BLEU (sacreBLEU, beam 4, length penalty
0.6) on the first 500 sentences of test_2016_flickr, the run's own eval set.

Variants: `:multi30k` or `:small` runs one size (two sweeps with two roots can share a GPU);
no variant runs both in turn. Data: $TL_JAX_DATA, else ../shared/data, holding multi30k/.

  tl-jax sweep --config=configs/sweeps/translate_compress.py --root=runs/translate_compress
  tl-jax report runs/translate_compress --out=runs/translate_compress/report
"""

import os

from tl_jax.errors import UserError
from tl_jax.sweep import Sweep, translate_stages

SIZES = {
    "multi30k": {},
    "small": {"model.num_layers": 3, "model.decoder_layers": 3, "model.d_model": 256,
              "model.num_heads": 4, "model.d_ff": 1024},
}


def get_sweep(variant: str | None) -> Sweep:
  if variant not in (None, *SIZES):
    raise UserError(f"variant {variant!r} of translate_compress is not one of {', '.join(SIZES)}.")
  data = os.environ.get("TL_JAX_DATA", "../shared/data").rstrip("/")
  common = {
      "data.train_prefix": f"{data}/multi30k/train",
      "data.eval_prefix": f"{data}/multi30k/test_2016_flickr",
      "data.test_prefix": f"{data}/multi30k/test_2016_flickr",
      "train.max_steps": 4000,
      "eval.every_steps": 2000,
      "eval.bleu_pairs": 500,
  }
  compress = {"max_eval_examples": 500}
  stages = []
  for name in SIZES if variant is None else (variant,):
    stages += translate_stages("multi30k", {**common, **SIZES[name]}, "configs/compress.py:paper",
                               compress, label=name)
  return Sweep("translate_compress", "Multi30k translators (6+6 x 512, 3+3 x 256) trained 4000 "
               "steps, compressed with the paper grid, scored by BLEU", stages)
