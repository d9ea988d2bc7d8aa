"""The study on one GPU, in parts that each fit a lease of about 25 minutes (issue 20).

Every part shares one root, so the report reads them together and later parts start from
earlier ones (a stage defined identically in two parts is the same stage: its marker skips it).

Parts (`configs/sweeps/h200_study.py:PART[-SECONDS]`, rq1 when none is named; SECONDS is the training budget of each run,
and a part that starts from another's runs takes that part's budget):

  rq1[-SECONDS]     RQ1, compute-bound: d3-w256, d6-w512, d6-w768 and d12-w768 pretrained on the
                    synthetic language v4 (entity facts; data.synthetic_version=4) for the same
                    training seconds (default 60), seeds 0 and 1, evaluated on a common grid of
                    training seconds (eval.every_seconds = budget / 6). The corpus holds
                    TOKENS_PER_SECOND (10M) tokens per second of budget so that no size repeats
                    it: the fastest, d3-w256 (pre-LN, v4), read 215M tokens in 30 s on an H200
                    (2026-12-04, docs/results/synthetic_floor_h200/), 7.2M a second; the
                    report's regime columns give each run's passes.
  rq1share[-SECONDS]  RQ1 again with the one recipe change the rq1-40 runs called for (issue 20,
                    docs/results/h200_study/README.md): the warmup is WARMUP_SHARE of each run's
                    steps (train.warmup_fraction) instead of 300 steps for every size. At 40 s
                    those 300 steps were 39% of 12x768's 770 steps and 3-5% of 3x256's.
  rq1long[-SECONDS]  RQ1 past 60 s (default 150, which fits one lease): rq1share's recipe for
                    d6-w512, d6-w768 and d12-w768, seeds 0 and 1. d3-w256 is left out: it was
                    behind 6x512 at 60 s and flattening (rq1share), and at its pace the corpus
                    that keeps it from repeating (10M tokens a second of budget) takes minutes to
                    build each lease; the corpus here is LONG_TOKENS_PER_SECOND, sized for
                    d6-w512, the fastest size in it. The question it answers: do the deeper and
                    wider sizes overtake 6x512 once the budget lets them leave their plateau?
                    At 150 s on an H100 (2026-12-07): not yet, but 6x768's deficit shrank from
                    0.074 nats at 60 s to 0.013 and 12x768's from 0.655 to 0.084.
  rq4[-SECONDS]     RQ4, data-bound: the same sizes on nested prefixes of real English
                    (WikiText-2 valid + Multi30k English: 0.1M, 0.3M tokens and all of it,
                    about 0.72M), one seed, evaluated on WikiText-2 test; the report's RQ4
                    section draws the train/validation gap against data size.
  finetune          RQ2/RQ3/RQ5 for the masked LMs: d3-w256, d6-w512 and d12-w768 of rq1 (both
                    seeds) finetuned on the language's own sentiment task (configs/glue.py
                    :synthetic, 20,000 training and 5,000 dev examples, a standard error of
                    0.005 at accuracy 0.85; SST-2 would meet a tokenizer trained on the
                    synthetic language), each compressed with the `paper` grid (GPTQ included).
  finetuneshare     the same from rq1share's runs (its warmup share): at 40 s with rq1's 300
                    warmup steps, 12x768 pretrained too little for its finetune to test RQ2/RQ3
                    (docs/results/h200_study/README.md, part finetune).
  finetunelr        finetuneshare's sizes finetuned at FINETUNE_LR (1e-4) as well as the
                    synthetic preset's 1e-3, and from scratch (no pretraining, 1e-3); only the
                    1e-4 finetunes are compressed. At 1e-3, twice pretraining's peak rate, the
                    6x512 encoders that pretrained better than 3x256 finetuned 5 points worse and
                    lost nothing to 90% pruning (part finetuneshare). At 1e-4 both finetuned 4-9
                    points better and 6x512 caught up, and 12x768 tied them (part finetunelr,
                    2026-12-06): use this part, not finetune or finetuneshare, for RQ2/RQ3.
                    Stages finetune-lr1e-4, compress-lr1e-4, finetune-scratch, beside
                    finetuneshare's finetune.
  sst2              the same on SST-2, from rq4's all-data runs: English pretraining, data-bound.
  translate[-SECONDS]  RQ1 for translation: Multi30k En->Fr at 3+3 x 512, deeper 12+12 x 512 and
                    wider 3+3 x 1024 (four times the non-embedding parameters each), seeds 0 and
                    1, the same training seconds (default 120), BLEU on the first 500 test
                    sentences at budget / 4 intervals.
  translate-compress  RQ2/RQ3 for translation: seeds 0 and 1 of the 3+3 x 512 and 3+3 x 1024
                    translators compressed with the `paper` grid, scored by BLEU (about 8
                    minutes a seed on an H100: run one seed a call with ONLY=).

The recipe, fixed before any run and the same for every size: pre-LN (issue 20 measured post-LN
d12-w768 never leaving the loss plateau at this budget while pre-LN trained), the grid presets'
learning rate (5e-4 for masked LMs, the multi30k preset's 1e-3 for translation), 300 warmup
steps (masked LM; translation keeps its preset's inverse-sqrt warmup), and a linear decay laid
over the seconds budget (train.schedule_horizon=seconds) for masked LMs, so each size ends its
schedule at the budget. Nothing is tuned per size.

Data: $TL_JAX_DATA, else ../shared/data (wikitext2/, multi30k/, sst2/). Each call to the GPU is
limited to 10 minutes: run a part under `timeout` and repeat the same command until it prints
`sweep h200_study... finished` (SIGTERM checkpoints the running stage; the sweep resumes it):

  timeout 590 tl-jax sweep --config=configs/sweeps/h200_study.py:rq1 --root=runs/h200_study
  tl-jax report runs/h200_study --out=runs/h200_study/report
"""

