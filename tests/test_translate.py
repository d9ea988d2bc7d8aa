"""Translation end to end: BLEU rises on the synthetic task; scoring and bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tl_jax import config as config_lib
from tl_jax.data.pairs import pack, padding_fraction
from tl_jax.models import decoding
from tl_jax import tasks
from tl_jax.compress import grid
from tl_jax.tasks import compression, scoring, translation
from tl_jax.tasks.workdir import read_jsonl
from tl_jax.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# translate-file, BLEU evals and the compression grid compile the same decoding programs again.
pytestmark = pytest.mark.usefixtures("in_process_compile_cache")


def test_sacrebleu_of_a_reference_against_itself_is_100():
  refs = ["le chat est sur le tapis .", "un homme fait du vélo dans la rue ."]
  score, signature = translation.bleu_score(refs, refs)
  assert score == pytest.approx(100.0)
  assert "tok:13a" in signature
  assert translation.bleu_score(["tout autre chose ici", "rien du tout"], refs)[0] < 10


def test_packing_keeps_every_pair_and_counts_padding():
  pairs = [([5, 6, 7], [8, 9]), ([10] * 4, [11] * 5), ([12], [13])]
  rows = pack(pairs, 8)
  assert rows["src"].shape == (2, 8)  # pairs 1-2 fill row 0 (4+5 > 8 would not fit), pair 3 joins row 1
  assert list(rows["src"][0, :4]) == [5, 6, 7, 2] and list(rows["src_segments"][0, :4]) == [1] * 4
  assert list(rows["tgt_in"][0, :3]) == [1, 8, 9] and list(rows["tgt_out"][0, :3]) == [8, 9, 2]
  assert list(rows["tgt_positions"][1]) == [0, 1, 2, 3, 4, 5, 0, 1]
  assert padding_fraction(rows) == pytest.approx(1 - (3 + 6 + 2) / 16)


def test_decode_batches_sort_sources_and_pad_each_batch_to_the_narrowest_width(monkeypatch):
  assert translation.source_widths(128) == (16, 32, 64, 128)
  assert translation.source_widths(100) == (16, 32, 64, 100)
  assert translation.source_widths(16) == (16,) and translation.source_widths(10) == (10,)
  monkeypatch.setattr(translation, "FIRST_SOURCE_WIDTH", 4)
  ids = [[5] * 10, [6] * 2, [7] * 40, [8] * 3, [9] * 100, [10] * 3]  # with </s>: 11 3 41 4 64 4
  batches = translation.decode_batches(ids, 2, 64)
  assert [i.tolist() for i, _ in batches] == [[1, 3], [5, 0], [2, 4]]  # ties in input order
  assert [w for _, w in batches] == [4, 16, 64]
  assert translation.decode_batches([], 2, 64) == []


@pytest.fixture(scope="module")
def translated(tmp_path_factory):
  """The `tiny` translator trained 400 steps on the synthetic task (about 3 minutes)."""
  c = config_lib.load_preset("configs/translate.py:tiny")
  c.train.max_steps = 400
  c.eval.every_steps = 400
  c.parallel.data = 1
  workdir = str(tmp_path_factory.mktemp("mt"))
  save_config = lambda: config_lib.save(c, os.path.join(workdir, "config.json"))  # as the CLI does
  assert tasks.run(c, workdir, jax.devices()[:1], on_ready=save_config) == 0
  return c, workdir


@pytest.mark.slow
def test_tiny_synthetic_translation_bleu_rises(translated, tmp_path, monkeypatch):
  c, workdir = translated
  evals = [l for l in metrics.read(workdir) if "bleu" in l]
  assert evals[0]["bleu"] < 5.0 and evals[-1]["bleu"] > 25.0, evals
  assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 3.0
  with open(os.path.join(workdir, "decodes", f"step_{evals[-1]['step']}.txt")) as f:
    assert len(f.read().splitlines()) == c.eval.bleu_pairs

  # translate-file with the trained run reproduces that quality on held-out test pairs.
  from tl_jax.data.synthetic import SyntheticLanguage
  language = SyntheticLanguage(c.data.synthetic_seed, c.data.synthetic_words)
  pairs = [language.pair(i, "test") for i in range(60)]
  (tmp_path / "in.txt").write_text("".join(src + "\n" for src, _ in pairs))
  assert translation.translate_file(workdir, str(tmp_path / "in.txt"), str(tmp_path / "out.txt")) == 0
  hypotheses = (tmp_path / "out.txt").read_text().splitlines()
  assert len(hypotheses) == len(pairs)
  assert translation.bleu_score(hypotheses, [tgt for _, tgt in pairs])[0] > 25.0

  # The search lengthens its key/value cache as the outputs grow (stages 32, 64 here); stages from
  # 4 positions, or one cache of all 64, decode the same sentences.
  for first in (4, c.data.seq_len):
    monkeypatch.setattr(decoding, "FIRST_CACHE_STAGE", first)
    assert translation.translate_file(workdir, str(tmp_path / "in.txt"), str(tmp_path / "o.txt")) == 0
    assert (tmp_path / "o.txt").read_text().splitlines() == hypotheses, first
  monkeypatch.undo()
  # Sources padded to the narrowest width holding their batch's longest (8, 16 or 32 positions for
  # these, batches of 8) decode as sources padded to all 64 do (float32 on the CPU).
  from tl_jax.tasks.workdir import Workdir
  ids = Workdir.open(workdir, commands=("translate",)).tokenizer().encode([s for s, _ in pairs])
  for first in (8, c.data.seq_len):
    monkeypatch.setattr(translation, "FIRST_SOURCE_WIDTH", first)
    widths = {w for _, w in translation.decode_batches(ids, 8, c.data.seq_len)}
    assert len(widths) >= (2 if first == 8 else 1) and max(widths) <= c.data.seq_len, widths
    assert translation.translate_file(workdir, str(tmp_path / "in.txt"), str(tmp_path / "o.txt"),
                                      batch_size=8) == 0
    assert (tmp_path / "o.txt").read_text().splitlines() == hypotheses, first


@pytest.mark.slow
def test_compression_scores_only_the_loss_batches_holding_max_examples_pairs(translated):
  """`max_eval_examples` bounds the eval loss's batches as it bounds BLEU's pairs: the batches
  that hold the first so many pairs (packed in order), at least one; 0 keeps eval.num_batches."""
  c, workdir = translated
  from tl_jax.tasks.workdir import Workdir
  run = Workdir.open(workdir, commands=("translate",))
  mesh, rules = run.one_device()
  tokenizer = run.tokenizer()
  model = run.task.model(tokenizer.vocab_size)

  def scored(n):
    s = run.task.scoring(tokenizer, model, mesh, rules, compression=True, max_examples=n)
    batches = s.splits[s.primary]
    pairs = sum(len(np.unique(row[row > 0])) for b in batches for row in b["tgt_segments"])
    return len(batches), pairs, s.examples

  assert scored(0)[0] == c.eval.num_batches
  batches, per_batch, examples = scored(1)
  assert (batches, examples) == (1, 1)
  assert per_batch > 1  # a batch holds many packed pairs, so the next case spans two batches
  n = per_batch + 1
  batches, pairs, examples = scored(n)
  assert batches == 2 and pairs >= n and examples == n


@pytest.mark.slow
def test_translator_compresses_with_bleu_per_point_and_exact_exports(translated):
  """`tl-jax compress` on a translation workdir: the quick grid plus GPTQ, scored by BLEU."""
  c, workdir = translated
  config = config_lib.load_preset("configs/compress.py:quick")
  config.quant_methods = "uniform,gptq"
  config.calibration_batches = 4
  config.export = True
  config_lib.validate(config)
  scoring.TRACES.clear()
  assert compression.run(config, workdir) == 0
  lines = {l["point"]: l for l in read_jsonl(os.path.join(workdir, "compress.jsonl"))}
  assert list(lines) == [p.name for p in grid.points(config)]
  base = lines["float32"]
  best = json.load(open(os.path.join(workdir, "best", "best.json")))
  # The uncompressed point is the run's best-BLEU parameters, scored as the run scored them.
  assert base["metric"] == "bleu" and base["higher_is_better"] is True
  assert base["bleu"] == pytest.approx(best["bleu"]) and base["value"] == base["bleu"]
  assert base["memory_bytes"] == base["float32_bytes"] == 4 * base["model"]["params"]
  # Training logged the same count on its first line; the report labels the size by it.
  assert metrics.read(workdir)[0]["params"] == base["model"]["params"]
  assert base["model"]["decoder_layers"] == c.model.decoder_layers
  for name, line in lines.items():
    assert 0.0 <= line["bleu"] <= 100.0 and line["drop"] == pytest.approx(base["bleu"] - line["bleu"])
    assert line["eval_loss"] > 0 and line["kl"] >= 0.0
    exported = line["export"]
    assert exported["bleu"] == line["bleu"], name  # the packed file decodes to the same BLEU
    # Files hold the accounted bytes plus the container's metadata, a few hundred bytes a tensor.
    tensors = len(json.load(open(os.path.join(exported["directory"], "meta.json")))["meta"]["tensors"])
    overhead = exported["file_bytes"] - line["memory_bytes"]
    assert 0 <= overhead <= max(0.02 * line["memory_bytes"], 400 * tensors), (name, overhead, tensors)
  # 8 bits keeps the translations; 2 bits and 90% sparsity break them.
  assert lines["uniform8b-sym-channel"]["drop"] < 2.0
  assert lines["uniform2b-sym-channel"]["bleu"] < base["bleu"] - 10
  assert lines["prune0.9-global"]["kl"] > lines["prune0.5-global"]["kl"] > 0
  # GPTQ is stored as uniform is, and calibrated on the translator's own training rows.
  gptq, uniform = lines["gptq4b-sym-channel"], lines["uniform4b-sym-channel"]
  assert gptq["memory_bytes"] == uniform["memory_bytes"]
  assert gptq["calibration"]["batches"] == 4
  assert gptq["calibration"]["round_to_nearest"] == ["token_embed/embedding"]
  assert gptq["kl"] < uniform["kl"]
  # One compiled evaluation for the whole grid, exports included, and one search for each source
  # width the eval sentences use, all compiled before the first point.
  searches = scoring.TRACES["decode"]
  assert scoring.TRACES["evaluate"] == 1
  assert 1 <= searches <= len(translation.source_widths(c.data.seq_len))
  assert all(line["compiles"]["decode"] == searches for line in lines.values())


@pytest.mark.slow
def test_decode_eval_bench_decodes_the_bleu_eval_both_ways_alike(translated, tmp_path):
  """bench/decode_eval.py on the trained tiny translator: both batchings decode the same
  sentences (float32, greedy) to the same BLEU, and it reports the widths it used."""
  c, workdir = translated
  out = tmp_path / "decode_eval.json"
  result = subprocess.run([sys.executable, "-u", "bench/decode_eval.py", f"--workdir={workdir}",
                           "--pairs=60", "--batch=16", "--reps=1", f"--out={out}"], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(out.read_text())
  assert summary["sentences"] == 60 and summary["identical_fraction"] == 1.0
  assert summary["padded"]["bleu"] == summary["bucketed"]["bleu"] > 25.0
  assert set(map(int, summary["widths"])) <= set(translation.source_widths(c.data.seq_len))
  assert sum(summary["widths"].values()) == 4  # 60 sentences in batches of 16
  assert summary["bucketed"]["real_source_fraction"] > summary["padded"]["real_source_fraction"]


def run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "tl_jax.cli", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["mismatched-lines", "empty-line", "missing-side"])
def test_bad_parallel_text_is_one_sentence(tmp_path, case):
  (tmp_path / "train.en").write_text("a b\nc d\n" if case != "empty-line" else "a b\n\nc d\n")
  if case != "missing-side":
    (tmp_path / "train.fr").write_text("x y\n" if case == "mismatched-lines" else "x\ny\nz\n")
  result = run_cli("translate", "--config=configs/translate.py:tiny", f"--workdir={tmp_path / 'w'}",
                   "--config.data.source=text", f"--config.data.train_prefix={tmp_path / 'train'}",
                   f"--config.data.eval_prefix={tmp_path / 'train'}")
  lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith(("W0000", "WARNING: All"))]
  assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
  assert len(lines) == 1 and lines[0].startswith("tl-jax: error:"), result.stderr
  assert "train." in lines[0]
  assert not (tmp_path / "w" / "config.json").exists()


def test_config_for_the_other_command_is_refused(tmp_path):
  result = run_cli("translate", "--config=configs/mlm.py:tiny", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2 and "tl-jax pretrain" in result.stderr
