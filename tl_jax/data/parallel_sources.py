"""Where sentence pairs come from: the synthetic language, line-aligned text files, or TFDS.

A parallel source yields (source sentence, target sentence) pairs for the "train", "eval"
and "test" splits, names itself by a JSON fingerprint that the token caches use as a key,
and can check itself cheaply before anything is tokenized or compiled. The monolingual
counterparts live in tl_jax/data/sources.py; this module reuses its constants and its
TFDS import.
"""

from __future__ import annotations

import codecs
import itertools
import logging
import os
import re
import typing
from typing import Iterator, NamedTuple

from tl_jax.data import sources
from tl_jax.data import tfds_builders
from tl_jax.data.sources import SYNTHETIC_VERSION
from tl_jax.errors import UserError

if typing.TYPE_CHECKING:
  from tl_jax.config import TranslationDataConfig

SPLITS = ("train", "eval", "test")
# Splits every source must have: training reads "train" and scores BLEU on "eval".
REQUIRED_SPLITS = ("train", "eval")

# Bump when the rule turning aligned lines into pairs changes.
PARALLEL_TEXT_VERSION = 1

# A line holding nothing but whitespace; MULTILINE anchors ^ after every "\n".
_BLANK_LINE = re.compile(r"^[^\S\n]*\n", re.MULTILINE)

_log = logging.getLogger(__name__)


@typing.runtime_checkable
class ParallelSource(typing.Protocol):
  """What the translation tokenizer and token caches need from a source of sentence pairs."""

  def pairs(self, split: str) -> Iterator[tuple[str, str]]:
    """(source sentence, target sentence) pairs of `split` ("train", "eval" or "test")."""
    ...

  def fingerprint(self) -> dict:
    """JSON-serialisable identity that changes whenever the pairs would change."""
    ...

  def check(self) -> None:
    """Cheap validation before training; raises UserError naming cause and fix."""
    ...

  def has_split(self, split: str) -> bool:
    """Whether `split` is configured (e.g. False for "test" without a test prefix)."""
    ...


def _check_split(split: str) -> None:
  # A wrong split name is a bug in the caller, not something the user can fix.
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _check_langs(src_lang: str, tgt_lang: str) -> None:
  if not src_lang or not tgt_lang or src_lang == tgt_lang:
    raise UserError(f"data.src_lang={src_lang!r} and data.tgt_lang={tgt_lang!r} must be two "
                    "different language codes, e.g. en and fr.")


# ---------------------------------------------------------------------------
# Synthetic language.


class SyntheticParallelSource:
  """Unbounded pairs of the synthetic language and its transduction (tl_jax/data/synthetic.py)."""

  def __init__(self, seed: int = 0, num_words: int = 3000):
    self.seed = seed
    self.num_words = num_words

  def _language(self):
    # Imported here so that text and TFDS runs never load the generator.
    from tl_jax.data.synthetic import SyntheticLanguage
    return SyntheticLanguage(seed=self.seed, num_words=self.num_words)

  def pairs(self, split: str) -> Iterator[tuple[str, str]]:
    _check_split(split)
    return self._language().pairs(split)

  def fingerprint(self) -> dict:
    # "task" keeps pair caches apart from the monolingual caches of the same language.
    return {"kind": "synthetic", "task": "translation", "version": SYNTHETIC_VERSION,
            "seed": self.seed, "num_words": self.num_words}

  def check(self) -> None:
    if self.num_words <= 0:
      raise UserError(f"data.synthetic_words={self.num_words} must be positive.")

  def has_split(self, split: str) -> bool:
    _check_split(split)
    return True


# ---------------------------------------------------------------------------
# Line-aligned text files PREFIX.<src_lang> and PREFIX.<tgt_lang>.


class _Scan(NamedTuple):
  """What one streaming pass over a file found; it stops at the first problem."""
  size: int  # bytes read
  lines: int  # lines counted (up to the problem, if any)
  blank_line: int | None = None  # 1-based number of the first empty line
  bad_byte: int | None = None  # offset of the first byte that is not UTF-8