import dataclasses
import os
import re

from tl_jax.errors import UserError
from tl_jax.sweep import Sweep, parse_seconds, seeded, size_stages, translate_stages

MLM_SIZES = ("d3-w256", "d6-w512", "d6-w768", "d12-w768")
FINETUNE_SIZES = ("d3-w256", "d6-w512", "d12-w768")
SEEDS = (0, 1)
TOKENS_PER_SECOND = 10_000_000  # of training budget; d3-w256 reads 7.2M a second on an H200
# rq1long's sizes, and its corpus: d6-w512 read 1.98M tokens a second on an H100 (part rq1share,
# 2026-12-06); twice that leaves room for a faster GPU. The synthetic source wrote 7.7M (H100
# machine) to 10M (H200 machine) tokens a second on 16 cores, so 150 s cost 60-80 s to build.
LONG_SIZES = ("d6-w512", "d6-w768", "d12-w768")
LONG_TOKENS_PER_SECOND = 4_000_000
TEXT_TOKENS = (100_000, 300_000, 0)  # nested prefixes; 0 = all of it
TRANSLATE_SHAPES = {
    "e3-d3-w512": {"model.num_layers": 3, "model.decoder_layers": 3},
    "e12-d12-w512": {"model.num_layers": 12, "model.decoder_layers": 12},
    "e3-d3-w1024": {"model.num_layers": 3, "model.decoder_layers": 3, "model.d_model": 1024,
                    "model.num_heads": 16, "model.d_ff": 4096},
}
DEFAULT_SECONDS = {"rq1": 60, "rq1share": 60, "rq1long": 150, "rq4": 60, "translate": 120}
PARTS = ("rq1", "rq1share", "rq1long", "rq4", "finetune", "finetuneshare", "finetunelr", "sst2",
         "translate", "translate-compress")
