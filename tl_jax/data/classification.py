"""Labelled sentences and sentence pairs for finetuning, and their model inputs.

A classification source yields `Example`s (text, optional second text, label index) for
"train" and for each of its eval splits, from the synthetic language, local TSV files
(GLUE style, with a header row) or TFDS; it names itself by a JSON fingerprint and can
check itself before anything is tokenized or compiled. `encode` turns examples into
fixed-length rows: `<s> A </s>` for single sentences, `<s> A </s></s> B </s>` for pairs
(RoBERTa), or `[CLS] A [SEP] B [SEP]` with token types 0/1 (BERT), the specials being the
tokenizer's own ids. `EncodedExamples` gives the TrainLoader random access to the rows;
`BucketedLoader` batches rows of similar length, each batch cut to one of a few bucket lengths
(`bucket_lengths`) so that little of what the model computes is padding.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import functools
import itertools
import logging
import os
import typing
from typing import Sequence

import numpy as np

from tl_jax.data import sources, tfds_builders
from tl_jax.data.loader import TrainLoader
from tl_jax.data.sources import SYNTHETIC_VERSION
from tl_jax.errors import UserError

if typing.TYPE_CHECKING:
  from tl_jax.config import ClassifyDataConfig

# Bump when the rule turning TSV rows into examples (or the dev carve) changes.
TSV_VERSION = 1
# Bump when the rule turning TFDS records into examples changes.
TFDS_VERSION = 1
# Examples tokenized per tokenizer.encode call.
ENCODE_BATCH = 1024
TRUNCATIONS = ("longest_first", "only_first", "only_second")
DEFAULT_LABELS = ("0", "1")

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Example:
  """One labelled sentence (`pair` is None) or sentence pair; `label` indexes label_names."""
  text: str
  pair: str | None
  label: int


@typing.runtime_checkable
class ClassificationSource(typing.Protocol):
  """What finetuning needs from a source of labelled examples."""

  label_names: tuple[str, ...]  # label i of an Example is label_names[i]
  eval_splits: tuple[str, ...]  # the first picks the best checkpoint

  def check(self) -> None:
    """Validation before training; raises UserError naming cause and fix."""
    ...

  def fingerprint(self) -> dict:
    """JSON-serialisable identity that changes whenever the examples would change."""
    ...

  def examples(self, split: str) -> list[Example]:
    """The examples of "train" or of one of `eval_splits`, capped by the max_*_examples."""
    ...


def _check_split(split: str, eval_splits: tuple[str, ...]) -> None:
  # A wrong split name is a bug in the caller, not something the user can fix.
  if split != "train" and split not in eval_splits:
    raise ValueError(f"split must be 'train' or one of {eval_splits}, got {split!r}")


def _cap(items: list, limit: int) -> list:
  return items[:limit] if limit > 0 else items


def parse_labels(labels: str) -> tuple[str, ...]:
  """data.labels as a tuple of label values; '' gives ("0", "1")."""
  if not labels.strip():
    return DEFAULT_LABELS
  values = tuple(v.strip() for v in labels.split(","))
  if any(not v for v in values):
    raise UserError(f"data.labels={labels!r} has an empty entry; write the label values "
                    "comma-separated, e.g. entailment,neutral,contradiction.")
  if len(set(values)) != len(values):
    raise UserError(f"data.labels={labels!r} names a label twice; list each label value once.")
  if len(values) < 2:
    raise UserError(f"data.labels={labels!r} names fewer than two labels; list every label "
                    "value of the data, comma-separated.")
  return values


def _check_max(max_train: int, max_eval: int) -> None:
  for field, value in (("data.max_train_examples", max_train),
                       ("data.max_eval_examples", max_eval)):
    if value < 0:
      raise UserError(f"{field}={value} is negative; set it to 0 (all) or a positive count.")


# ---------------------------------------------------------------------------
# Synthetic language: sentiment or agreement of its sentences.

SYNTHETIC_TASKS = {  # task -> label names (index = label)
    "sentiment": ("negative", "positive"),
    "agreement": ("ungrammatical", "grammatical"),
}


class SyntheticClassificationSource:
  """A classification task on synthetic sentences (tl_jax/data/synthetic.py): `sentiment`
  (1 = positive, polarity under negation scope) or `agreement` (1 = the main verb agrees
  with its subject across a PP or relative clause)."""

  eval_splits = ("eval",)

  def __init__(self, seed: int = 0, num_words: int = 3000, max_train: int = 0,
               max_eval: int = 0, task: str = "sentiment"):
    if task not in SYNTHETIC_TASKS:
      raise UserError(f"data.synthetic_task={task!r} is not one of {', '.join(SYNTHETIC_TASKS)}.")
    self.task = task
    self.label_names = SYNTHETIC_TASKS[task]
    self.seed = seed
    self.num_words = num_words
    self.max_train = max_train
    self.max_eval = max_eval

  def _language(self):
    # Imported here so that TSV and TFDS runs never load the generator.
    from tl_jax.data.synthetic import SyntheticLanguage
    return SyntheticLanguage(seed=self.seed, num_words=self.num_words)

  def check(self) -> None:
    if self.num_words <= 0:
      raise UserError(f"data.synthetic_words={self.num_words} must be positive.")
    for field, value in (("data.max_train_examples", self.max_train),
                         ("data.max_eval_examples", self.max_eval)):
      if value <= 0:
        raise UserError(f"{field}={value} must be positive for data.source=synthetic, whose "
                        "examples never run out; set it, e.g. to 20000.")

  def examples(self, split: str) -> list[Example]:
    _check_split(split, self.eval_splits)
    self.check()
    limit = self.max_train if split == "train" else self.max_eval
    language = self._language()
    stream = (language.sentiment_examples if self.task == "sentiment"
              else language.agreement_examples)(split, start=0)
    return [Example(text, None, int(label)) for text, label in itertools.islice(stream, limit)]

  def fingerprint(self) -> dict:
    return {"kind": "synthetic", "task": self.task, "version": SYNTHETIC_VERSION,
            "seed": self.seed, "num_words": self.num_words, "max_train": self.max_train,
            "max_eval": self.max_eval}


# ---------------------------------------------------------------------------
# TSV files with a header row (GLUE style).


def _utf8_error_offset(path: str) -> int | None:
  """Offset of the first byte of `path` that is not UTF-8, read in chunks; None if all are."""
  decoder = codecs.getincrementaldecoder("utf-8")("strict")
  position = 0
  with open(path, "rb") as f:
    while True:
      chunk = f.read(sources.CHUNK_BYTES)
      # Bytes of a character cut by the previous chunk boundary wait in the decoder.
      pending = len(decoder.getstate()[0])
      try:
        decoder.decode(chunk, final=not chunk)
      except UnicodeDecodeError as e:
        return position - pending + e.start
      position += len(chunk)
      if not chunk:
        return None


class TsvSource:
  """UTF-8 TSV files whose header row names the text, pair and label columns.

  Quoting is off: GLUE TSVs hold bare quote characters. Blank lines are skipped; texts and
  labels are stripped. Without eval files, a seeded random `dev_fraction` of the training
  rows is the "dev" split and the rest is "train" (disjoint, the same every run); caps take
  the first rows of a split in file order.
  """

  eval_splits = ("dev",)

  def __init__(self, train_files: str, eval_files: str = "", text_field: str = "sentence",
               pair_field: str = "", label_field: str = "label", labels: str = "",
               dev_fraction: float = 0.05, dev_seed: int = 0, max_train: int = 0,
               max_eval: int = 0):
    self.patterns = {"train": train_files, "eval": eval_files}
    self.text_field = text_field.strip()
    self.pair_field = pair_field.strip()
    self.label_field = label_field.strip()
    self.labels = labels
    self.dev_fraction = dev_fraction
    self.dev_seed = dev_seed
    self.max_train = max_train
    self.max_eval = max_eval
    self._parsed: dict[str, list[Example]] | None = None

  @property
  def label_names(self) -> tuple[str, ...]:
    return parse_labels(self.labels)

  @property
  def carves_dev(self) -> bool:
    """Whether "dev" is carved off the training rows (no data.eval_files)."""
    return not self.patterns["eval"].strip()

  def files(self, split: str) -> list[str]:
    """The files of "train" or "eval" (data.train_files / data.eval_files)."""
    return sources.expand_files(self.patterns[split], split)

  def _check_settings(self) -> None:
    parse_labels(self.labels)
    _check_max(self.max_train, self.max_eval)
    for field, value in (("data.text_field", self.text_field),
                         ("data.label_field", self.label_field)):
      if not value:
        raise UserError(f"{field} is empty; set it to the name of a column in the TSV header.")
    if self.carves_dev and not 0.0 < self.dev_fraction < 1.0:
      raise UserError(f"data.dev_fraction={self.dev_fraction} is not between 0 and 1; set it "
                      "(e.g. 0.05) or name dev files in data.eval_files.")

  def _read(self, path: str, split: str) -> list[Example]:
    """The examples of one file, in order; UserError naming file (and line) on bad input."""
    field = f"data.{split}_files"
    label_index = {value: i for i, value in enumerate(self.label_names)}
    out: list[Example] = []
    try:
      # utf-8-sig drops a byte-order mark; newline="" as the csv module wants.
      with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
          header = next(reader, None)  # leading blank lines
        if header is None:
          raise UserError(f"data file {path} is empty; give it a header row naming the columns "
                          f"(e.g. label<TAB>sentence) and one example a line, or remove it from "
                          f"{field}.")
        names = [h.strip() for h in header]
        wanted = [("data.text_field", self.text_field)]
        if self.pair_field:
          wanted.append(("data.pair_field", self.pair_field))
        wanted.append(("data.label_field", self.label_field))
        columns = {}
        for config_field, name in wanted:
          if name not in names:
            present = ", ".join(repr(n) for n in names)
            raise UserError(f"data file {path} has no column {name!r} in its header (columns: "
                            f"{present}); set {config_field} to one of those or fix the header.")
          columns[config_field] = names.index(name)
        need = max(columns.values()) + 1
        for row in reader:
          if not any(value.strip() for value in row):
            continue  # blank line
          line = reader.line_num
          if len(row) < need:
            raise UserError(f"data file {path}:{line} has {len(row)} tab-separated field(s), "
                            f"fewer than the {need} its header gives up to the columns read; fix "
                            "that row, whose fields must be separated by tabs.")
          text = row[columns["data.text_field"]].strip()
          pair = row[columns["data.pair_field"]].strip() if self.pair_field else None
          for name, value in ((self.text_field, text), (self.pair_field, pair)):
            if value is not None and not value:
              raise UserError(f"data file {path}:{line} has an empty {name!r} text; remove or "
                              "fix that row.")
          value = row[columns["data.label_field"]].strip()
          if value not in label_index:
            allowed = ", ".join(self.label_names)
            raise UserError(f"data file {path}:{line} has label {value!r}, which is not one of "
                            f"data.labels ({allowed}); set data.labels to the label values the "
                            "data uses, comma-separated, or fix that row.")
          out.append(Example(text, pair, label_index[value]))
    except UnicodeDecodeError:
      offset = _utf8_error_offset(path)
      raise UserError(f"data file {path} is not valid UTF-8 (byte {offset}); convert it with "
                      f"iconv or remove it from {field}.") from None
    except csv.Error as e:
      raise UserError(f"data file {path}:{reader.line_num} cannot be read as TSV ({e}); fix that "
                      f"row or remove the file from {field}.") from None
    if not out:
      raise UserError(f"data file {path} has a header but no examples; add rows or remove it "
                      f"from {field}.")
    return out

  def _parse(self) -> dict[str, list[Example]]:
    """All rows of "train" and "dev", before the caps; read once."""
    if self._parsed is not None:
      return self._parsed
    self._check_settings()
    rows = [e for path in self.files("train") for e in self._read(path, "train")]
    if self.carves_dev:
      n = len(rows)
      n_dev = int(round(n * self.dev_fraction))
      if not 0 < n_dev < n:
        raise UserError(f"data.dev_fraction={self.dev_fraction} of the {n} training rows leaves "
                        "the dev or the train split empty; change data.dev_fraction, add rows, or "
                        "name dev files in data.eval_files.")
      is_dev = np.zeros(n, bool)
      is_dev[np.random.default_rng(self.dev_seed).permutation(n)[:n_dev]] = True
      parsed = {"train": [e for e, d in zip(rows, is_dev) if not d],
                "dev": [e for e, d in zip(rows, is_dev) if d]}
    else:
      dev = [e for path in self.files("eval") for e in self._read(path, "eval")]
      parsed = {"train": rows, "dev": dev}
    self._parsed = parsed
    return parsed

  def check(self) -> None:
    """Reads every file once (kept for examples()): any bad row fails here."""
    self._parse()

  def examples(self, split: str) -> list[Example]:
    _check_split(split, self.eval_splits)
    rows = self._parse()[split]
    return list(_cap(rows, self.max_train if split == "train" else self.max_eval))

  def fingerprint(self) -> dict:
    out = {"kind": "tsv", "task": "classification", "version": TSV_VERSION,
           "fields": [self.text_field, self.pair_field, self.label_field],
           "labels": list(self.label_names), "max_train": self.max_train,
           "max_eval": self.max_eval}
    for split in ("train", "eval"):
      if split == "eval" and self.carves_dev:
        out["eval"] = None
        out["dev_carve"] = {"fraction": self.dev_fraction, "seed": self.dev_seed}
        continue
      out[split] = sources.file_entries(self.files(split))
    return out


# ---------------------------------------------------------------------------
# TensorFlow Datasets (e.g. glue/sst2, glue/mnli), read through array_record random access
# (no TensorFlow).


class TfdsClassificationSource:
  """A prepared TFDS classification dataset (array_record or parquet format).

  Label names come from the label feature's class names unless data.labels lists them;
  records with label -1 (GLUE test splits) are refused; examples with an empty text are
  skipped with a warning, since a prepared dataset cannot be edited. Caps take the first
  records of a split (TFDS shuffles records when it prepares a dataset).
  """

  def __init__(self, name: str, data_dir: str = "", train_split: str = "train",
               eval_splits: str | Sequence[str] = "validation", text_field: str = "sentence",
               pair_field: str = "", label_field: str = "label", labels: str = "",
               max_train: int = 0, max_eval: int = 0):
    self.name = name.strip()
    self.data_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else ""
    self.train_split = train_split.strip()
    if isinstance(eval_splits, str):
      eval_splits = eval_splits.split(",")
    self.eval_splits = tuple(s.strip() for s in eval_splits if s.strip())
    self.text_field = text_field.strip()
    self.pair_field = pair_field.strip()
    self.label_field = label_field.strip()
    self.labels = labels
    self.max_train = max_train
    self.max_eval = max_eval
    self._builder_cache = None

  def _builder(self):
    if self._builder_cache is None:
      self._builder_cache = tfds_builders.open_builder(self.name, self.data_dir, family="text",
                                                       example="glue/sst2")
    return self._builder_cache

  def _tfds_split(self, split: str) -> str:
    _check_split(split, self.eval_splits)
    return self.train_split if split == "train" else split

  def _split_info(self, builder, split: str, field: str):
    known = ", ".join(sorted(builder.info.splits.keys()))
    try:
      return builder.info.splits[split]
    except (KeyError, ValueError):
      raise UserError(f"TFDS dataset {self.name!r} in {tfds_builders.where(self.data_dir)} has no split {split!r}; "
                      f"set {field} to one of: {known}.") from None

  def _label_map(self, builder) -> tuple[tuple[str, ...], dict[str, int]]:
    """(label names, {label value as a string: label index}) of the records."""
    feature = builder.info.features[self.label_field]
    class_names = tuple(getattr(feature, "names", None) or ())
    if not self.labels.strip():
      if class_names:
        return class_names, {str(i): i for i in range(len(class_names))}
      return DEFAULT_LABELS, {v: i for i, v in enumerate(DEFAULT_LABELS)}
    names = parse_labels(self.labels)
    mapping = {}
    for i, value in enumerate(names):
      # A class name of a ClassLabel feature stands for its integer.
      mapping[str(class_names.index(value)) if value in class_names else value] = i
    return names, mapping

  def _check_settings(self) -> None:
    _check_max(self.max_train, self.max_eval)
    if not self.train_split:
      raise UserError("data.tfds_train_split is empty; set it to a split of the dataset, e.g. "
                      "train.")
    if not self.eval_splits:
      raise UserError("data.tfds_eval_splits is empty; set it to one or more comma-separated "
                      "splits, e.g. validation.")
    if "train" in self.eval_splits and self.train_split != "train":
      raise UserError("data.tfds_eval_splits names 'train', which is the name finetuning uses for "
                      "data.tfds_train_split; evaluate on a slice such as train[:5%] instead.")
    for field, value in (("data.text_field", self.text_field),
                         ("data.label_field", self.label_field)):
      if not value:
        raise UserError(f"{field} is empty; set it to a feature of TFDS dataset {self.name!r}.")

  @property
  def label_names(self) -> tuple[str, ...]:
    return self._label_map(self._builder())[0]

  def check(self) -> None:
    self._check_settings()
    builder = self._builder()
    self._split_info(builder, self.train_split, "data.tfds_train_split")
    for split in self.eval_splits:
      self._split_info(builder, split, "data.tfds_eval_splits")
    keys = list(builder.info.features.keys())
    wanted = [("data.text_field", self.text_field), ("data.label_field", self.label_field)]
    if self.pair_field:
      wanted.append(("data.pair_field", self.pair_field))
    for field, name in wanted:
      if name not in keys:
        raise UserError(f"TFDS dataset {self.name!r} has no feature {name!r}; set {field} to one "
                        f"of: {', '.join(keys)}.")
    tfds_builders.require_random_access(builder, self.name, self.data_dir)
    label_names, _ = self._label_map(builder)
    if len(label_names) < 2:
      raise UserError(f"feature {self.label_field!r} of TFDS dataset {self.name!r} has fewer than "
                      "two classes; set data.label_field to the label feature.")
    # GLUE test splits hold label -1 throughout: the first record tells.
    for split in ("train",) + self.eval_splits:
      records = self._records(split)
      if len(records):
        self._label(records[0], split, 0, self._label_map(builder)[1])

  def _records(self, split: str):
    tfds = tfds_builders.import_tfds()
    return tfds.data_source(self.name, split=self._tfds_split(split),
                            data_dir=self.data_dir or None, download=False)

  def _text(self, value, field: str) -> str:
    if isinstance(value, bytes):
      try:
        return value.decode("utf-8").strip()
      except UnicodeDecodeError as e:
        raise UserError(f"feature {field!r} of TFDS dataset {self.name!r} holds text that is not "
                        f"UTF-8 (byte {e.start}); rebuild the dataset or pick another "
                        "feature.") from None
    if isinstance(value, str):
      return value.strip()
    raise UserError(f"feature {field!r} of TFDS dataset {self.name!r} is not text "
                    f"({type(value).__name__}); set data.text_field / data.pair_field to text "
                    "features.")

  def _label(self, record, split: str, index: int, mapping: dict[str, int]) -> int:
    value = record[self.label_field]
    if isinstance(value, bytes):
      value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
      value = value.item()
    key = str(value).strip()
    if key not in mapping:
      if key == "-1":
        raise UserError(f"split {self._tfds_split(split)!r} of TFDS dataset {self.name!r} has "
                        "unlabelled examples (label -1, as GLUE test splits have); set "
                        "data.tfds_train_split / data.tfds_eval_splits to labelled splits such "
                        "as train and validation.")
      allowed = ", ".join(sorted(mapping))
      raise UserError(f"record {index} of split {self._tfds_split(split)!r} of TFDS dataset "
                      f"{self.name!r} has label {key!r}, which is not one of {allowed}; set "
                      "data.labels to the label values the data uses, comma-separated.")
    return mapping[key]

  def examples(self, split: str) -> list[Example]:
    tfds_split = self._tfds_split(split)
    self.check()
    _, mapping = self._label_map(self._builder())
    records = self._records(split)
    limit = self.max_train if split == "train" else self.max_eval
    total = len(records)
    out: list[Example] = []
    skipped = 0
    batch_size = sources.TFDS_BATCH
    for start in range(0, total, batch_size):
      indices = list(range(start, min(start + batch_size, total)))
      if hasattr(records, "__getitems__"):
        batch = records.__getitems__(indices)
      else:
        batch = [records[i] for i in indices]
      for index, record in zip(indices, batch):
        text = self._text(record[self.text_field], self.text_field)
        pair = self._text(record[self.pair_field], self.pair_field) if self.pair_field else None
        label = self._label(record, split, index, mapping)
        if not text or pair == "":
          skipped += 1
          continue
        out.append(Example(text, pair, label))
        if limit and len(out) == limit:
          break
      if limit and len(out) == limit:
        break
    if skipped:
      _log.warning("skipped %d examples of TFDS %s split %r with an empty text", skipped,
                   self.name, tfds_split)
    return out

  def fingerprint(self) -> dict:
    builder = self._builder()
    counts = {self.train_split: self._split_info(
        builder, self.train_split, "data.tfds_train_split").num_examples}
    for split in self.eval_splits:
      counts[split] = self._split_info(builder, split, "data.tfds_eval_splits").num_examples
    return {"kind": "tfds", "task": "classification", "version": TFDS_VERSION, "name": self.name,
            "data_dir": self.data_dir, "dataset_dir": str(builder.data_dir),
            "dataset_version": str(builder.info.version), "train_split": self.train_split,
            "eval_splits": list(self.eval_splits), "num_examples": counts,
            "fields": [self.text_field, self.pair_field, self.label_field],
            "labels": list(self.label_names), "max_train": self.max_train,
            "max_eval": self.max_eval}


# ---------------------------------------------------------------------------


def make_classification_source(data: ClassifyDataConfig) -> ClassificationSource:
  """The source that `data.source` names, built from the ClassifyDataConfig fields."""
  if data.source == "synthetic":
    return SyntheticClassificationSource(seed=data.synthetic_seed, num_words=data.synthetic_words,
                                         max_train=data.max_train_examples,
                                         max_eval=data.max_eval_examples, task=data.synthetic_task)
  if data.source == "tsv":
    return TsvSource(train_files=data.train_files, eval_files=data.eval_files,
                     text_field=data.text_field, pair_field=data.pair_field,
                     label_field=data.label_field, labels=data.labels,
                     dev_fraction=data.dev_fraction, dev_seed=data.dev_seed,
                     max_train=data.max_train_examples, max_eval=data.max_eval_examples)
  if data.source == "tfds":
    return TfdsClassificationSource(name=data.tfds_name, data_dir=data.tfds_data_dir,
                                    train_split=data.tfds_train_split,
                                    eval_splits=data.tfds_eval_splits,
                                    text_field=data.text_field, pair_field=data.pair_field,
                                    label_field=data.label_field, labels=data.labels,
                                    max_train=data.max_train_examples,
                                    max_eval=data.max_eval_examples)
  raise UserError(f"config field data.source={data.source!r} is not one of synthetic, tsv, tfds.")


# ---------------------------------------------------------------------------
# Model inputs.


def _check_truncation(truncation: str) -> None:
  if truncation not in TRUNCATIONS:
    raise UserError(f"data.truncation={truncation!r} is not one of {', '.join(TRUNCATIONS)}.")


def fit_lengths(la: int, lb: int | None, budget: int, truncation: str, index: int) -> tuple[int, int]:
  """Lengths (first, second) that fit `budget` text tokens under the truncation policy."""
  if lb is None:
    if la <= budget:
      return la, 0
    if truncation == "only_second":
      raise UserError(f"example {index} is a single sentence of {la} tokens, more than the "
                      f"{budget} that fit, and data.truncation=only_second cannot shorten it; "
                      "raise data.seq_len or set data.truncation=longest_first.")
    return budget, 0
  excess = la + lb - budget
  if excess <= 0:
    return la, lb
  if truncation == "longest_first":
    # Hugging Face `tokenizers`' rule (its truncation.rs): the longer is cut to what the shorter
    # leaves; if both must be cut, each gets half the budget and the longer the odd token (the
    # second on ties). Checked against `tokenizers` in tests/test_classification_data.py.
    short, long = min(la, lb), max(la, lb)
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
      short, long = budget // 2, budget // 2 + budget % 2
    return (long, short) if la > lb else (short, long)
  if truncation == "only_first":
    if la - excess >= 1:
      return la - excess, lb
    which, length = "second", lb
  else:
    if lb - excess >= 1:
      return la, lb - excess
    which, length = "first", la
  raise UserError(f"example {index}'s {which} sentence alone has {length} tokens, leaving no room "
                  f"for the other under data.truncation={truncation}; raise data.seq_len or set "
                  "data.truncation=longest_first.")


def encode(examples: Sequence[Example], tokenizer, seq_len: int,
           truncation: str = "longest_first",
           token_types: bool = False) -> tuple[dict[str, np.ndarray], int]:
  """Model inputs of `examples`: ({"tokens", "types", "label"}, how many were truncated).

  tokens [N, seq_len] int32 are right-padded with tokenizer.pad_id; types [N, seq_len] int32
  are 0 for the first sentence and its specials, 1 for the second, 0 on padding (all 0 when
  `token_types` is False); label [N] int32. Layouts: `bos A eos` for single sentences;
  pairs `bos A eos eos B eos` (RoBERTa) or, with `token_types`, `bos A eos B eos` (BERT).
  """
  _check_truncation(truncation)
  n = len(examples)
  has_pair = any(e.pair is not None for e in examples)
  pair_specials = 3 if token_types else 4
  # At least one token of each sentence beside the specials.
  specials, what = (pair_specials, "a sentence pair") if has_pair else (2, "a sentence")
  if seq_len < specials + (2 if has_pair else 1):
    raise UserError(f"data.seq_len={seq_len} leaves no room for {what} beside its {specials} "
                    "special tokens; raise data.seq_len.")
  tokens = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  types = np.zeros((n, seq_len), np.int32)
  labels = np.zeros((n,), np.int32)
  truncated = 0
  bos, eos = [tokenizer.bos_id], [tokenizer.eos_id]
  for start in range(0, n, ENCODE_BATCH):
    batch = examples[start:start + ENCODE_BATCH]
    firsts = tokenizer.encode([e.text for e in batch])
    pair_texts = [e.pair for e in batch if e.pair is not None]
    seconds = iter(tokenizer.encode(pair_texts) if pair_texts else [])
    for row, (example, a) in enumerate(zip(batch, firsts), start=start):
      b = next(seconds) if example.pair is not None else None
      specials = 2 if b is None else pair_specials
      la, lb = fit_lengths(len(a), None if b is None else len(b), seq_len - specials, truncation, row)
      if (la, lb) != (len(a), 0 if b is None else len(b)):
        truncated += 1
      first = bos + list(a[:la]) + eos
      if b is None:
        ids, second = first, []
      elif token_types:
        second = list(b[:lb]) + eos
        ids = first + second
      else:
        second = []  # RoBERTa: no token types, `</s></s>` between the sentences
        ids = first + eos + list(b[:lb]) + eos
      tokens[row, :len(ids)] = ids
      if second:
        types[row, len(first):len(first) + len(second)] = 1
      labels[row] = example.label
  return {"tokens": tokens, "types": types, "label": labels}, truncated


class EncodedExamples:
  """Random access to encoded rows, in the interface the TrainLoader expects."""

  def __init__(self, arrays: dict[str, np.ndarray], seq_len: int | None = None):
    if seq_len is not None and arrays["tokens"].shape[1] != seq_len:
      raise ValueError(f"rows are {arrays['tokens'].shape[1]} tokens long, not {seq_len}")
    self.arrays = arrays
    self.seq_len = arrays["tokens"].shape[1]
    self.num_sequences = arrays["tokens"].shape[0]

  def __len__(self) -> int:
    return self.num_sequences

  def get(self, indices) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    return {k: v[indices] for k, v in self.arrays.items()}


# ---------------------------------------------------------------------------
# Length buckets: batches of rows of similar length, cut to a few fixed lengths.


def row_lengths(tokens: np.ndarray, pad_id: int) -> np.ndarray:
  """Real (non-padding) positions of each right-padded row [N, S] -> [N]."""
  return np.sum(tokens != pad_id, axis=1)


# What the tasks round bucket lengths up to: cuDNN's flash attention trains under a padding mask
# only at even lengths (jax's check_is_flash_attention refused a bucket of 5 on an H200). Not 8:
# on SST-2 that leaves 80.5% of the computed positions real, against 86% at 2.
LENGTH_MULTIPLE = 2


def bucket_lengths(lengths, count: int, multiple: int = 1, limit: int | None = None
                   ) -> tuple[int, ...]:
  """At most `count` row lengths, ascending, that minimise the positions computed when each
  row is padded to the shortest of them that holds it; each a multiple of `multiple` (rows
  rounded up to one first) or `limit` (the width of the rows, which none may exceed).

  An exact dynamic program over the distinct lengths (O(count * distinct^2), vectorised).
  """
  lengths = -(-np.asarray(lengths, np.int64) // multiple) * multiple
  if limit is not None:
    lengths = np.minimum(lengths, limit)
  values, counts = np.unique(lengths, return_counts=True)
  n = len(values)
  # before[j]: rows of length <= values[j]. cost[j]: the least positions for the rows up to
  # values[j] with buckets ending at values[j]; one bucket to begin with.
  before = np.cumsum(counts)
  cost = values * before
  later = np.arange(n)[:, None] < np.arange(n)[None, :]
  previous = []  # per added bucket: the bucket before values[j], or -1 where adding none is best
  for _ in range(min(count, n) - 1):
    # total[i, j]: the best up to values[i], then one bucket at values[j] for the rows between.
    total = np.where(later, cost[:, None] + values[None, :] * (before[None, :] - before[:, None]),
                     np.iinfo(np.int64).max)
    best = total.min(axis=0)
    previous.append(np.where(best < cost, np.argmin(total, axis=0), -1))
    cost = np.minimum(cost, best)
  picked, j = [n - 1], n - 1
  for choice in reversed(previous):
    if choice[j] >= 0:
      j = int(choice[j])
      picked.append(j)
  return tuple(int(values[i]) for i in sorted(picked))


class BucketedLoader(TrainLoader):
  """Training batches of `global_batch` rows of similar length, each cut to a bucket length.

  Epoch e takes the rows in the order of a permutation seeded by (seed, e) and groups them by
  the shortest bucket that holds them; each group is cut into whole batches and its remainder
  (fewer than a batch) joins the next longer group, the longest group's remainder sitting this
  epoch out (another permutation leaves out others). An epoch is therefore exactly
  N // global_batch steps whatever the seed (the learning-rate schedule counts steps), and its
  batches are shuffled by the same generator so that lengths mix over the epoch. Batch `step`
  is a pure function of (seed, step, rows, buckets): resuming needs only the step.
  """

  def __init__(self, examples: EncodedExamples, lengths: np.ndarray, buckets: Sequence[int],
               global_batch: int, seed: int, process_index: int = 0, process_count: int = 1):
    super().__init__(examples, global_batch, seed, process_index, process_count)
    self.buckets = tuple(int(b) for b in buckets)
    self.lengths = np.asarray(lengths)
    if np.max(lengths) > self.buckets[-1]:
      raise ValueError(f"a row of {np.max(lengths)} tokens is longer than every bucket {self.buckets}")
    self.bucket_of = np.searchsorted(self.buckets, lengths)
    self.steps_per_epoch = len(examples) // global_batch

  @functools.lru_cache(maxsize=2)
  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [steps_per_epoch, global_batch], bucket length [steps_per_epoch]) of an epoch."""
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(len(self.bucket_of))
    rows, lengths, carried = [], [], order[:0]
    for b, length in enumerate(self.buckets):
      group = np.concatenate([carried, order[self.bucket_of[order] == b]])
      whole = len(group) // self.global_batch * self.global_batch
      rows.append(group[:whole].reshape(-1, self.global_batch))
      lengths += [length] * (whole // self.global_batch)
      carried = group[whole:]
    shuffle = rng.permutation(self.steps_per_epoch)
    return np.concatenate(rows)[shuffle], np.asarray(lengths)[shuffle]

  def positions(self, epoch: int = 0) -> tuple[int, int]:
    """(real, computed) positions of an epoch's batches, all hosts together."""
    rows, lengths = self._plan(epoch)
    return int(self.lengths[rows].sum()), int(lengths.sum()) * self.global_batch

  def indices(self, step: int) -> np.ndarray:
    rows, _ = self._plan(step // self.steps_per_epoch)
    return rows[step % self.steps_per_epoch][self.rows]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's rows of global batch `step`, tokens and types cut to its bucket length."""
    _, lengths = self._plan(step // self.steps_per_epoch)
    length = lengths[step % self.steps_per_epoch]
    out = self.sequences.get(self.indices(step))
    return {k: v[:, :length] if v.ndim == 2 else v for k, v in out.items()}
