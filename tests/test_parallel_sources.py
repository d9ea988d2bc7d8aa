"""Behavioural tests of tl_jax/data/parallel_sources.py: aligned text files, TFDS and dispatch."""

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from tl_jax.config import TranslationDataConfig
from tl_jax.data import parallel_sources as ps
from tl_jax.data import sources
from tl_jax.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write(path: Path, content) -> Path:
  if isinstance(content, str):
    content = content.encode("utf-8")
  path.write_bytes(content)
  return path


def _pair_files(prefix: Path, en, fr) -> str:
  """Writes PREFIX.en and PREFIX.fr (None leaves a side out) and returns PREFIX."""
  if en is not None:
    _write(prefix.with_name(prefix.name + ".en"), en)
  if fr is not None:
    _write(prefix.with_name(prefix.name + ".fr"), fr)
  return str(prefix)


# ---------------------------------------------------------------------------
# Line-aligned text files.


def test_text_pairs_in_file_order(tmp_path):
  # A byte-order mark, CRLF endings, padding and a last line without newline are all tolerated.
  train = _pair_files(tmp_path / "train", "\ufeffa dog runs\r\n  two cats \nthe end",
                      "un chien court\r\ndeux chats\n  la fin  \n")
  valid = _pair_files(tmp_path / "valid", "held out\n", "mis de côté\n")
  source = ps.TextParallelSource(train, valid, "", "en", "fr")
  assert isinstance(source, ps.ParallelSource)
  source.check()
  assert list(source.pairs("train")) == [("a dog runs", "un chien court"),
                                         ("two cats", "deux chats"), ("the end", "la fin")]
  assert list(source.pairs("eval")) == [("held out", "mis de côté")]
  # The direction follows src_lang/tgt_lang.
  reverse = ps.TextParallelSource(train, valid, "", "fr", "en")
  assert next(iter(reverse.pairs("train"))) == ("un chien court", "a dog runs")


def test_text_has_split_follows_prefixes(tmp_path):
  train = _pair_files(tmp_path / "train", "one\n", "un\n")
  test = _pair_files(tmp_path / "test", "two\n", "deux\n")
  without = ps.TextParallelSource(train, train, "", "en", "fr")
  assert [without.has_split(s) for s in ps.SPLITS] == [True, True, False]
  with pytest.raises(UserError, match=r"data\.test_prefix is empty"):
    without.pairs("test")
  with_test = ps.TextParallelSource(train, train, test, "en", "fr")
  assert with_test.has_split("test")
  with_test.check()
  assert list(with_test.pairs("test")) == [("two", "deux")]
  with pytest.raises(ValueError):
    with_test.has_split("dev")  # a caller bug, not a user error


def test_text_requires_train_and_eval(tmp_path):
  train = _pair_files(tmp_path / "train", "one\n", "un\n")
  with pytest.raises(UserError, match=r"data\.eval_prefix is empty.*PREFIX\.en and PREFIX\.fr"):
    ps.TextParallelSource(train, "", "", "en", "fr").check()
  with pytest.raises(UserError, match="two different language codes"):
    ps.TextParallelSource(train, train, "", "en", "en").check()


