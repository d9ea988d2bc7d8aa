"""Where raw text comes from: the synthetic language, local text files, or TFDS.

A source yields documents (one string each) for the "train" and "eval" splits,
names itself by a JSON fingerprint that the token caches use as a key, and can
check itself cheaply before anything is tokenized or compiled.
"""

from __future__ import annotations

import codecs
import collections
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
import glob
import multiprocessing
import os
import typing
from typing import Iterator

import numpy as np

from tl_jax.data import tfds_builders
from tl_jax.errors import UserError

if typing.TYPE_CHECKING:
  from tl_jax.config import DataConfig

SPLITS = ("train", "eval")

# The synthetic language's version when none is given (synthetic.DEFAULT_VERSION, kept here so
# that text runs never import the generator). Versions are frozen languages: a change of what
# one generates for a (seed, num_words) needs a new version, since caches are keyed by it.
SYNTHETIC_VERSION = 3
# Synthetic documents a worker generates and tokenizes at a time; shard k holds documents
# [k * SHARD_DOCS, (k + 1) * SHARD_DOCS), so the token stream is the same for any worker count.
SHARD_DOCS = 256
# Budgets below this many tokens are generated in-process: starting workers costs more.
PARALLEL_MIN_TOKENS = 1_000_000
# Bump when the rule turning lines into documents changes.
TEXT_VERSION = 1
# Bytes decoded at a time by the UTF-8 check; small enough to bound memory on huge files.
CHUNK_BYTES = 1 << 20
# Records fetched per random-access call: one call per record is slow on array_record.
TFDS_BATCH = 1024


@typing.runtime_checkable
class Source(typing.Protocol):
  """What the tokenizer and the token caches need from a text source."""

  def documents(self, split: str) -> Iterator[str]:
    """Documents of `split` ("train" or "eval"), one string each."""
    ...

  def fingerprint(self) -> dict:
    """JSON-serialisable identity that changes whenever the text would change."""
    ...

  def check(self) -> None:
    """Cheap validation before training; raises UserError naming cause and fix."""
    ...


def _check_split(split: str) -> None:
  # A wrong split name is a bug in the caller, not something the user can fix.
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ---------------------------------------------------------------------------
# Synthetic language.


def _language(seed: int, num_words: int, version: int):
  # Imported here so that text and TFDS runs never load the generator.
  from tl_jax.data.synthetic import SyntheticLanguage
  return SyntheticLanguage(seed=seed, num_words=num_words, version=version)


def _encode_shard(language, tokenizer, split: str, shard: int, eos_id: int) -> np.ndarray:
  """Documents of `shard`, tokenized, each followed by `eos_id`, as one int32 array."""
  start = shard * SHARD_DOCS
  docs = [language.document(i, split) for i in range(start, start + SHARD_DOCS)]
  ids = tokenizer.encode(docs)
  lengths = np.fromiter((len(x) + 1 for x in ids), np.int64, len(ids))
  flat = np.full(int(lengths.sum()), eos_id, np.int32)
  ends = np.cumsum(lengths) - 1
  for x, end in zip(ids, ends):
    flat[end - len(x):end] = x
  return flat


# A worker process's language and tokenizer, set once by _init_worker.
_worker_state: tuple = ()


def _init_worker(seed: int, num_words: int, version: int, tokenizer) -> None:
  global _worker_state
  _worker_state = (_language(seed, num_words, version), tokenizer)


def _worker_shard(split: str, shard: int, eos_id: int) -> np.ndarray:
  language, tokenizer = _worker_state
  return _encode_shard(language, tokenizer, split, shard, eos_id)