# rq1share's warmup, of each run's steps: twice the 5% of the budget over which a seconds
# horizon measures the pace before it fixes the end, so the end is known before the warmup is
# over (until then the rate rises at the 300 steps' pace). RoBERTa's finetuning uses 6%.
WARMUP_SHARE = 0.1
# finetunelr's rate: a fifth of the masked-LM presets' pretraining peak (5e-4). Published
# recipes finetune below the pretraining peak: BERT at 2e-5 to 5e-5 after 1e-4 (a fifth to a
# half), RoBERTa at 1e-5 to 3e-5 after 6e-4. Set from that rule, not searched over results.
FINETUNE_LR = 1e-4

RECIPE = {"model.pre_ln": True, "train.warmup_steps": 300, "train.max_steps": 100_000_000,
          "train.schedule_horizon": "seconds", "train.log_every": 100, "eval.every_steps": 0,
          "checkpoint.every_steps": 100_000_000}  # SIGTERM and checkpoint.every_seconds still save


def _data() -> str:
  return os.environ.get("TL_JAX_DATA", "../shared/data").rstrip("/")


def _timed(seconds: float) -> dict:
  return {"train.max_train_seconds": seconds, "eval.every_seconds": max(seconds / 6, 1)}


def _tokens(n: int) -> str:
  return "all" if n == 0 else f"{n / 1e6:g}M"


def rq1_stages(seconds: float, finetune: bool = False, share: bool = False,
               lr_variants: bool = False, long: bool = False) -> list:
  per_second = LONG_TOKENS_PER_SECOND if long else TOKENS_PER_SECOND
  pretrain = {**RECIPE, **_timed(seconds), "data.synthetic_version": 4, "data.vocab_size": 4096,
              "data.max_train_tokens": int(per_second * seconds)}
  if share or long:
    pretrain["train.warmup_fraction"] = WARMUP_SHARE
  finetune_args = {}
  if finetune:
    finetune_args = dict(
        finetune_config="configs/glue.py:synthetic", compress_config="configs/compress.py:paper",
        finetune_overrides={"data.max_train_examples": 20_000, "data.max_eval_examples": 5_000,
                            "eval.every_steps": 500,
                            "train.log_every": 100, "checkpoint.every_steps": 100_000_000})
  stages = []
  part = "rq1long" if long else "rq1share" if share else "rq1"
  for size in LONG_SIZES if long else MLM_SIZES:
    if finetune and size not in FINETUNE_SIZES:
      continue
    sized = seeded(size_stages, size, SEEDS, label=f"{part}/{size}",
                   mlm_overrides=pretrain, **finetune_args)
    stages += _with_lr_variants(sized) if lr_variants else sized
  return stages


def _with_lr_variants(stages: list) -> list:
  """size_stages' pretrain, finetune, compress per seed -> the pretraining; the finetune at
  FINETUNE_LR and its compression (named -lr1e-4); the preset's finetune, uncompressed; a
  finetune from scratch (the no-pretraining baseline at the preset's rate)."""
  suffix = "-lr" + f"{FINETUNE_LR:.0e}".replace("e-0", "e-")  # -lr1e-4
  out = []
  for pretrain, finetune, compress in zip(stages[::3], stages[1::3], stages[2::3]):
    out += [pretrain,
            dataclasses.replace(
                _renamed(finetune, "/finetune", f"/finetune{suffix}"),
                overrides={**finetune.overrides, "train.learning_rate": FINETUNE_LR}),
            dataclasses.replace(_renamed(compress, "/finetune", f"/finetune{suffix}"),
                                name=compress.name + suffix),
            finetune,
            dataclasses.replace(_renamed(finetune, "/finetune", "/finetune-scratch"),
                                overrides={**finetune.overrides, "init.from_scratch": True})]
  return out