BAD_TRAIN = {
    # name: (en content, fr content, fragments the message must hold; FILE = the bad file)
    "missing_side": ("one\n", None, ["{fr}", "does not exist", "PREFIX.<lang>", "{en}"]),
    "line_counts": ("one\ntwo\nthree\n", "un\ndeux\n", ["{en} has 3 lines", "{fr} has 2",
                                                        "line-aligned"]),
    "empty_line_src": ("one\n\nthree\n", "un\ndeux\ntrois\n", ["{en} line 2 is empty",
                                                               "remove that pair", "clean"]),
    "bom_then_empty_line": ("\ufeff\ntwo\n", "un\ndeux\n", ["{en} line 1 is empty"]),
    "blank_line_tgt": ("one\ntwo\nthree", "un\ndeux\n \t", ["{fr} line 3 is empty"]),
    "not_utf8": ("one\ntwo\n", "un\nd\xe9ux\n".encode("latin-1"), ["{fr}", "UTF-8", "(byte 4)"]),
    "empty_files": ("", "", ["{en} is empty"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_text_bad_input_names_the_file(tmp_path, case):
  en, fr, fragments = BAD_TRAIN[case]
  valid = _pair_files(tmp_path / "valid", "fine\n", "bien\n")
  train = _pair_files(tmp_path / "train", en, fr)
  names = {"en": f"{train}.en", "fr": f"{train}.fr"}
  source = ps.TextParallelSource(train, valid, "", "en", "fr")
  with pytest.raises(UserError) as info:
    source.check()
  message = str(info.value)
  for fragment in fragments:
    assert fragment.format(**names) in message
  assert "data.train_prefix" in message or "remove that pair" in message
  assert "\n" not in message
  # Streaming without check() stops with the same explanation.
  with pytest.raises(UserError) as streamed:
    list(source.pairs("train"))
  assert str(streamed.value) == message
  # The eval split is fine on its own.
  assert list(source.pairs("eval")) == [("fine", "bien")]


def test_text_missing_side_hints_at_suffix(tmp_path):
  _pair_files(tmp_path / "train", "one\n", "un\n")
  prefix = str(tmp_path / "train.en")  # the file name, not the prefix
  with pytest.raises(UserError, match=r"train\.en\.en does not exist.*without the \.en suffix"):
    ps.TextParallelSource(prefix, prefix, "", "en", "fr").check()


def test_text_checks_a_configured_test_prefix(tmp_path):
  train = _pair_files(tmp_path / "train", "one\n", "un\n")
  with pytest.raises(UserError, match=r"test\.en does not exist.*data\.test_prefix"):
    ps.TextParallelSource(train, train, str(tmp_path / "test"), "en", "fr").check()


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1 << 20])
def test_text_scan_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
  monkeypatch.setattr(sources, "CHUNK_BYTES", chunk)
  line = "é€😀 ЖЖ 漢字"
  good = _pair_files(tmp_path / "good", f"{line}\n" * 4, f"{line} a\n" * 4)
  source = ps.TextParallelSource(good, good, "", "en", "fr")
  source.check()
  assert list(source.pairs("train")) == [(line, f"{line} a")] * 4
  # Errors found in the middle of a chunk or across its edge report the right place.
  blank = _pair_files(tmp_path / "blank", f"{line}\n{line}\n \r\n{line}\n", f"{line}\n" * 4)
  with pytest.raises(UserError, match=r"blank\.en line 3 is empty"):
    ps.TextParallelSource(blank, good, "", "en", "fr").check()
  raw = f"{line}\n".encode() + b"ab\xe2\x82"  # a character cut short at the end
  bad = _pair_files(tmp_path / "bad", raw, f"{line}\n" * 2)
  with pytest.raises(UserError, match=rf"bad\.en is not valid UTF-8 \(byte {len(raw) - 2}\)"):
    ps.TextParallelSource(good, bad, "", "en", "fr").check()


def test_text_fingerprint_follows_files(tmp_path):
  train = _pair_files(tmp_path / "train", "one\n", "un\n")
  source = ps.TextParallelSource(train, train, "", "en", "fr")
  first = source.fingerprint()
  json.dumps(first)  # usable as a cache key
  assert first["kind"] == "text" and first["langs"] == ["en", "fr"] and first["test"] is None
  assert [e["path"] for e in first["train"]] == [str(Path(f"{train}.en").resolve()),
                                                 str(Path(f"{train}.fr").resolve())]
  assert source.fingerprint() == first
  # Same size, new content: only the modification time tells them apart.
  path = Path(f"{train}.fr")
  _write(path, "on\n")
  stat = path.stat()
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  assert source.fingerprint() != first
  assert ps.TextParallelSource(train, train, "", "fr", "en").fingerprint() != source.fingerprint()


def test_text_reads_multi30k():
  prefix = SHARED_DATA / "multi30k"
  if not (prefix / "train.en").is_file():
    pytest.skip(f"../shared/data is absent: no {prefix / 'train.en'}; real-text tests need the "
                "shared data folder beside the checkout (see ../shared/data/README.md).")
  source = ps.TextParallelSource(str(prefix / "train"), str(prefix / "val"),
                                 str(prefix / "test_2016_flickr"), "en", "fr")
  source.check()
  count = 0
  for en, fr in source.pairs("train"):
    assert en and fr and en == en.strip() and fr == fr.strip()
    count += 1
  assert count == 29000
  assert sum(1 for _ in source.pairs("eval")) == 1014
  first = next(iter(source.pairs("test")))
  assert all(first) and first[0] != first[1]


# ---------------------------------------------------------------------------
# TensorFlow Datasets.

TRAIN_PAIRS = [("a dog runs", "un chien court"), ("two cats", "deux chats"),
               ("ünïcödé", "ûñîçødé"), ("three", "trois")]
EMPTY_PAIRS = [("", "vide"), ("  ", "blanc")]  # skipped on reading
VALID_PAIRS = [("held out", "mis de côté")]
TEST_PAIRS = [("test one", "essai un"), ("test two", "essai deux")]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A tiny translation dataset, prepared offline in array_record format."""
  tfds = pytest.importorskip("tensorflow_datasets")
  tfds.disable_progress_bar()

  # Unregistered, so that reading must go through the prepared files alone, as it
  # does for a dataset built elsewhere with `tfds build`.
  with tfds.core.registered.skip_registration():
    class TlJaxTinyPairs(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        # The feature wmt14_translate uses: one text per language code.
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.Translation(languages=("en", "fr")))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(TRAIN_PAIRS + EMPTY_PAIRS),
                "validation": self._generate_examples(VALID_PAIRS),
                "test": self._generate_examples(TEST_PAIRS)}

      def _generate_examples(self, pairs):
        for i, (en, fr) in enumerate(pairs):
          yield i, {"en": en, "fr": fr}

  data_dir = tmp_path_factory.mktemp("tfds_pairs")
  builder = TlJaxTinyPairs(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return str(data_dir)


def _tiny(tfds_dir, **kwargs) -> ps.TfdsParallelSource:
  args = dict(name="tl_jax_tiny_pairs", data_dir=tfds_dir, train_split="train",
              eval_split="validation", test_split="test", src_lang="en", tgt_lang="fr")
  args.update(kwargs)
  return ps.TfdsParallelSource(**args)


def test_tfds_reads_pairs(tfds_dir, monkeypatch):
  monkeypatch.setattr(sources, "TFDS_BATCH", 3)  # several batches and a partial one
  source = _tiny(tfds_dir)
  assert isinstance(source, ps.ParallelSource)
  source.check()
  train = list(source.pairs("train"))
  assert all(isinstance(a, str) and isinstance(b, str) for a, b in train)
  # Prepared examples are shuffled by key, so compare as multisets; empty sides are dropped.
  assert Counter(train) == Counter(TRAIN_PAIRS)
  assert list(source.pairs("eval")) == VALID_PAIRS
  assert Counter(source.pairs("test")) == Counter(TEST_PAIRS)
  reverse = _tiny(tfds_dir, src_lang="fr", tgt_lang="en")
  assert Counter(reverse.pairs("train")) == Counter((b, a) for a, b in TRAIN_PAIRS)


def test_tfds_split_slices_and_optional_test(tfds_dir):
  source = _tiny(tfds_dir, train_split="test[1:]", eval_split="test", test_split="")
  source.check()
  assert not source.has_split("test") and source.has_split("train")
  sliced = list(source.pairs("train"))
  assert len(sliced) == 1 and sliced[0] in TEST_PAIRS
  assert Counter(source.pairs("eval")) == Counter(TEST_PAIRS)
  with pytest.raises(UserError, match=r"data\.tfds_test_split is empty"):
    source.pairs("test")
  with pytest.raises(UserError, match=r"no split 'dev'.*data\.tfds_test_split.*validation"):
    _tiny(tfds_dir, test_split="dev").check()


def test_tfds_fingerprint(tfds_dir):
  print_ = _tiny(tfds_dir).fingerprint()
  json.dumps(print_)
  assert print_["kind"] == "tfds" and print_["version"] == "1.0.0"
  assert print_["langs"] == ["en", "fr"]
  assert print_["num_examples"] == {"train": len(TRAIN_PAIRS) + len(EMPTY_PAIRS),
                                    "eval": len(VALID_PAIRS), "test": len(TEST_PAIRS)}
  assert _tiny(tfds_dir, src_lang="fr", tgt_lang="en").fingerprint() != print_
  assert _tiny(tfds_dir, test_split="").fingerprint() != print_


def test_tfds_missing_language_names_the_keys(tfds_dir):
  with pytest.raises(UserError, match=r"no language 'de' \(data\.src_lang\).*en, fr") as info:
    _tiny(tfds_dir, src_lang="de").check()
  assert "tl_jax_tiny_pairs" in str(info.value)
  with pytest.raises(UserError, match=r"no language 'es' \(data\.tgt_lang\)"):
    _tiny(tfds_dir, tgt_lang="es").pairs("train")


def test_tfds_unknown_name_is_one_short_sentence(tfds_dir):
  with pytest.raises(UserError) as info:
    _tiny(tfds_dir, name="tl_jax_no_such_pairs").check()
  message = str(info.value)
  assert "'tl_jax_no_such_pairs'" in message and "data.tfds_name" in message
  # tfds's own message lists every registered dataset; ours must not.
  assert "\n" not in message and len(message) < 400 and "mnist" not in message


def test_tfds_unprepared_gives_the_build_command(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  source = ps.TfdsParallelSource("wmt14_translate/fr-en", str(tmp_path), src_lang="en",
                                 tgt_lang="fr")
  with pytest.raises(UserError, match=r"not prepared.*tfds build wmt14_translate/fr-en") as info:
    source.check()
  assert str(tmp_path) in str(info.value) and "data.tfds_data_dir" in str(info.value)
  with pytest.raises(UserError, match="not prepared"):
    source.pairs("train")


def test_tfds_missing_package(monkeypatch, tmp_path):
  # A None entry makes `import tensorflow_datasets` fail as if it were not installed.
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(UserError, match=r"pip install 'tl_jax\[data\]'"):
    ps.TfdsParallelSource("wmt14_translate/fr-en", str(tmp_path)).check()


# ---------------------------------------------------------------------------
# Dispatch.


def test_make_parallel_source_text(tmp_path):
  train = _pair_files(tmp_path / "train", "hello\n", "bonjour\n")
  data = TranslationDataConfig(source="text", train_prefix=train, eval_prefix=train,
                               src_lang="fr", tgt_lang="en")
  source = ps.make_parallel_source(data)
  assert isinstance(source, ps.TextParallelSource) and not source.has_split("test")
  assert list(source.pairs("eval")) == [("bonjour", "hello")]


def test_make_parallel_source_tfds(tfds_dir):
  data = TranslationDataConfig(source="tfds", tfds_name="tl_jax_tiny_pairs", tfds_data_dir=tfds_dir,
                               tfds_train_split="test", tfds_eval_split="validation",
                               tfds_test_split="", src_lang="en", tgt_lang="fr")
  source = ps.make_parallel_source(data)
  assert isinstance(source, ps.TfdsParallelSource) and not source.has_split("test")
  assert Counter(source.pairs("train")) == Counter(TEST_PAIRS)


def test_make_parallel_source_synthetic():
  data = TranslationDataConfig(source="synthetic", synthetic_seed=7, synthetic_words=500)
  source = ps.make_parallel_source(data)
  assert isinstance(source, ps.SyntheticParallelSource) and isinstance(source, ps.ParallelSource)
  print_ = source.fingerprint()
  json.dumps(print_)
  assert print_["kind"] == "synthetic" and print_["seed"] == 7 and print_["num_words"] == 500
  assert print_["version"] == sources.SYNTHETIC_VERSION
  other = ps.make_parallel_source(TranslationDataConfig(source="synthetic", synthetic_seed=8))
  assert other.fingerprint() != print_
  assert all(source.has_split(split) for split in ps.SPLITS)
  source.check()
  with pytest.raises(UserError, match="synthetic_words"):
    ps.make_parallel_source(TranslationDataConfig(source="synthetic", synthetic_words=0)).check()
  from tl_jax.data.synthetic import SyntheticLanguage
  if not hasattr(SyntheticLanguage, "pairs"):
    pytest.skip("SyntheticLanguage.pairs() is not in tl_jax/data/synthetic.py yet; cannot read "
                "synthetic pairs.")
  first = [pair for _, pair in zip(range(5), source.pairs("train"))]
  again = [pair for _, pair in zip(range(5), ps.make_parallel_source(data).pairs("train"))]
  assert len(first) == 5 and first == again  # same seed, same pairs, as the fingerprint promises
  assert all(isinstance(a, str) and isinstance(b, str) and a and b for a, b in first)
  assert [pair for _, pair in zip(range(5), source.pairs("eval"))] != first


def test_make_parallel_source_unknown():
  with pytest.raises(UserError, match="data.source"):
    ps.make_parallel_source(TranslationDataConfig(source="nope"))