def _scan_lines(path: str) -> _Scan:
  """Counts the lines of `path` and finds its first empty line or invalid UTF-8, in chunks.

  Lines end at "\\n" only, as `open(..., newline="\\n")` reads them; a last line without
  a newline counts. A leading byte-order mark is not text.
  """
  decoder = codecs.getincrementaldecoder("utf-8")("strict")
  position = 0  # bytes handed to the decoder so far
  lines = 0  # complete lines before `carry`
  carry = ""  # the current, unfinished line
  at_start = True
  with open(path, "rb") as f:
    while True:
      # Read through the module so that tests can shrink the chunk in one place.
      chunk = f.read(sources.CHUNK_BYTES)
      # Bytes of a character cut by the previous chunk boundary wait in the decoder;
      # the error offset counts from the start of those.
      pending = len(decoder.getstate()[0])
      try:
        text = decoder.decode(chunk, final=not chunk)
      except UnicodeDecodeError as e:
        return _Scan(position, lines, bad_byte=position - pending + e.start)
      position += len(chunk)
      if at_start and text:
        text = text.removeprefix("\ufeff")
        at_start = False
      buffer = carry + text
      end = buffer.rfind("\n") + 1
      if end:
        complete, carry = buffer[:end], buffer[end:]
        blank = _BLANK_LINE.search(complete)
        if blank:
          before = complete.count("\n", 0, blank.start())
          return _Scan(position, lines, blank_line=lines + before + 1)
        lines += complete.count("\n")
      else:
        carry = buffer
      if not chunk:
        break
  if carry:
    lines += 1
    if not carry.strip():
      return _Scan(position, lines, blank_line=lines)
  return _Scan(position, lines)