def rq4_stages(seconds: float, sst2: bool = False) -> list:
  data = _data()
  pretrain = {**RECIPE, **_timed(seconds), "data.source": "text",
              "data.train_files": f"{data}/wikitext2/valid.txt,{data}/multi30k/train.en",
              "data.eval_files": f"{data}/wikitext2/test.txt"}
  stages = []
  for size in MLM_SIZES:
    for tokens in TEXT_TOKENS:
      label = f"rq4/{size}/tokens-{_tokens(tokens)}"
      if not sst2:
        stages += size_stages(size, {**pretrain, "data.max_train_tokens": tokens}, label=label)
      elif tokens == 0 and size in FINETUNE_SIZES:
        # Two finetuning seeds from the one all-data pretraining run.
        base = size_stages(size, {**pretrain, "data.max_train_tokens": tokens}, label=label)
        stages += base
        for seed in SEEDS:
          tail = size_stages(size, {**pretrain, "data.max_train_tokens": tokens},
                             "configs/glue.py:sst2",
                             # Padded rows: on a GPU, 8 length buckets ran a 6 x 512 SST-2
                             # finetune at 0.70x and compiled 162 s longer (one H100,
                             # 2026-12-05, docs/BENCHMARKS.md); steps of 2,048 positions are
                             # bound by launches, not positions, at these sizes.
                             {"data.train_files": f"{data}/sst2/train.tsv", "train.seed": seed,
                              "data.length_buckets": 0,
                              "train.log_every": 500, "eval.every_steps": 500,
                              "checkpoint.every_steps": 100_000_000},
                             "configs/compress.py:paper", label=label)[1:]
          stages += [_renamed(st, f"{label}/", f"{label}/sst2-seed{seed}/") for st in tail]
  return stages


def _renamed(stage, old: str, new: str):
  # The finetuning seeds share one pretraining stage (init keeps its name); each compresses its own.
  target = stage.target.replace(old, new, 1) if stage.target else None
  return dataclasses.replace(stage, name=stage.name.replace(old, new, 1), target=target)


def translate_study(seconds: float, compress: bool = False) -> list:
  data = _data()
  common = {"data.train_prefix": f"{data}/multi30k/train",
            "data.eval_prefix": f"{data}/multi30k/test_2016_flickr",
            "data.test_prefix": f"{data}/multi30k/test_2016_flickr",
            "model.pre_ln": True, "train.max_steps": 100_000_000,
            "train.max_train_seconds": seconds, "eval.every_steps": 0,
            "eval.every_seconds": seconds / 4,
            "eval.bleu_pairs": 500}
  stages = []
  for label, shape in TRANSLATE_SHAPES.items():
    if compress and label == "e12-d12-w512":  # the deep translator is not compressed
      continue
    for seed in SEEDS:
      stages += translate_stages(
          "multi30k", {**common, **shape, "train.seed": seed},
          "configs/compress.py:paper" if compress else None,
          {"max_eval_examples": 500}, label=f"translate/{label}/seed{seed}")
  return stages


def get_sweep(variant: str | None) -> Sweep:
  m = re.fullmatch(r"(?P<part>[a-z0-9-]+?)(?:-(?P<budget>\d+(?:\.\d+)?[smh]?))?", variant or "rq1")
  if not m or m["part"] not in PARTS:
    raise UserError(f"h200_study needs a part: one of {', '.join(PARTS)}, optionally with the "
                    f"training budget in seconds of its runs, e.g. rq1-90; got {variant!r}.")
  part = m["part"]
  # finetune/finetuneshare/finetunelr/sst2/translate-compress start from rq1/rq1share/rq4/translate:
  # the same budget names the same stages, which the root then already holds.
  source = {"finetune": "rq1", "finetuneshare": "rq1share", "finetunelr": "rq1share",
            "sst2": "rq4", "translate-compress": "translate"}.get(part, part)
  seconds = parse_seconds(m["budget"], "budget") if m["budget"] else DEFAULT_SECONDS[source]
  if source in ("rq1", "rq1share", "rq1long"):
    stages = rq1_stages(seconds, finetune=part != source, share=source == "rq1share",
                        lr_variants=part == "finetunelr", long=source == "rq1long")
  elif source == "rq4":
    stages = rq4_stages(seconds, sst2=part == "sst2")
  else:
    stages = translate_study(seconds, compress=part == "translate-compress")
  return Sweep(f"h200_study:{variant}", f"issue 20's study on one GPU, part {part} "
               f"({seconds:g} training seconds a run)", stages)
