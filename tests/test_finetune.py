"""Finetuning end to end: pretraining pays off on the synthetic task; bad input is one sentence."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from test_cli_errors import assert_one_sentence, snapshot

from tl_jax import config as config_lib
from tl_jax import tasks
from tl_jax.tasks import classification, compression
from tl_jax.parallel.mesh import make_mesh
from tl_jax.parallel.rules import rules_for
from tl_jax.tasks.workdir import Workdir, read_jsonl
from tl_jax.train import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]

# The in-process runs share compiled programs: the two finetunings of one model, a resumed
# run and its first session.
pytestmark = pytest.mark.usefixtures("in_process_compile_cache")


def pretrain_tiny(workdir: str, steps: int) -> None:
  c = config_lib.load_preset("configs/mlm.py:tiny")
  c.train.max_steps = steps
  c.eval.every_steps = steps
  c.checkpoint.every_steps = steps
  c.parallel.data = 1
  save = lambda: config_lib.save(c, os.path.join(workdir, "config.json"))  # as the CLI does
  assert tasks.run(c, workdir, jax.devices()[:1], on_ready=save) == 0


def finetune_config(init: str, **train) -> config_lib.FinetuneConfig:
  c = config_lib.load_preset("configs/glue.py:synthetic")
  c.init.workdir = init
  c = config_lib.inherit_init_model(c, {})
  c.parallel.data = 1
  c.data.length_buckets = 2  # two compiled lengths rather than eight: CI's time
  for key, value in train.items():
    setattr(c.train, key, value)
  return c


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrained"))
  pretrain_tiny(workdir, 600)
  return workdir


def final_accuracy(workdir: str) -> float:
  return [line for line in metrics.read(workdir) if "accuracy" in line][-1]["accuracy"]


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
  """{"pretrained", "scratch"}: the synthetic sentiment task finetuned from the pretrained
  encoder and from random weights (375 steps each)."""
  root = tmp_path_factory.mktemp("finetuned")
  workdirs = {}
  for name, from_scratch in (("pretrained", False), ("scratch", True)):
    c = finetune_config(pretrained)
    c.init.from_scratch = from_scratch
    # Padded, as when the accuracies below were measured; with two length buckets the batches
    # differ and one run measured 0.635 against 0.611 (2026-12-02), a margin under 0.03.
    c.data.length_buckets = 0
    workdirs[name] = str(root / name)
    os.makedirs(workdirs[name])
    config_lib.save(c, os.path.join(workdirs[name], "config.json"))  # as the CLI does
    assert tasks.run(c, workdirs[name], jax.devices()[:1]) == 0
  return workdirs


@pytest.mark.slow
def test_pretrained_encoder_beats_random_init(finetuned):
  accuracy = {}
  for name, workdir in finetuned.items():
    accuracy[name] = final_accuracy(workdir)
    best = json.loads(pathlib.Path(workdir, "best", "best.json").read_text())
    assert best["metric"] == "accuracy" and best["accuracy"] >= accuracy[name] - 1e-9
  # The documents' tone ties adjectives of one polarity together; from scratch the 4000
  # labelled sentences alone teach it. Measured on 2-core CPUs: 0.706 against 0.609
  # (2026-11-24), 0.648 against 0.609 (AMD EPYC, 2026-12-02, the same code before and after the
  # Task redesign, and the same pretrained encoder to the bit): XLA's CPU code differs between
  # processors, and 375 steps at learning rate 1e-3 amplify that in the pretrained run.
  assert accuracy["pretrained"] > 0.63, accuracy
  assert accuracy["pretrained"] - accuracy["scratch"] > 0.03, accuracy


@pytest.mark.slow
def test_gptq_at_three_bits_loses_no_more_than_rounding(finetuned, tmp_path):
  """GPTQ against round to nearest on the finetuned classifier, at 3 bits per channel, alone
  and after 50% pruning; GPTQ calibrated on 8 of its own training batches, padding left out."""
  workdir = str(tmp_path / "gptq")
  shutil.copytree(finetuned["pretrained"], workdir)
  config = config_lib.load_preset("configs/compress.py:quick")
  config.quant_methods, config.bits = "uniform,gptq", "3"
  config.sparsities, config.combined_sparsities, config.combined_bits = "", "0.5", "3"
  config.calibration_batches = 8
  config.export = True
  config_lib.validate(config)
  assert compression.run(config, workdir) == 0
  lines = {l["point"]: l for l in read_jsonl(os.path.join(workdir, "compress.jsonl"))}
  gptq, rtn = lines["gptq3b-sym-channel"], lines["uniform3b-sym-channel"]
  # Measured (AMD EPYC, 2026-12-02): accuracy 0.647 (drop 0.001) against 0.645 (drop 0.003),
  # KL 0.00534 against 0.00543; pruned to 50% first: 0.646 against 0.643, KL 0.0057 against
  # 0.0123. (At 2 bits rounding did better here: 0.629 against 0.624.) The embeddings, 38% of
  # the weights, are looked up rather than multiplied and are rounded to nearest in both.
  # Unpruned, the two KLs are level within what training noise moves: after the GELU's custom
  # gradient (2026-12-05; float32 rounding differs, so the 375 steps end elsewhere) the same
  # test measured accuracy 0.672 against 0.668 but KL 0.00518 against 0.00488 (1.06x), and
  # pruned first 0.00645 against 0.0135. The pruned case is where GPTQ's lead is clear.
  # Level, not better: jax 0.11.2 (CPU, 2026-12-08) measured a drop of 0.010 against rounding's
  # 0.009, one example in the thousand; so GPTQ may lose at most half a point more.
  assert gptq["drop"] <= rtn["drop"] + 0.005
  assert gptq["kl"] < 1.15 * rtn["kl"]
  pruned_gptq = lines["prune0.5-global+gptq3b-sym-channel"]
  pruned_rtn = lines["prune0.5-global+uniform3b-sym-channel"]
  assert pruned_gptq["kl"] < 0.75 * pruned_rtn["kl"]  # GPTQ also repairs the pruning error
  assert pruned_gptq["achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
  assert gptq["memory_bytes"] == rtn["memory_bytes"]  # the same storage: only the codes differ
  assert gptq["export"]["accuracy"] == gptq["accuracy"]
  calibration = gptq["calibration"]
  assert calibration["batches"] == 8 and calibration["positions"] < 8 * 32 * 64  # no padding
  assert calibration["round_to_nearest"] == ["encoder/position_embed/embedding",
                                             "token_embed/embedding"]


def run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "tl_jax.cli", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_finetune_from_scratch_needs_only_the_inits_shape_and_tokenizer(pretrained, tmp_path):
  """The no-pretraining baseline takes the --init's model shape and tokenizer, not its weights
  or corpus: from the 600-step encoder and from one step of the same preset on a smaller corpus
  it trains to the same numbers. So a GPU lease can run the baseline without the pretraining
  (docs/results/h200_study/README.md, "Not run yet")."""
  shape = str(tmp_path / "shape")
  c = config_lib.load_preset("configs/mlm.py:tiny")
  c.train.max_steps, c.eval.every_steps, c.parallel.data = 1, 0, 1
  c.data.max_train_tokens = 20_000
  os.makedirs(shape)
  config_lib.save(c, os.path.join(shape, "config.json"))  # as the CLI does
  assert tasks.run(c, shape, jax.devices()[:1]) == 0
  lines = {}
  for name, init in (("pretrained", pretrained), ("one step", shape)):
    f = finetune_config(init, max_steps=20, epochs=0)
    f.init.from_scratch = True
    f.eval.every_steps = 10
    workdir = str(tmp_path / name)
    os.makedirs(workdir)
    config_lib.save(f, os.path.join(workdir, "config.json"))
    assert tasks.run(f, workdir, jax.devices()[:1]) == 0
    lines[name] = [{k: v for k, v in line.items() if k in ("step", "loss", "accuracy", "eval_loss")}
                   for line in metrics.read(workdir) if "loss" in line or "accuracy" in line]
  assert any("accuracy" in line for line in lines["one step"])
  assert lines["one step"] == lines["pretrained"]


def write_tsv(path: pathlib.Path, rows: list[str]) -> str:
  path.write_text("".join(row + "\n" for row in rows))
  return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing-column", "unknown-label", "synthetic-seed", "wikitext-init",
                                  "tokenizer-size"])
def test_bad_finetuning_input_is_one_sentence(pretrained, tmp_path, case):
  train = write_tsv(tmp_path / "train.tsv",
                    ["label\tsentence"] + [f"{i % 2}\tthe word number {i}" for i in range(40)])
  args = ["finetune", f"--workdir={tmp_path / 'w'}", f"--init={pretrained}"]
  if case == "missing-column":
    expect = ("text", "sentence")
    args += ["--config=configs/glue.py:sst2", f"--config.data.train_files={train}",
             "--config.data.text_field=text"]
  elif case == "unknown-label":
    bad = write_tsv(tmp_path / "bad.tsv", ["label\tsentence", "0\tfine", "7\tnot fine"])
    expect = ("bad.tsv:3", "7")
    args += ["--config=configs/glue.py:sst2", f"--config.data.train_files={bad}"]
  elif case == "synthetic-seed":
    expect = ("seed", "data.synthetic_seed")
    args += ["--config=configs/glue.py:synthetic", "--config.data.synthetic_seed=5"]
  else:  # an init pretrained on other text than the task's, or with another vocabulary
    other = tmp_path / "other-init"
    other.mkdir()
    saved = config_lib.load(os.path.join(pretrained, "config.json"))
    if case == "wikitext-init":
      saved.data.source = "text"
      expect = ("data.source=text", "synthetic")
    else:
      saved.data.vocab_size = 1999
      expect = ("2000 pieces", "data.vocab_size=1999")
    config_lib.save(saved, str(other / "config.json"))
    os.symlink(os.path.join(pretrained, "tokenizer"), other / "tokenizer")
    args = ["finetune", f"--workdir={tmp_path / 'w'}", f"--init={other}",
            "--config=configs/glue.py:synthetic"]
  before = snapshot(pathlib.Path(pretrained))
  assert_one_sentence(run_cli(*args), *expect)
  assert not (tmp_path / "w" / "config.json").exists()
  assert snapshot(pathlib.Path(pretrained)) == before


def test_model_fields_of_the_init_cannot_change(pretrained, tmp_path):
  result = run_cli("finetune", "--config=configs/glue.py:synthetic", f"--init={pretrained}",
                   f"--workdir={tmp_path / 'w'}", "--config.model.num_layers=7")
  assert_one_sentence(result, "model.num_layers", "--init")
  result = run_cli("finetune", "--config=configs/glue.py:synthetic", f"--workdir={tmp_path / 'w'}")
  assert_one_sentence(result, "--init")


def test_steps_and_learning_rate_follow_the_recipe():
  c = config_lib.FinetuneConfig()
  c.model.d_model = 768
  c.train.epochs, c.train.batch_size, c.train.warmup_fraction = 2.0, 32, 0.06
  resolved = classification.resolve_steps(c, 1000)
  assert resolved.train.max_steps == 63 and resolved.train.warmup_steps == 4
  assert resolved.train.learning_rate == pytest.approx(2e-5)
  assert c.train.learning_rate == 0.0  # the config itself keeps "by width"
  assert classification.default_learning_rate(128) == pytest.approx(1e-4)
  assert classification.default_learning_rate(1024) == pytest.approx(1.5e-5)


@pytest.mark.parametrize("count", [-1, 33])
def test_length_buckets_out_of_range_is_one_sentence(count):
  c = config_lib.FinetuneConfig()
  c.init.workdir = "init"
  c.data.length_buckets = count
  with pytest.raises(config_lib.UserError, match=f"data.length_buckets={count} is outside 0..32"):
    config_lib.validate(c)


def test_eval_batches_cover_every_row_once():
  n, seq = 70, 8
  rows = {"tokens": np.ones((n, seq), np.int32), "types": np.zeros((n, seq), np.int32),
          "label": np.arange(n, dtype=np.int32) % 3}
  filler = np.zeros(seq, np.int32)
  batches = classification.eval_batches(rows, 32, filler)
  assert [len(b["label"]) for b in batches] == [32, 32, 32]
  assert sum(float(b["weight"].sum()) for b in batches) == n
  labels = np.concatenate([b["label"][b["weight"] > 0] for b in batches])
  np.testing.assert_array_equal(labels, rows["label"])


def _rows_of_lengths(lengths, seq_len, pad_id=1):
  tokens = np.full((len(lengths), seq_len), pad_id, np.int32)
  for i, length in enumerate(lengths):
    tokens[i, :length] = 5 + (np.arange(length) * 7 + i) % 90
  return {"tokens": tokens, "types": np.zeros_like(tokens),
          "label": np.arange(len(lengths), dtype=np.int32) % 2}


def test_bucketed_eval_batches_cover_every_row_once_in_a_few_lengths():
  lengths = np.random.default_rng(0).integers(2, 40, 203)
  rows = _rows_of_lengths(lengths, 48)
  filler = np.full(48, 1, np.int32)
  filler[:2] = 0, 2
  batches = classification.eval_batches(rows, 16, filler, length_buckets=3, pad_id=1)
  widths = [b["tokens"].shape[1] for b in batches]
  assert len(batches) == 13 and len(set(widths)) <= 3 and widths == sorted(widths)
  assert sum(b["tokens"].size for b in batches) < 0.7 * 13 * 16 * 48
  real = [b["tokens"][b["weight"] > 0] for b in batches]
  assert sum(len(r) for r in real) == 203
  # Every row exactly once, whole (padding only cut), in length order.
  order = classification.length_order(rows["tokens"], 1)
  np.testing.assert_array_equal(np.concatenate([b["label"][b["weight"] > 0] for b in batches]),
                                rows["label"][order])
  for r, expected in zip(real, np.split(rows["tokens"][order], range(16, 203, 16))):
    np.testing.assert_array_equal(r, expected[:, :r.shape[1]])
    assert (expected[:, r.shape[1]:] == 1).all()
  assert (batches[-1]["tokens"][batches[-1]["weight"] == 0][:, :2] == [0, 2]).all()


def test_bucketed_and_padded_rows_give_the_same_logits():
  """Padding is masked (attention lengths, first or masked-mean pooling), so cutting it off
  changes the logits by float rounding only (float32 here; bfloat16 rounds more)."""
  from tl_jax.config import ModelConfig
  from tl_jax.models.classifier import Classifier
  cfg = ModelConfig(num_layers=1, d_model=32, num_heads=2, d_ff=64, max_len=64, dropout=0.0,
                    dtype="float32")
  lengths = np.random.default_rng(1).integers(2, 30, 24)
  rows = _rows_of_lengths(lengths, 32)
  batches = classification.eval_batches(rows, 12, np.full(32, 1, np.int32), length_buckets=2, pad_id=1)
  assert [b["tokens"].shape[1] for b in batches] == [16, 28]
  order = classification.length_order(rows["tokens"], 1)
  for pooling in ("first", "mean"):
    model = Classifier(cfg, 128, 2, pooling)
    params = model.init(jax.random.key(0), rows["tokens"][:1])["params"]
    run = jax.jit(lambda p, b: classification.logits(model, p, b, 1))
    padded = np.asarray(run(params, rows))[order]
    bucketed = np.concatenate([np.asarray(run(params, b)) for b in batches])
    np.testing.assert_allclose(bucketed, padded, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(bucketed.argmax(-1), padded.argmax(-1))


@pytest.mark.slow
def test_finetuning_on_a_2x2x2_mesh_matches_one_device_and_resumes_bitwise(pretrained, tmp_path,
                                                                          capsys):
  """The head's `classes` and the pretrained encoder restore onto data x fsdp x tensor, with
  length-bucketed batches split over data x fsdp; a run that lost its last checkpoint resumes
  from the one before (the loader's position is the step) to the same bits."""
  results, configs = {}, {}
  for name, devices, shape in (("one", jax.devices()[:1], (1, 1, 1)), ("mesh", jax.devices(), (2, 2, 2))):
    c = finetune_config(pretrained)
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = shape
    c.train.epochs, c.train.max_steps = 0, 20
    c.data.max_train_examples, c.data.max_eval_examples = 640, 256
    c.eval.every_steps = 20
    c.checkpoint.every_steps = 10
    os.makedirs(tmp_path / name)
    config_lib.save(c, str(tmp_path / name / "config.json"))  # as the CLI does
    assert tasks.run(c, str(tmp_path / name), devices) == 0
    results[name] = [l for l in metrics.read(str(tmp_path / name)) if "accuracy" in l][-1]
    configs[name] = c
  assert "length buckets: training batches cut to" in capsys.readouterr().out
  assert results["mesh"]["eval_loss"] == pytest.approx(results["one"]["eval_loss"], rel=2e-4)
  assert results["mesh"]["accuracy"] == pytest.approx(results["one"]["accuracy"], abs=0.01)

  one = str(tmp_path / "one")
  mesh, rules = make_mesh(configs["one"], jax.devices()[:1]), rules_for("default")
  params = lambda: jax.tree.leaves(Workdir.open(one).restore_params("latest", mesh, rules)[0])
  finished = params()
  shutil.rmtree(os.path.join(one, "checkpoints", "20"))
  assert tasks.run(configs["one"], one, jax.devices()[:1]) == 0
  assert "resumed from step 10" in capsys.readouterr().out
  for a, b in zip(finished, params()):
    np.testing.assert_array_equal(a, b)
  assert [l for l in metrics.read(one) if "accuracy" in l][-1]["eval_loss"] == results["one"]["eval_loss"]