class TextParallelSource:
  """Line-aligned UTF-8 files: line i of PREFIX.<src_lang> translates line i of PREFIX.<tgt_lang>.

  Both sides are stripped; an empty line on either side is an error, not a pair to skip,
  because it usually means the files slipped out of alignment.
  """

  def __init__(self, train_prefix: str, eval_prefix: str = "", test_prefix: str = "",
               src_lang: str = "en", tgt_lang: str = "fr"):
    self.prefixes = {"train": train_prefix, "eval": eval_prefix, "test": test_prefix}
    self.src_lang = src_lang
    self.tgt_lang = tgt_lang

  def has_split(self, split: str) -> bool:
    _check_split(split)
    return bool(self.prefixes[split].strip())

  def _paths(self, split: str) -> tuple[str, str]:
    """The (source, target) files of `split`; UserError if either is missing."""
    _check_split(split)
    _check_langs(self.src_lang, self.tgt_lang)
    field = f"data.{split}_prefix"
    prefix = os.path.expanduser(self.prefixes[split].strip())
    if not prefix:
      raise UserError(f"{field} is empty; set it to PREFIX of the line-aligned files "
                      f"PREFIX.{self.src_lang} and PREFIX.{self.tgt_lang}.")
    paths = (f"{prefix}.{self.src_lang}", f"{prefix}.{self.tgt_lang}")
    for path in paths:
      if os.path.isfile(path):
        continue
      what = "is a directory" if os.path.isdir(path) else "does not exist"
      # A prefix that already carries the language suffix is the likeliest slip.
      hint = ""
      for lang in (self.src_lang, self.tgt_lang):
        if prefix.endswith(f".{lang}"):
          hint = f" without the .{lang} suffix"
      raise UserError(f"{path} {what}; text pairs are two line-aligned files named "
                      f"PREFIX.<lang> ({paths[0]} and {paths[1]}), so create it or set "
                      f"{field}{hint} (or data.src_lang/data.tgt_lang) to match your files.")
    return paths

  def _scan(self, path: str, split: str) -> int:
    """Line count of one file; UserError if it is empty, not UTF-8 or has an empty line."""
    field = f"data.{split}_prefix"
    scan = _scan_lines(path)
    if scan.bad_byte is not None:
      raise UserError(f"data file {path} is not valid UTF-8 (byte {scan.bad_byte}); convert it "
                      f"with iconv or fix {field}.")
    if scan.blank_line is not None:
      raise self._blank(path, scan.blank_line, split)
    if scan.lines == 0:
      raise UserError(f"data file {path} is empty; fill it with one sentence a line or fix "
                      f"{field}.")
    return scan.lines

  def _blank(self, path: str, line: int, split: str) -> UserError:
    src, tgt = self._paths(split)
    return UserError(f"data file {path} line {line} is empty; remove that pair (line {line} of "
                     f"both {src} and {tgt}) or clean the data.")

  def _check_split_files(self, split: str) -> None:
    src, tgt = self._paths(split)
    field = f"data.{split}_prefix"
    counts = [self._scan(path, split) for path in (src, tgt)]
    if counts[0] != counts[1]:
      raise UserError(f"{src} has {counts[0]} lines but {tgt} has {counts[1]}; the files of "
                      f"{field} must be line-aligned (one sentence pair a line number), so fix "
                      "or re-export them.")

  def check(self) -> None:
    _check_langs(self.src_lang, self.tgt_lang)
    for split in SPLITS:
      if split in REQUIRED_SPLITS or self.has_split(split):
        self._check_split_files(split)

  def pairs(self, split: str) -> Iterator[tuple[str, str]]:
    """Streams the pairs of `split` in file order; problems raise the UserErrors of check()."""
    src, tgt = self._paths(split)  # at the call, not at the first next()
    return self._stream(split, src, tgt)

  def _stream(self, split: str, src: str, tgt: str) -> Iterator[tuple[str, str]]:
    # utf-8-sig drops a leading byte-order mark; newline="\n" counts lines as _scan_lines does.
    number = 0
    try:
      with open(src, encoding="utf-8-sig", newline="\n") as fs, \
           open(tgt, encoding="utf-8-sig", newline="\n") as ft:
        for number, (a, b) in enumerate(itertools.zip_longest(fs, ft), start=1):
          if a is None or b is None:
            self._check_split_files(split)  # names both files and both counts
            raise UserError(f"{src} or {tgt} changed while being read; rerun once they are final.")
          a, b = a.strip(), b.strip()
          if not a:
            raise self._blank(src, number, split)
          if not b:
            raise self._blank(tgt, number, split)
          yield a, b
    except UnicodeDecodeError:
      self._check_split_files(split)  # finds the file and byte offset for the message
      raise
    if number == 0:
      self._check_split_files(split)  # empty files: check() says which

  def fingerprint(self) -> dict:
    out = {"kind": "text", "task": "translation", "version": PARALLEL_TEXT_VERSION,
           "langs": [self.src_lang, self.tgt_lang]}
    for split in SPLITS:
      if not self.has_split(split):
        out[split] = None
        continue
      out[split] = sources.file_entries(self._paths(split))
    return out


# ---------------------------------------------------------------------------
# TensorFlow Datasets translation sets (e.g. wmt14_translate/fr-en), read through
# array_record random access (no TensorFlow).


