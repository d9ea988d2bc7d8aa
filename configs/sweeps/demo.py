"""The CPU demo (`tl-jax demo`): train large, then compress, in minutes on a laptop.

Three encoder sizes, 2 x 64, 2 x 128 and 4 x 128 (configs/mlm.py `tiny` with model overrides,
pre-LN, batches of 16), are pretrained on the synthetic language for the same budget of training
seconds; each is finetuned on the synthetic sentiment task (configs/glue.py:synthetic as it is,
375 steps) and compressed with the `quick` grid (configs/compress.py). The question in
miniature: with equal training time, does the larger model do better, and does it still after
compression?

Time: 6m13s for the whole sweep on the 2-core development CPU (2026-11-24, fresh token cache,
60 s budget): each pretraining stage takes about 70 s whatever the machine's load (the budget
is training seconds); finetuning took 14-54 s and the grids 10-16 s, and these stretch on a
busy machine. In that run the pretraining eval losses were 4.711 / 4.743 / 4.774 (2,320 / 1,360
/ 780 steps: on a CPU the smallest gets furthest), and the finetuned accuracies 0.603 / 0.595 /
0.669, the 4 x 128 model keeping 0.659 at 2 bits.

`:SECONDS` changes the budget, e.g. `configs/sweeps/demo.py:30` for a quicker look.
"""

from tl_jax.errors import UserError
from tl_jax.sweep import Sweep, parse_seconds, size_stages

# label -> model overrides of configs/mlm.py:tiny (2 x 128, 2 heads, FFN 512); 64-dim heads.
SIZES = {
    "2x64": {"model.num_layers": 2, "model.d_model": 64, "model.num_heads": 1, "model.d_ff": 256},
    "2x128": {},
    "4x128": {"model.num_layers": 4},
}
DEFAULT_SECONDS = 60


def get_sweep(variant: str | None) -> Sweep:
  seconds = parse_seconds(variant, "demo budget") if variant else DEFAULT_SECONDS
  if seconds <= 0:
    raise UserError(f"the demo budget must be positive, not {variant!r}; e.g. configs/sweeps/demo.py:60.")
  pretrain = {
      # A minute on 2 cores is a few hundred steps: post-LN 4 x 128 (and 2 x 256) at tiny's batch
      # of 32 were still on the unigram plateau (eval loss ~5.08) when the budget ended, and their
      # finetuning stayed at the majority class. Pre-LN and batches of 16 (twice the steps) let
      # every size leave it (4 x 128: 4.77 after 780 steps, then 0.669 finetuned).
      "model.pre_ln": True,
      "train.batch_size": 16,
      "train.max_train_seconds": seconds,
      "train.max_steps": 1_000_000,  # the budget stops every size, never a step count
      # The loop checks the budget when it synchronises (every log_every steps, or at an eval):
      # a short interval keeps the overshoot, and so the sizes' budgets, within a second or two.
      "train.log_every": 20,
      "eval.every_steps": 0,
      "eval.every_seconds": max(seconds / 6, 1),  # the same few points on every curve
  }
  finetune = {}  # the preset as it is: 3 epochs of 4,000 sentences, 375 steps (10-50 s on CPU)
  stages = []
  for label, model in SIZES.items():
    stages += size_stages("tiny", {**model, **pretrain}, "configs/glue.py:synthetic", finetune,
                          "configs/compress.py:quick", label=label)
  return Sweep("demo", f"three tiny encoders, {seconds:g} training seconds each, finetuned on "
               "synthetic sentiment and compressed (quick grid)", stages)
