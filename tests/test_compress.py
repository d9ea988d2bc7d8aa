"""Compression end to end: grids over a finetuned model, pruning and QAT while finetuning,
packed exports that evaluate exactly like the compressed model, and bad input."""

import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from test_cli_errors import assert_one_sentence, snapshot
from test_finetune import finetune_config, pretrain_tiny, run_cli

from tl_jax import config as config_lib
from tl_jax import tasks
from tl_jax.compress import apply, grid
from tl_jax.compress.layout import model_layouts
from tl_jax.parallel.mesh import make_mesh
from tl_jax.parallel.rules import rules_for
from tl_jax.tasks import compression, scoring
from tl_jax.tasks.workdir import Workdir
from tl_jax.train.checkpoint import Checkpointer

# The in-process runs share compiled programs: the same evaluations in grid after grid.
pytestmark = pytest.mark.usefixtures("in_process_compile_cache")


def small_finetune(init: str, workdir: str, **sections) -> config_lib.FinetuneConfig:
  """A short synthetic finetuning run (100 steps, checkpoints every 20)."""
  c = finetune_config(init)
  c.data.max_train_examples = 1600
  c.data.max_eval_examples = 400
  c.train.epochs = 2
  c.eval.every_steps = 50
  c.checkpoint.every_steps = 20
  c.checkpoint.keep = 10
  for name, values in sections.items():
    for key, value in values.items():
      setattr(getattr(c, name), key, value)
  config_lib.validate(c)
  os.makedirs(workdir, exist_ok=True)
  config_lib.save(c, os.path.join(workdir, "config.json"))  # as the CLI does
  assert tasks.run(c, workdir, jax.devices()[:1]) == 0
  return c


def restored(workdir: str, which: str = "latest", step: int | None = None):
  """(flat parameters, layouts) of a workdir's newest checkpoint, one of `step`, or best/."""
  run = Workdir.open(workdir)
  run.config.parallel = config_lib.ParallelConfig(data=1)
  mesh, rules = make_mesh(run.config, jax.devices()[:1]), rules_for("default")
  if step is None:
    params, _ = run.restore_params(which, mesh, rules)
  else:
    params = run.restore_state(mesh, rules, step).params
  layouts = model_layouts(run.task.model(run.tokenizer().vocab_size), run.task.example_input())
  return apply.flat(params), layouts


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrained"))
  pretrain_tiny(workdir, 100)
  return workdir


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finetuned"))
  small_finetune(pretrained, workdir)
  return workdir


