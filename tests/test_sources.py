"""Behavioural tests of tl_jax/data/sources.py: text files, TFDS and dispatch."""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tl_jax.config import DataConfig
from tl_jax.data import sources
from tl_jax.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write(path: Path, content) -> Path:
  if isinstance(content, str):
    content = content.encode("utf-8")
  path.write_bytes(content)
  return path


# ---------------------------------------------------------------------------
# Text files.


def test_text_documents_are_nonblank_lines_in_file_order(tmp_path):
  a = _write(tmp_path / "a.txt", "  first doc  \n\n   \nsecond doc\r\n")
  b = _write(tmp_path / "b.txt", "\ufeffthird doc\n\t\nfourth doc")  # BOM, no final newline
  source = sources.TextFilesSource(f"{b}, {a}", str(a))
  source.check()
  assert list(source.documents("train")) == ["third doc", "fourth doc", "first doc", "second doc"]
  assert list(source.documents("eval")) == ["first doc", "second doc"]


def test_text_glob_expansion_is_sorted_and_deduplicated(tmp_path):
  for name in ("c.txt", "a.txt", "b.txt"):
    _write(tmp_path / name, f"doc {name}\n")
  _write(tmp_path / "skip.md", "not matched\n")
  source = sources.TextFilesSource(f"{tmp_path}/*.txt,{tmp_path}/a.txt", f"{tmp_path}/b.txt")
  assert list(source.documents("train")) == ["doc a.txt", "doc b.txt", "doc c.txt"]


def test_text_expands_home(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  _write(tmp_path / "home.txt", "from home\n")
  source = sources.TextFilesSource("~/home.txt", "~/*.txt")
  source.check()
  assert list(source.documents("eval")) == ["from home"]


def test_text_fingerprint_follows_file_content(tmp_path):
  path = _write(tmp_path / "a.txt", "one\n")
  source = sources.TextFilesSource(str(path), str(path))
  first = source.fingerprint()
  json.dumps(first)  # must be usable as a cache key
  assert first["kind"] == "text"
  assert first["train"][0]["path"] == str(path.resolve())
  assert source.fingerprint() == first

  _write(path, "one two\n")
  changed = source.fingerprint()
  assert changed != first

  # Same size, new content: only the modification time tells them apart.
  _write(path, "one six\n")
  stat = path.stat()
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  assert source.fingerprint() != changed


def test_text_fingerprint_follows_file_list(tmp_path):
  a = _write(tmp_path / "a.txt", "one\n")
  before = sources.TextFilesSource(f"{tmp_path}/*.txt", str(a)).fingerprint()
  _write(tmp_path / "b.txt", "two\n")
  after = sources.TextFilesSource(f"{tmp_path}/*.txt", str(a)).fingerprint()
  assert len(after["train"]) == 2 and after != before


def test_text_check_missing_pattern(tmp_path):
  good = _write(tmp_path / "good.txt", "text\n")
  source = sources.TextFilesSource(str(good), f"{tmp_path}/nothing*.txt")
  with pytest.raises(UserError, match=r"data\.eval_files.*nothing\*\.txt.*matches no file"):
    source.check()
  with pytest.raises(UserError, match="matches no file"):
    sources.TextFilesSource(str(tmp_path / "absent.txt"), str(good)).check()


@pytest.mark.parametrize("content, words", [(b"", "empty"), (b" \n\t\r\n  \n", "only whitespace")])
def test_text_check_empty_and_blank_files(tmp_path, content, words):
  good = _write(tmp_path / "good.txt", "text\n")
  bad = _write(tmp_path / "bad.txt", content)
  with pytest.raises(UserError, match=words) as info:
    sources.TextFilesSource(f"{good},{bad}", str(good)).check()
  assert str(bad) in str(info.value) and "data.train_files" in str(info.value)


@pytest.mark.parametrize("chunk", [3, 4, 1 << 20])
@pytest.mark.parametrize("content, offset", [
    ("ab€".encode() + b"\xff" + b"rest\n", 5),  # invalid start byte
    ("ab€".encode() + b"\xe2\x82" + b"x\n", 5),  # sequence cut short mid-file
    (b"ab\xe2\x82", 2),  # sequence cut short at the end of the file
])
def test_text_check_rejects_bad_utf8_with_offset(tmp_path, monkeypatch, chunk, content, offset):
  monkeypatch.setattr(sources, "CHUNK_BYTES", chunk)
  good = _write(tmp_path / "good.txt", "text\n")
  bad = _write(tmp_path / "latin1.txt", content)
  source = sources.TextFilesSource(str(good), f"{good},{bad}")
  with pytest.raises(UserError) as info:
    source.check()
  message = str(info.value)
  assert str(bad) in message and "UTF-8" in message
  assert f"byte {offset})" in message and "data.eval_files" in message
  # Reading without check() gives the same explanation.
  with pytest.raises(UserError, match="UTF-8"):
    list(source.documents("eval"))


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7])
def test_text_check_accepts_multibyte_across_chunks(tmp_path, monkeypatch, chunk):
  monkeypatch.setattr(sources, "CHUNK_BYTES", chunk)
  line = "é€😀 ЖЖ 漢字 a" * 7
  path = _write(tmp_path / "multi.txt", f"{line}\n\n{line}\n")
  raw = path.read_bytes()
  # Some chunk boundary must fall inside a character (on a continuation byte).
  assert any(0x80 <= raw[i] < 0xC0 for i in range(chunk, len(raw), chunk))
  source = sources.TextFilesSource(str(path), str(path))
  source.check()
  assert list(source.documents("train")) == [line.strip(), line.strip()]