def _cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
  """The CPUs a cgroup v2 quota allows (None: no quota, or no such file)."""
  try:
    with open(path) as f:
      quota, period = f.read().split()[:2]
  except (OSError, ValueError):
    return None
  return None if quota == "max" else max(1, -(-int(quota) // int(period)))


def _default_workers() -> int:
  # A container can see all of its host's CPUs while its quota allows a few of them: one
  # worker per visible CPU would then be many processes, each holding a language, sharing
  # those few.
  try:
    visible = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    visible = os.cpu_count() or 1
  return min(visible, _cgroup_cpus() or visible)


class SyntheticSource:
  """Unbounded documents of the project's synthetic language (tl_jax/data/synthetic.py).

  `workers` processes generate and tokenize shards of documents for `token_batches`
  (0: one a core, in-process below PARALLEL_MIN_TOKENS); the tokens do not depend on it.
  """

  def __init__(self, seed: int = 0, num_words: int = 3000, version: int = SYNTHETIC_VERSION,
               workers: int = 0):
    self.seed = seed
    self.num_words = num_words
    self.version = version
    self.workers = workers

  def _language(self):
    return _language(self.seed, self.num_words, self.version)

  def documents(self, split: str) -> Iterator[str]:
    _check_split(split)
    return self._language().documents(split)

  def token_batches(self, split: str, tokenizer, eos_id: int,
                    max_tokens: int = 0) -> Iterator[np.ndarray]:
    """`documents(split)` tokenized by `tokenizer`, each followed by `eos_id`, in order, as
    int32 arrays of SHARD_DOCS documents each: what tokenizing `documents` gives, made in
    worker processes. Unbounded; `max_tokens` (0: unknown) only picks the in-process path
    for small budgets."""
    _check_split(split)
    workers = self.workers or _default_workers()
    # Workers are spawned, so they import the __main__ module: a script that runs pretraining
    # must do so under `if __name__ == "__main__":`. Inside a worker (an unguarded script) no
    # pool is started again.
    if (workers <= 1 or (self.workers == 0 and 0 < max_tokens < PARALLEL_MIN_TOKENS)
        or multiprocessing.parent_process() is not None):
      return self._serial_batches(split, tokenizer, eos_id)
    return self._parallel_batches(split, tokenizer, eos_id, workers)

  def _serial_batches(self, split: str, tokenizer, eos_id: int) -> Iterator[np.ndarray]:
    language = self._language()
    shard = 0
    while True:
      yield _encode_shard(language, tokenizer, split, shard, eos_id)
      shard += 1

  def _parallel_batches(self, split: str, tokenizer, eos_id: int,
                        workers: int) -> Iterator[np.ndarray]:
    # spawn, not fork: the parent may run JAX's threads, which a fork would copy mid-lock.
    # An executor, not multiprocessing.Pool: a worker that dies (the kernel's OOM killer)
    # breaks it with an error, where a Pool would wait for the lost shard for ever.
    with futures.ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _init_worker,
                                     (self.seed, self.num_words, self.version, tokenizer)) as pool:
      # A bounded window of shards in flight, taken in shard order: the consumer stops
      # whenever its budget is full, and the queued shards are cancelled on leaving.
      pending = collections.deque()
      shard = 0
      try:
        while True:
          while len(pending) < 2 * workers:
            pending.append(pool.submit(_worker_shard, split, shard, eos_id))
            shard += 1
          try:
            yield pending.popleft().result()
          except BrokenProcessPool as e:
            raise UserError(f"a worker process generating the synthetic corpus died ({e}); "
                            f"{workers} workers may be more than this machine's memory holds: "
                            "free memory, or set data.max_train_tokens lower.") from e
      finally:
        for job in pending:
          job.cancel()

  def fingerprint(self) -> dict:
    # Version 3's fingerprint is the one it had before versions were selectable, so its
    # caches stay valid.
    return {"kind": "synthetic", "version": self.version, "seed": self.seed,
            "num_words": self.num_words}

  def check(self) -> None:
    if self.num_words <= 0:
      raise UserError(f"data.synthetic_words={self.num_words} must be positive.")
    from tl_jax.data.synthetic import VERSIONS
    if self.version not in VERSIONS:
      raise UserError(f"data.synthetic_version={self.version} is not one of "
                      f"{', '.join(map(str, VERSIONS))}; pick one (3 is the original language).")


# ---------------------------------------------------------------------------
# Local text files, one document (paragraph) a line.


def _field(split: str) -> str:
  return f"data.{split}_files"


def expand_files(patterns: str, split: str) -> list[str]:
  """The files named by a comma-separated list of paths and globs, in a stable order."""
  field = _field(split)
  entries = [p.strip() for p in patterns.split(",") if p.strip()]
  if not entries:
    raise UserError(f"{field} is empty; set it to comma-separated files or globs of UTF-8 text.")
  files, seen = [], set()
  for entry in entries:
    pattern = os.path.expanduser(entry)
    if glob.has_magic(pattern):
      matches = [m for m in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(m)]
    else:
      matches = [pattern] if os.path.isfile(pattern) else []
    if not matches:
      if os.path.isdir(pattern):
        raise UserError(f"{field} entry {entry!r} is a directory; name its files, e.g. "
                        f"{os.path.join(entry, '*.txt')}.")
      raise UserError(f"{field} entry {entry!r} matches no file; fix the path or glob "
                      "(relative paths start from the current directory).")
    for match in matches:
      # Overlapping globs must not read a file twice.
      key = os.path.abspath(match)
      if key not in seen:
        seen.add(key)
        files.append(match)
  return files


def file_entries(paths: list[str]) -> list[dict]:
  """Each file's absolute path, size and modification time: a cache key that sees edits."""
  entries = []
  for path in paths:
    stat = os.stat(path)
    entries.append({"path": os.path.abspath(path), "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns})
  return entries


def _bad_utf8(path: str, offset: int, split: str) -> UserError:
  return UserError(f"data file {path} is not valid UTF-8 (byte {offset}); convert it with iconv "
                   f"or remove it from {_field(split)}.")


def _scan(path: str, split: str) -> None:
  """Raises UserError if `path` is empty, whitespace-only or not UTF-8; reads it in chunks."""
  decoder = codecs.getincrementaldecoder("utf-8")("strict")
  position = 0  # bytes handed to the decoder so far
  has_text = False
  with open(path, "rb") as f:
    while True:
      chunk = f.read(CHUNK_BYTES)
      # Bytes of a character cut by the previous chunk boundary wait in the decoder;
      # the error offset counts from the start of those.
      pending = len(decoder.getstate()[0])
      try:
        text = decoder.decode(chunk, final=not chunk)
      except UnicodeDecodeError as e:
        raise _bad_utf8(path, position - pending + e.start, split) from None
      position += len(chunk)
      if not has_text and text.replace("\ufeff", "").strip():
        has_text = True
      if not chunk:
        break
  if position == 0:
    raise UserError(f"data file {path} is empty; remove it from {_field(split)} or fill it.")
  if not has_text:
    raise UserError(f"data file {path} holds only whitespace; remove it from {_field(split)}.")


class TextFilesSource:
  """UTF-8 text files; every non-blank line, stripped, is one document (WikiText style)."""

  def __init__(self, train_files: str, eval_files: str):
    self.patterns = {"train": train_files, "eval": eval_files}

  def files(self, split: str) -> list[str]:
    _check_split(split)
    return expand_files(self.patterns[split], split)

  def documents(self, split: str) -> Iterator[str]:
    for path in self.files(split):
      # utf-8-sig drops a leading byte-order mark, which is not whitespace to strip().
      try:
        with open(path, encoding="utf-8-sig") as f:
          for line in f:
            line = line.strip()
            if line:
              yield line
      except UnicodeDecodeError:
        _scan(path, split)  # finds the byte offset for the message
        raise

  def fingerprint(self) -> dict:
    out = {"kind": "text", "version": TEXT_VERSION}
    for split in SPLITS:
      out[split] = file_entries(self.files(split))
    return out

  def check(self) -> None:
    for split in SPLITS:
      for path in self.files(split):
        _scan(path, split)


# ---------------------------------------------------------------------------
# TensorFlow Datasets, read through array_record random access (no TensorFlow).


class TfdsSource:
  """A prepared TFDS dataset (array_record format); one record's `text_key` is one document."""

  def __init__(self, name: str, data_dir: str = "", train_split: str = "train",
               eval_split: str = "validation", text_key: str = "text"):
    self.name = name
    self.data_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else ""
    self.splits = {"train": train_split, "eval": eval_split}
    self.text_key = text_key

  def _builder(self):
    return tfds_builders.open_builder(self.name, self.data_dir, family="", example="wikipedia/20230601.en")

  def _split_info(self, builder, split: str):
    field = f"data.tfds_{split}_split"
    name = self.splits[split]
    try:
      return builder.info.splits[name]
    except (KeyError, ValueError):
      known = ", ".join(sorted(builder.info.splits.keys()))
      raise UserError(f"TFDS dataset {self.name!r} in {tfds_builders.where(self.data_dir)} has no split {name!r}; "
                      f"set {field} to one of: {known}.") from None

  def check(self) -> None:
    builder = self._builder()
    for split in SPLITS:
      self._split_info(builder, split)
    keys = list(builder.info.features.keys())
    if self.text_key not in keys:
      raise UserError(f"TFDS dataset {self.name!r} has no feature {self.text_key!r}; set "
                      f"data.tfds_text_key to one of: {', '.join(keys)}.")
    tfds_builders.require_random_access(builder, self.name, self.data_dir)

  def _records(self, split: str):
    tfds = tfds_builders.import_tfds()
    try:
      return tfds.data_source(self.name, split=self.splits[split], data_dir=self.data_dir or None,
                              download=False)
    except NotImplementedError:
      # Raised for tfrecord-format datasets; check() explains it.
      self.check()
      raise

  def documents(self, split: str) -> Iterator[str]:
    _check_split(split)
    self.check()
    records = self._records(split)
    total = len(records)
    for start in range(0, total, TFDS_BATCH):
      indices = list(range(start, min(start + TFDS_BATCH, total)))
      if hasattr(records, "__getitems__"):
        batch = records.__getitems__(indices)
      else:
        batch = [records[i] for i in indices]
      for record in batch:
        text = record[self.text_key]
        if isinstance(text, bytes):
          text = text.decode("utf-8")
        elif not isinstance(text, str):
          raise UserError(f"feature {self.text_key!r} of TFDS dataset {self.name!r} is not text "
                          f"({type(text).__name__}); set data.tfds_text_key to a text feature.")
        yield text

  def fingerprint(self) -> dict:
    builder = self._builder()
    counts = {split: self._split_info(builder, split).num_examples for split in SPLITS}
    return {"kind": "tfds", "name": self.name, "data_dir": self.data_dir,
            "dataset_dir": str(builder.data_dir), "version": str(builder.info.version),
            "splits": dict(self.splits), "num_examples": counts, "text_key": self.text_key}


# ---------------------------------------------------------------------------


def make_source(data: DataConfig) -> Source:
  """The source that `data.source` names, built from the DataConfig fields."""
  if data.source == "synthetic":
    return SyntheticSource(seed=data.synthetic_seed, num_words=data.synthetic_words,
                           version=data.synthetic_version)
  if data.source == "text":
    return TextFilesSource(train_files=data.train_files, eval_files=data.eval_files)
  if data.source == "tfds":
    return TfdsSource(name=data.tfds_name, data_dir=data.tfds_data_dir,
                      train_split=data.tfds_train_split, eval_split=data.tfds_eval_split,
                      text_key=data.tfds_text_key)
  raise UserError(f"config field data.source={data.source!r} is not one of synthetic, text, tfds.")