def read_lines(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, grid.RESULTS)) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_grid_compiles_once_and_exports_evaluate_exactly(finetuned):
  config = config_lib.load_preset("configs/compress.py:quick")
  config.quant_methods = "uniform,kmeans"
  config.bits = "8,2"
  config.sparsities = "0.5"
  config.combined_bits = "4"
  config.export = True
  config_lib.validate(config)
  grid.COMPILES.clear()
  scoring.TRACES.clear()
  assert compression.run(config, finetuned) == 0
  lines = {line["point"]: line for line in read_lines(finetuned)}
  points = grid.points(config)
  assert list(lines) == [p.name for p in points]
  # One evaluation per eval batch length (finetune_config's two length buckets) for the whole
  # grid; one transform per quantizer/pruner combination.
  assert lines["float32"]["compiles"]["evaluate"] == 2 == scoring.TRACES["evaluate"]
  assert grid.COMPILES["compress"] == len({p.static_key() for p in points})

  base = lines["float32"]
  assert base["memory_bytes"] == base["float32_bytes"] == 4 * base["model"]["params"]
  assert base["kl"] == 0.0
  for name, line in lines.items():
    exported = line["export"]
    # The packed file evaluates to the fake-quantized model's accuracy, exactly.
    assert exported["accuracy"] == line["accuracy"], name
    # Files hold the accounted bytes plus a fixed container overhead (orbax's metadata and
    # meta.json, about 300 bytes a tensor): within 2% once the model is a few hundred KB.
    overhead = exported["file_bytes"] - line["memory_bytes"]
    assert 0 <= overhead <= max(0.02 * line["memory_bytes"], 300 * 45), (name, overhead)
  for method in ("uniform", "kmeans"):
    b8, b2 = (next(l for n, l in lines.items() if n.startswith(f"{method}{b}b")) for b in (8, 2))
    assert b2["memory_bytes"] < b8["memory_bytes"] < base["memory_bytes"]
    assert b2["kl"] > b8["kl"] > 0
    assert all(b2["layer_error"][k] > b8["layer_error"][k] for k in b8["layer_error"])
  pruned = lines["prune0.5-global"]
  assert pruned["achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
  assert pruned["memory_bytes"] < base["memory_bytes"]
  combined = lines["prune0.5-global+uniform4b-sym-channel"]
  assert combined["memory_bytes"] < min(pruned["memory_bytes"], lines["uniform8b-sym-channel"]["memory_bytes"])
  assert set(base["weights"]["summary"]) == {"kurtosis", "outliers"}


@pytest.mark.slow
def test_pretraining_workdir_compresses_by_eval_loss(pretrained):
  """A masked-LM workdir is judged by its eval loss (lower is better), as it was trained."""
  config = config_lib.load_preset("configs/compress.py:quick")
  config.bits, config.sparsities, config.combined_sparsities = "8,2", "0.9", ""
  config.export = True
  config_lib.validate(config)
  assert compression.run(config, pretrained) == 0
  lines = {line["point"]: line for line in read_lines(pretrained)}
  base = lines["float32"]
  best = json.load(open(os.path.join(pretrained, "best", "best.json")))
  assert base["metric"] == "eval_loss" and base["higher_is_better"] is False
  assert base["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-6)
  assert base["eval_perplexity"] == pytest.approx(np.exp(base["eval_loss"]), rel=1e-6)
  assert base["memory_bytes"] == 4 * base["model"]["params"]
  two, eight = lines["uniform2b-sym-channel"], lines["uniform8b-sym-channel"]
  assert two["drop"] == pytest.approx(two["eval_loss"] - base["eval_loss"])
  assert two["drop"] > abs(eight["drop"]) and two["kl"] > eight["kl"] > 0
  # This 100-step model is near its unigram solution, so 90% pruning may not raise its loss
  # (on one CI machine it fell by 0.0008); it does move its predictions far more than 8 bits.
  assert lines["prune0.9-global"]["kl"] > 100 * eight["kl"]
  for line in lines.values():
    assert line["export"]["eval_loss"] == line["eval_loss"]


def _matrices(params: dict, layouts: dict, prune) -> dict:
  return {p: layouts[p].to_view(np.asarray(params[p])) for p in apply.prune_targets(layouts, prune)}


@pytest.mark.slow
def test_pruned_weights_stay_zero_while_finetuning(pretrained, tmp_path):
  workdir = str(tmp_path / "pruned")
  c = small_finetune(pretrained, workdir, prune=dict(method="magnitude", sparsity=0.6,
                                                     begin_fraction=0.1, end_fraction=0.5,
                                                     every_steps=10))
  params, layouts = restored(workdir, "latest")
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=10, async_save=False)
  steps = ckpt.all_steps()
  ckpt.close()
  assert max(steps) == 100 and 40 in steps
  final = _matrices(params, layouts, c.prune)
  zeros = sum(int(np.sum(w == 0)) for w in final.values())
  total = sum(w.size for w in final.values())
  assert zeros == round(0.6 * total)  # exact, global
  # Weights pruned by step 40 (sparsity still rising) are still zero at step 100.
  mid, _ = restored(workdir, step=40)
  mid_zero = {p: w == 0 for p, w in _matrices(mid, layouts, c.prune).items()}
  assert 0 < sum(int(z.sum()) for z in mid_zero.values()) < zeros
  for p, z in mid_zero.items():
    assert np.all(final[p][z] == 0), p
  # The best parameters are from the target sparsity on.
  best = json.loads((tmp_path / "pruned" / "best" / "best.json").read_text())
  assert best["step"] >= 50


@pytest.mark.slow
def test_two_of_four_pruning_while_finetuning(pretrained, tmp_path):
  workdir = str(tmp_path / "nm")
  c = small_finetune(pretrained, workdir, prune=dict(method="nm", begin_fraction=0.2))
  params, layouts = restored(workdir, "best")
  for path, w in _matrices(params, layouts, c.prune).items():
    s, i, o = w.shape
    kept = (w != 0).reshape(s, i // 4, 4, o).sum(axis=2)
    assert np.all(kept == 2), path


@pytest.mark.slow
def test_quantization_aware_finetuning_evaluates_the_quantized_model(pretrained, tmp_path):
  workdir = str(tmp_path / "qat")
  small_finetune(pretrained, workdir, qat=dict(method="uniform", bits=4))
  best = json.loads((tmp_path / "qat" / "best" / "best.json").read_text())
  config = config_lib.load_preset("configs/compress.py:quick")
  config.bits, config.sparsities, config.combined_sparsities = "4", "", ""
  config.analysis = False
  assert compression.run(config, workdir) == 0
  lines = {line["point"]: line for line in read_lines(workdir)}
  # The run's own evaluation was of the 4-bit model: the grid's 4-bit point reproduces it.
  assert lines["uniform4b-sym-channel"]["accuracy"] == best["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bits", "sparsity", "nm", "not-a-workdir", "unfinished"])
def test_bad_compression_input_is_one_sentence(pretrained, finetuned, tmp_path, case):
  workdir = finetuned
  args = ["--config=configs/compress.py:quick"]
  if case == "bits":
    args.append("--config.bits=8,9")
    expect = ("9 bits", "1 to 8")
  elif case == "sparsity":
    args.append("--config.sparsities=0.5,1.0")
    expect = ("sparsity 1.0", "[0, 1)")
  elif case == "nm":
    args += ["--config.nm=true", "--config.prune.m=3", "--config.prune.n=1"]
    expect = ("prune.m=3", "128 input features")
  elif case == "not-a-workdir":
    workdir = str(tmp_path / "empty")
    os.makedirs(workdir)
    expect = ("holds no config.json", "workdir")
  else:  # a finetuning run that never evaluated
    workdir = str(tmp_path / "unfinished")
    os.makedirs(workdir)
    config_lib.save(config_lib.load(os.path.join(finetuned, "config.json")),
                    os.path.join(workdir, "config.json"))
    expect = ("no best parameters", "checkpoint=latest")
  before = snapshot(pathlib.Path(workdir))
  assert_one_sentence(run_cli("compress", f"--workdir={workdir}", *args), *expect)
  assert snapshot(pathlib.Path(workdir)) == before


@pytest.mark.slow
def test_a_rerun_grid_resumes_and_adds_nothing_measured_already(finetuned, tmp_path, capsys):
  """A grid killed midway (its last line torn) continues where it stopped; a finished one
  re-run measures nothing again, unless its settings changed."""
  workdir = str(tmp_path / "resumed")
  shutil.copytree(finetuned, workdir)
  results = pathlib.Path(workdir) / grid.RESULTS
  results.unlink(missing_ok=True)
  config = config_lib.load_preset("configs/compress.py:quick")
  config.bits, config.sparsities, config.combined_sparsities = "8,2", "0.5", ""
  config.analysis = False
  config_lib.validate(config)
  names = [p.name for p in grid.points(config)]
  assert compression.run(config, workdir) == 0
  whole = results.read_text().splitlines(keepends=True)
  assert [json.loads(l)["point"] for l in whole] == names
  results.write_text("".join(whole[:2]) + whole[2][:40])  # killed while writing the third
  capsys.readouterr()
  assert compression.run(config, workdir) == 0
  out = capsys.readouterr().out
  assert "its last line was cut short" in out
  assert f"[2/{len(names)}] {names[1]}: measured already with these settings" in out
  again = results.read_text().splitlines(keepends=True)
  assert again[:2] == whole[:2]  # kept as measured, not appended again
  assert [json.loads(l)["point"] for l in again] == names  # float32 not appended twice
  assert [json.loads(l)["accuracy"] for l in again] == [json.loads(l)["accuracy"] for l in whole]
  assert compression.run(config, workdir) == 0
  assert results.read_text().splitlines(keepends=True) == again
  assert f"{len(names) - 1} measured earlier with the same settings were skipped" in capsys.readouterr().out
  config.max_eval_examples = 100  # another evaluation: every point measured again
  assert compression.run(config, workdir) == 0
  assert len(results.read_text().splitlines()) == 2 * len(names)
  config.rerun = True  # and again, by request
  assert compression.run(config, workdir) == 0
  assert len(results.read_text().splitlines()) == 3 * len(names)