def test_text_rejects_directory_and_empty_setting(tmp_path):
  good = _write(tmp_path / "good.txt", "text\n")
  with pytest.raises(UserError, match="directory"):
    sources.TextFilesSource(str(tmp_path), str(good)).check()
  with pytest.raises(UserError, match=r"data\.eval_files is empty"):
    sources.TextFilesSource(str(good), " , ").check()


def test_text_reads_wikitext2():
  valid = SHARED_DATA / "wikitext2" / "valid.txt"
  if not valid.is_file():
    pytest.skip(f"../shared/data is absent: no {valid}; real-text tests need the shared data "
                "folder beside the checkout (see ../shared/data/README.md).")
  source = sources.TextFilesSource(str(valid), str(valid))
  source.check()
  docs = list(source.documents("eval"))
  assert len(docs) > 1000
  assert all(doc and doc == doc.strip() for doc in docs)
  assert any(doc.startswith("= ") for doc in docs)  # WikiText headings survive as documents


# ---------------------------------------------------------------------------
# TensorFlow Datasets.

TRAIN_DOCS = ["the first document", "second one, with ünïcödé", "third"]
EVAL_DOCS = ["held out", "also held out"]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A tiny text dataset prepared offline in array_record format."""
  tfds = pytest.importorskip("tensorflow_datasets")
  tfds.disable_progress_bar()

  # Unregistered, so that reading must go through the prepared files alone, as it
  # does for a dataset built elsewhere with `tfds build`.
  with tfds.core.registered.skip_registration():
    class TlJaxTinyText(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.2.0")

      def _info(self):
        # A builder outside a package must build its DatasetInfo directly.
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(TRAIN_DOCS),
                "validation": self._generate_examples(EVAL_DOCS)}

      def _generate_examples(self, docs):
        for i, doc in enumerate(docs):
          yield i, {"text": doc, "label": i % 2}

  data_dir = tmp_path_factory.mktemp("tfds")
  builder = TlJaxTinyText(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return str(data_dir)


def test_tfds_reads_documents(tfds_dir):
  source = sources.TfdsSource("tl_jax_tiny_text", tfds_dir, "train", "validation", "text")
  source.check()
  train = list(source.documents("train"))
  assert all(isinstance(doc, str) for doc in train)
  # Prepared examples are shuffled by key, so compare as multisets.
  assert sorted(train) == sorted(TRAIN_DOCS)
  assert sorted(source.documents("eval")) == sorted(EVAL_DOCS)


def test_tfds_reads_in_batches(tfds_dir, monkeypatch):
  monkeypatch.setattr(sources, "TFDS_BATCH", 2)
  source = sources.TfdsSource("tl_jax_tiny_text", tfds_dir, "train[1:]", "validation", "text")
  assert len(list(source.documents("train"))) == len(TRAIN_DOCS) - 1


def test_tfds_fingerprint(tfds_dir):
  source = sources.TfdsSource("tl_jax_tiny_text", tfds_dir, "train", "validation", "text")
  print_ = source.fingerprint()
  json.dumps(print_)
  assert print_["kind"] == "tfds" and print_["version"] == "1.2.0"
  assert print_["name"] == "tl_jax_tiny_text" and print_["text_key"] == "text"
  assert print_["num_examples"] == {"train": len(TRAIN_DOCS), "eval": len(EVAL_DOCS)}
  other = sources.TfdsSource("tl_jax_tiny_text", tfds_dir, "validation", "train", "text")
  assert other.fingerprint() != print_


def test_tfds_unprepared_raises(tfds_dir, tmp_path):
  # A builder tfds does not know (this one is registered nowhere) and no files in the directory.
  with pytest.raises(UserError, match=r"not prepared in|nor prepared in") as info:
    sources.TfdsSource("tl_jax_tiny_text", str(tmp_path), "train", "validation").check()
  assert "tl_jax_tiny_text" in str(info.value) and str(tmp_path) in str(info.value)
  # A registered dataset that was never built here.
  with pytest.raises(UserError, match="not prepared"):
    sources.TfdsSource("mnist", str(tmp_path), "train", "test").check()
  with pytest.raises(UserError, match="not prepared"):
    next(sources.TfdsSource("mnist", str(tmp_path), "train", "test").documents("train"))


def test_tfds_bad_split_and_key(tfds_dir):
  with pytest.raises(UserError, match=r"no split 'dev'.*data\.tfds_eval_split.*validation"):
    sources.TfdsSource("tl_jax_tiny_text", tfds_dir, "train", "dev", "text").check()
  with pytest.raises(UserError, match=r"no feature 'body'.*data\.tfds_text_key"):
    sources.TfdsSource("tl_jax_tiny_text", tfds_dir, "train", "validation", "body").check()


def test_tfds_missing_package(monkeypatch, tmp_path):
  # A None entry makes `import tensorflow_datasets` fail as if it were not installed.
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(UserError, match=r"pip install 'tl_jax\[data\]'"):
    sources.TfdsSource("anything", str(tmp_path)).check()


# ---------------------------------------------------------------------------
# Dispatch.


def test_make_source_text(tmp_path):
  path = _write(tmp_path / "a.txt", "hello\n")
  source = sources.make_source(DataConfig(source="text", train_files=str(path),
                                          eval_files=str(path)))
  assert isinstance(source, sources.TextFilesSource) and isinstance(source, sources.Source)
  assert list(source.documents("train")) == ["hello"]


def test_make_source_tfds(tfds_dir):
  data = DataConfig(source="tfds", tfds_name="tl_jax_tiny_text", tfds_data_dir=tfds_dir,
                    tfds_train_split="validation", tfds_eval_split="train", tfds_text_key="text")
  source = sources.make_source(data)
  assert isinstance(source, sources.TfdsSource)
  assert sorted(source.documents("train")) == sorted(EVAL_DOCS)


def test_make_source_synthetic():
  data = DataConfig(source="synthetic", synthetic_seed=7, synthetic_words=500)
  source = sources.make_source(data)
  assert isinstance(source, sources.SyntheticSource) and isinstance(source, sources.Source)
  print_ = source.fingerprint()
  assert print_["kind"] == "synthetic" and print_["seed"] == 7 and print_["num_words"] == 500
  assert "version" in print_
  assert sources.make_source(DataConfig(source="synthetic", synthetic_seed=8)).fingerprint() != print_
  source.check()
  if importlib.util.find_spec("tl_jax.data.synthetic") is None:
    pytest.skip("tl_jax/data/synthetic.py does not exist yet; cannot read synthetic documents.")
  first = [doc for _, doc in zip(range(5), source.documents("train"))]
  again = [doc for _, doc in zip(range(5), sources.make_source(data).documents("train"))]
  assert len(first) == 5 and all(isinstance(doc, str) and doc for doc in first)
  assert first == again  # the same seed gives the same text, as the fingerprint promises
  assert isinstance(next(iter(source.documents("eval"))), str)


def test_make_source_unknown():
  with pytest.raises(UserError, match="data.source"):
    sources.make_source(DataConfig(source="nope"))


def test_tfds_without_random_access_names_the_rebuild(tfds_dir, tmp_path):
  # A copy whose metadata says tfrecord, as `tfds build` writes by default: array_record
  # readers cannot index it, and every tfds-backed source says so before any read.
  copy = tmp_path / "tfds"
  shutil.copytree(tfds_dir, copy)
  [info] = copy.glob("*/*/dataset_info.json")
  meta = json.loads(info.read_text())
  assert meta["fileFormat"] == "array_record"
  meta["fileFormat"] = "tfrecord"
  info.write_text(json.dumps(meta))
  with pytest.raises(UserError, match=r"stored as tfrecord.*--file_format=array_record") as error:
    sources.TfdsSource("tl_jax_tiny_text", str(copy), "train", "validation", "text").check()
  assert str(copy) in str(error.value)
