"""Training data against model size (RQ4): nested subsets of the corpus, one run per (size, subset).

Each size is pretrained for the same budget of training seconds on the first N tokens of the
synthetic language (data.max_train_tokens; the stream is deterministic and the tokenizer is the
same for every N, so the smaller subsets are prefixes of the larger ones), evaluated on the same
held-out text. A subset smaller than what the budget reads is repeated: the gap between the
training loss (metrics.jsonl train lines) and eval_loss shows how much each size overfits it.

Variants (`configs/sweeps/rq4_data.py:VARIANT`, optionally `-SECONDS` for the budget, e.g. `:gpu-600`):
  cpu (default)  2 x 64, 2 x 128, 4 x 128 (configs/mlm.py `tiny`), subsets 0.1M/0.3M/1M/3M tokens,
                 60 s each: 12 runs, about 18 minutes on a 2-core CPU (the 3M-token cache is
                 generated once, ~1 minute)
  gpu            d3-w256, d6-w512, d12-w768 (bf16), subsets 1M/3M/10M/30M tokens, 300 s each:
                 12 runs, about 75 minutes on one H100 (a budget reads ~100M tokens, so every subset
                 repeats)
"""

from tl_jax.errors import UserError
from tl_jax.sweep import Sweep, parse_seconds, size_stages

VARIANTS = {
    "cpu": {
        "preset": "tiny",
        "sizes": {
            "2x64": {"model.num_layers": 2, "model.d_model": 64, "model.num_heads": 1,
                     "model.d_ff": 256},
            "2x128": {},
            "4x128": {"model.num_layers": 4},
        },
        "tokens": (100_000, 300_000, 1_000_000, 3_000_000),
        "seconds": 60,
        "extra": {"train.log_every": 50},
    },
    "gpu": {
        "preset": None,  # the size is the preset
        "sizes": {"d3-w256": {}, "d6-w512": {}, "d12-w768": {}},
        "tokens": (1_000_000, 3_000_000, 10_000_000, 30_000_000),
        "seconds": 300,
        # The synthetic language has ~5k word forms; the grid presets' 8k pieces cannot be learned.
        "extra": {"data.vocab_size": 4096, "train.log_every": 100},
    },
}


def _tokens(n: int) -> str:
  return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n // 1000}k"


def get_sweep(variant: str | None) -> Sweep:
  name, _, budget = (variant or "cpu").partition("-")
  if name not in VARIANTS:
    raise UserError(f"unknown rq4_data variant {variant!r}; use cpu or gpu, optionally with a "
                    "budget such as gpu-600.")
  v = VARIANTS[name]
  seconds = parse_seconds(budget, "budget") if budget else v["seconds"]
  stages = []
  for label, model in v["sizes"].items():
    for tokens in v["tokens"]:
      overrides = {**model, **v["extra"], "data.max_train_tokens": tokens,
                   "train.max_train_seconds": seconds, "train.max_steps": 100_000_000,
                   "eval.every_steps": 0, "eval.every_seconds": max(seconds // 10, 1)}
      stages += size_stages(v["preset"] or label, overrides,
                            label=f"{label}/tokens-{_tokens(tokens)}")
  return Sweep("rq4_data", f"{name}: {', '.join(v['sizes'])} x training subsets "
               f"{', '.join(_tokens(t) for t in v['tokens'])} tokens, {seconds:g} training seconds "
               "each, synthetic language", stages)
