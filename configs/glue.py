"""Finetuning presets: `tl-jax finetune --config=configs/glue.py:PRESET --init=WORKDIR --workdir=DIR`.

The model (shape, tokenizer) comes from the --init workdir; these set the task and the recipe
(RoBERTa's: AdamW, 6% warmup, linear decay, a few epochs; the learning rate follows the width
unless train.learning_rate is set).

Presets:
  synthetic   sentiment of the synthetic language, with negation scope (labels need composition);
              pairs with encoders from configs/mlm.py:tiny (mean pooling: see `synthetic`); its
              rate of 1e-3 suits those; pass train.learning_rate=1e-4 for larger encoders
  sst2        GLUE SST-2 from ../shared/data/sst2/train.tsv, 5% carved off as the dev split
  sst2-tfds   GLUE SST-2 through tensorflow-datasets (glue/sst2, scored on validation)
  mnli        GLUE MNLI through tensorflow-datasets (validation_matched and _mismatched reported)
  mnli-tsv    GLUE MNLI from the original TSVs: data.train_files=.../train.tsv,
              data.eval_files=.../dev_matched.tsv
"""

from tl_jax.config import FinetuneConfig
from tl_jax.errors import UserError


def synthetic() -> FinetuneConfig:
  c = FinetuneConfig()
  c.data.source = "synthetic"
  c.data.max_train_examples = 4000
  c.data.max_eval_examples = 1000
  c.data.seq_len = 64
  # Two lengths, not eight: each is one more compiled train and eval step, and on a CPU these
  # minute-long runs (the demo, the sweep tests) spend more on compiling than padding costs.
  c.data.length_buckets = 2
  c.train.batch_size = 32
  c.train.epochs = 3
  # Tiny encoders pretrained for a minute never learn to summarise a sentence into <s> (masked
  # LM asks nothing of it), and finetuning them from it learned nothing in 375 steps on a 2-core
  # CPU; averaging the token states (and a larger step) lets the pretraining show.
  c.head.pooling = "mean"
  # For tiny CPU encoders only. Encoders pretrained longer overwrite at this rate, twice the
  # masked-LM peak: 3x256 and 6x512 pretrained 60 s on an H100 finetuned 4.3 and 9.2 points
  # better at train.learning_rate=1e-4 (docs/results/h200_study/README.md, part finetunelr).
  c.train.learning_rate = 1e-3
  c.train.log_every = 25
  c.eval.every_steps = 125
  c.checkpoint.every_steps = 250
  return c


def sst2() -> FinetuneConfig:
  c = FinetuneConfig()
  c.data.source = "tsv"
  c.data.train_files = "../shared/data/sst2/train.tsv"
  c.data.labels = "0,1"
  c.data.seq_len = 64  # SST-2 phrases are short; longer ones are truncated (and counted)
  c.train.batch_size = 32
  c.train.epochs = 3
  c.eval.every_steps = 1000
  c.checkpoint.every_steps = 2000
  return c


def sst2_tfds() -> FinetuneConfig:
  c = sst2()
  c.data.source = "tfds"
  c.data.train_files = ""
  c.data.tfds_name = "glue/sst2"
  c.data.labels = ""
  return c


def mnli() -> FinetuneConfig:
  c = FinetuneConfig()
  c.data.source = "tfds"
  c.data.tfds_name = "glue/mnli"
  c.data.tfds_eval_splits = "validation_matched,validation_mismatched"
  c.data.text_field = "premise"
  c.data.pair_field = "hypothesis"
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.train.epochs = 3
  c.eval.every_steps = 2000
  c.checkpoint.every_steps = 2000
  return c


def mnli_tsv() -> FinetuneConfig:
  c = mnli()
  c.data.source = "tsv"
  c.data.tfds_name = ""
  c.data.text_field = "sentence1"
  c.data.pair_field = "sentence2"
  c.data.label_field = "gold_label"
  c.data.labels = "entailment,neutral,contradiction"
  return c


PRESETS = {"synthetic": synthetic, "sst2": sst2, "sst2-tfds": sst2_tfds, "mnli": mnli,
           "mnli-tsv": mnli_tsv}


def get_config(preset: str) -> FinetuneConfig:
  if preset not in PRESETS:
    raise UserError(f"unknown finetuning preset {preset!r}; choose one of {', '.join(PRESETS)}.")
  return PRESETS[preset]()