class TfdsParallelSource:
  """A prepared TFDS dataset whose records map language codes to sentences.

  Pairs with an empty side are skipped (with a warning once the split is read): large web
  corpora hold a few, and one should not stop a long run.
  """

  def __init__(self, name: str, data_dir: str = "", train_split: str = "train",
               eval_split: str = "validation", test_split: str = "test",
               src_lang: str = "en", tgt_lang: str = "fr"):
    self.name = name
    self.data_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else ""
    self.splits = {"train": train_split, "eval": eval_split, "test": test_split}
    self.src_lang = src_lang
    self.tgt_lang = tgt_lang

  def has_split(self, split: str) -> bool:
    _check_split(split)
    return bool(self.splits[split])

  def _builder(self):
    return tfds_builders.open_builder(self.name, self.data_dir, family="translate",
                                      example="wmt14_translate/fr-en")

  def _split_info(self, builder, split: str):
    field = f"data.tfds_{split}_split"
    name = self.splits[split]
    known = ", ".join(sorted(builder.info.splits.keys()))
    if not name:
      raise UserError(f"{field} is empty; set it to one of: {known}.")
    try:
      return builder.info.splits[name]
    except (KeyError, ValueError):
      skip = " (or to '' to go without a test split)" if split == "test" else ""
      raise UserError(f"TFDS dataset {self.name!r} in {tfds_builders.where(self.data_dir)} has no split {name!r}; "
                      f"set {field} to one of: {known}{skip}.") from None

  def check(self) -> None:
    _check_langs(self.src_lang, self.tgt_lang)
    builder = self._builder()
    for split in SPLITS:
      if split in REQUIRED_SPLITS or self.has_split(split):
        self._split_info(builder, split)
    keys = list(builder.info.features.keys())
    for field, lang in (("data.src_lang", self.src_lang), ("data.tgt_lang", self.tgt_lang)):
      if lang not in keys:
        raise UserError(f"TFDS dataset {self.name!r} has no language {lang!r} ({field}); its "
                        f"records hold: {', '.join(sorted(keys))}, so set data.src_lang and "
                        "data.tgt_lang to two of those.")
    tfds_builders.require_random_access(builder, self.name, self.data_dir)

  def _text(self, value, lang: str) -> str:
    if isinstance(value, bytes):
      return value.decode("utf-8")
    if isinstance(value, str):
      return value
    raise UserError(f"field {lang!r} of TFDS dataset {self.name!r} is not text "
                    f"({type(value).__name__}); set data.src_lang and data.tgt_lang to text "
                    "fields.")

  def pairs(self, split: str) -> Iterator[tuple[str, str]]:
    _check_split(split)
    if not self.has_split(split):
      raise UserError(f"data.tfds_{split}_split is empty; set it to a split of {self.name!r}.")
    self.check()  # at the call, not at the first next()
    return self._stream(split)

  def _stream(self, split: str) -> Iterator[tuple[str, str]]:
    tfds = tfds_builders.import_tfds()
    records = tfds.data_source(self.name, split=self.splits[split],
                               data_dir=self.data_dir or None, download=False)
    total = len(records)
    skipped = 0
    # Read through the module so that tests can shrink the batch in one place.
    batch_size = sources.TFDS_BATCH
    for start in range(0, total, batch_size):
      indices = list(range(start, min(start + batch_size, total)))
      if hasattr(records, "__getitems__"):
        batch = records.__getitems__(indices)
      else:
        batch = [records[i] for i in indices]
      for record in batch:
        a = self._text(record[self.src_lang], self.src_lang).strip()
        b = self._text(record[self.tgt_lang], self.tgt_lang).strip()
        if not a or not b:
          skipped += 1
          continue
        yield a, b
    if skipped:
      _log.warning("skipped %d of %d pairs of TFDS %s split %r with an empty side", skipped,
                   total, self.name, self.splits[split])

  def fingerprint(self) -> dict:
    builder = self._builder()
    counts = {split: (self._split_info(builder, split).num_examples
                      if self.has_split(split) else None) for split in SPLITS}
    return {"kind": "tfds", "task": "translation", "name": self.name, "data_dir": self.data_dir,
            "dataset_dir": str(builder.data_dir), "version": str(builder.info.version),
            "splits": dict(self.splits), "num_examples": counts,
            "langs": [self.src_lang, self.tgt_lang]}


# ---------------------------------------------------------------------------


def make_parallel_source(data: TranslationDataConfig) -> ParallelSource:
  """The source that `data.source` names, built from the TranslationDataConfig fields."""
  if data.source == "synthetic":
    return SyntheticParallelSource(seed=data.synthetic_seed, num_words=data.synthetic_words)
  if data.source == "text":
    return TextParallelSource(train_prefix=data.train_prefix, eval_prefix=data.eval_prefix,
                              test_prefix=data.test_prefix, src_lang=data.src_lang,
                              tgt_lang=data.tgt_lang)
  if data.source == "tfds":
    return TfdsParallelSource(name=data.tfds_name, data_dir=data.tfds_data_dir,
                              train_split=data.tfds_train_split,
                              eval_split=data.tfds_eval_split, test_split=data.tfds_test_split,
                              src_lang=data.src_lang, tgt_lang=data.tgt_lang)
  raise UserError(f"config field data.source={data.source!r} is not one of synthetic, text, tfds.")
