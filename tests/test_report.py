"""`tl-jax report` on hand-made workdirs: frontier, budgets, gap, and the whole report."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import namedtuple

import numpy as np
import pytest

from tl_jax.errors import UserError
from tl_jax.report import analysis, main
from tl_jax.report.runs import load_run, load_runs, size_labels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# Hand-made workdirs.


def _write_workdir(path, config: dict, metrics: list[dict] = (), points: list[dict] = (),
                   best: dict | None = None) -> str:
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  if metrics:
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
      f.writelines(json.dumps(m) + "\n" for m in metrics)
  if points:
    with open(os.path.join(path, "compress.jsonl"), "w") as f:
      f.writelines(json.dumps(p) + "\n" for p in points)
  if best:
    os.makedirs(os.path.join(path, "best"), exist_ok=True)
    with open(os.path.join(path, "best", "best.json"), "w") as f:
      json.dump(best, f)
  return str(path)


def _pretrain_config(layers: int, width: int, tokens: int = 1_000_000) -> dict:
  return {"task": "pretrain", "name": f"d{layers}w{width}",
          "model": {"num_layers": layers, "d_model": width, "decoder_layers": 0},
          "data": {"max_train_tokens": tokens}}


def _metrics(evals: list[tuple[int, float, float]], train: list[tuple[int, float, float]]) -> list[dict]:
  """Lines as the training loop writes them: (step, train_seconds, loss), step order."""
  lines = [{"step": s, "train_seconds": t, "elapsed_seconds": t + 5, "eval_loss": v,
            "eval_perplexity": math.exp(v)} for s, t, v in evals]
  lines += [{"step": s, "train_seconds": t, "elapsed_seconds": t + 5, "loss": v,
             "learning_rate": 1e-3, "grad_norm": 1.0, "tokens_per_second": 1e4, "mfu": None}
            for s, t, v in train]
  # Train line before the eval line of the same step, as the loop writes them.
  return sorted(lines, key=lambda m: (m["step"], "eval_loss" in m))


def _point(name: str, layers: int, width: int, acc: float, base: float, mem: float, *,
           bits: int = 32, sparsity: float = 0.0, quant: str | None = None,
           prune: str | None = None, kurtosis: float = 0.1) -> dict:
  """One compress.jsonl line with the fields tl_jax/compress/grid.py run() writes."""
  record = {"point": name, "bits": bits, "sparsity": sparsity,
            "quant": ({"method": quant, "bits": bits, "symmetric": True, "granularity": "channel",
                       "group_size": 128} if quant else None),
            "prune": ({"method": prune, "sparsity": sparsity, "scope": "global", "n": 2, "m": 4,
                       "targets": "attention,ffn"} if prune else None),
            "workdir": "/x", "split": "eval",
            "model": {"name": "synthetic", "num_layers": layers, "d_model": width,
                      "params": 12 * layers * width ** 2},
            "eval_loss": 0.5, "accuracy": acc, "kl": 0.0, "eval_examples": 1000,
            "measured_as": {"examples": 1000},
            "accuracy_drop": base - acc, "memory_bytes": int(mem * 2 ** 20),
            "float32_bytes": int(8 * 2 ** 20), "memory_ratio": mem / 8}
  if prune:
    record["achieved_sparsity"] = sparsity
  error = 0.0 if name == "float32" else 0.1 * (32 / bits if quant else 1)
  record["layer_error"] = {f"encoder/layer_{i}/{m}/kernel": error * (1 + 0.1 * i)
                           for i in range(layers) for m in ("attention/query", "mlp/wi")}
  record["layer_error"]["token_embed/embedding"] = error
  record["weights"] = {"summary": {"kurtosis": kurtosis, "outliers": 0.003}, "layers": {}}
  return record


def _grid(layers: int, width: int, base: float, scale: float, kurtosis: float) -> list[dict]:
  out = []
  for name, acc, mem, kw in (
      ("float32", base, 8 * scale, {}),
      ("uniform8b-sym-channel", base - 0.001, 2 * scale, {"bits": 8, "quant": "uniform"}),
      ("uniform3b-sym-channel", base - 0.02, 0.8 * scale, {"bits": 3, "quant": "uniform"}),
      ("uniform2b-sym-channel", base - 0.08, 0.55 * scale, {"bits": 2, "quant": "uniform"}),
      ("prune0.5-global", base - 0.005, 5 * scale, {"sparsity": 0.5, "prune": "magnitude"}),
      ("prune0.9-global", base - 0.2, 2.5 * scale, {"sparsity": 0.9, "prune": "magnitude"}),
      ("prune0.5-global+uniform4b-sym-channel", base - 0.01, 0.9 * scale,
       {"bits": 4, "quant": "uniform", "sparsity": 0.5, "prune": "magnitude"})):
    out.append(_point(name, layers, width, acc, base, mem, kurtosis=kurtosis, **kw))
  return out


# ---------------------------------------------------------------------------
# Pareto frontier.


def test_pareto_frontier_ties_and_dominated_points():
  P = namedtuple("P", "name memory_bytes score")
  points = [P("a", 1, 0.80), P("b", 2, 0.85), P("c", 2, 0.85),  # b, c: equal: both stay
            P("d", 2, 0.84),  # same memory as b, less accurate: dominated
            P("e", 3, 0.85),  # as accurate as b, more memory: dominated
            P("f", 4, 0.90), P("g", 5, 0.70), P("h", 0.5, 0.60),
            P("i", 4, 0.90),  # equal to f: stays
            P("j", 0.5, 0.55)]  # same memory as h, less accurate: dominated
  assert [p.name for p in analysis.pareto_frontier(points)] == ["h", "a", "b", "c", "f", "i"]
  assert analysis.pareto_frontier([]) == []
  # Custom accessors (dicts), and a single point is its own frontier.
  only = [{"m": 3, "acc": 0.5}]
  assert analysis.pareto_frontier(only, memory=lambda p: p["m"], score=lambda p: p["acc"]) == only


def test_a_loss_is_better_lower_on_the_frontier_and_in_budgets():
  """Grids of a masked LM record eval loss (lower is better): the same frontier and advice,
  read the other way round."""
  make = lambda size, point, loss, mib: analysis.Compressed(
      size, "r", point, 4, 0.0, loss, None, mib * 2 ** 20, "uniform sym channel", None,
      metric="eval_loss", higher_is_better=False)
  points = [make("big", "4b", 2.0, 10), make("big", "8b", 1.9, 20), make("small", "8b", 2.3, 5),
            make("small", "32b", 2.2, 9), make("small", "2b", 2.6, 4)]
  assert [p.point for p in analysis.pareto_frontier(points)] == ["2b", "8b", "32b", "4b", "8b"]
  assert [p.size for p in analysis.pareto_frontier(points)][-1] == "big"
  ans = analysis.best_within_memory(points, 10)
  assert (ans.best.size, ans.best.point) == ("big", "4b")
  assert (ans.runner_up.size, ans.runner_up.point) == ("small", "32b")
  assert ans.margin == pytest.approx(0.2)  # better by 0.2 nats: margins stay positive
  old = {"point": "x", "accuracy": 0.8, "accuracy_drop": 0.01}  # lines from before `value`
  assert analysis.point_value(old) == 0.8 and analysis.point_drop(old) == 0.01


def test_best_within_memory_takes_runner_up_of_another_size():
  make = lambda size, point, acc, mib: analysis.Compressed(size, "r", point, 4, 0.0, acc, 0.0,
                                                           mib * 2 ** 20, "uniform sym channel", None)
  points = [make("big", "4b", 0.90, 10), make("big", "8b", 0.91, 20), make("small", "8b", 0.88, 5),
            make("small", "32b", 0.89, 9)]
  ans = analysis.best_within_memory(points, 10)
  assert (ans.best.size, ans.best.point) == ("big", "4b")
  assert (ans.runner_up.size, ans.runner_up.point) == ("small", "32b")
  assert ans.margin == pytest.approx(0.01)
  ans = analysis.best_within_memory(points, 6)
  assert ans.best.point == "8b" and ans.best.size == "small" and ans.runner_up is None
  assert analysis.best_within_memory(points, 1).best is None


# ---------------------------------------------------------------------------
# Curves aligned by training seconds; best at a budget.


def test_best_at_budget_reads_last_eval_at_or_before_budget(tmp_path):
  # Run a evaluates every 100 steps (10 s apart), run b every 50 steps (6 s apart):
  # by line index they would pair up wrongly.
  a = load_run(_write_workdir(tmp_path / "a", _pretrain_config(4, 128), _metrics(
      [(0, 0.0, 8.0), (100, 10.0, 5.0), (200, 20.0, 4.0)],
      [(50, 5.0, 6.0), (100, 10.0, 5.2), (150, 15.0, 4.6), (200, 20.0, 4.1)])), "a")
  b = load_run(_write_workdir(tmp_path / "b", _pretrain_config(2, 64), _metrics(
      [(0, 0.0, 8.0), (50, 6.0, 6.0), (100, 12.0, 4.5), (150, 18.0, 3.9)],
      [(50, 6.0, 6.1), (100, 12.0, 4.6), (150, 18.0, 4.0)])), "b")
  c = load_run(_write_workdir(tmp_path / "c", _pretrain_config(1, 32), _metrics(
      [(0, 0.0, 8.0), (10, 3.0, 7.0)], [(10, 3.0, 7.1)])), "c")
  curves = [analysis.eval_curve(r, "eval_loss", r.name) for r in (a, b, c)]
  assert curves[1].seconds == (0.0, 6.0, 12.0, 18.0) and curves[1].steps == (0, 50, 100, 150)

  ans = analysis.best_at_budget(curves, 15.0)
  assert [(r.label, r.value, r.step) for r in ans.ranking] == [("b", 4.5, 100), ("a", 5.0, 100)]
  assert ans.margin == pytest.approx(0.5)
  assert ans.not_reached == ("c",)

  # A budget exactly at an eval includes it.
  ans = analysis.best_at_budget(curves, 12.0)
  assert ans.best.label == "b" and ans.best.seconds == 12.0 and ans.runner_up.value == 5.0

  # Run b stopped at 18 s: at 20 s it is not reached, never extrapolated.
  ans = analysis.best_at_budget(curves, 20.0)
  assert ans.best.label == "a" and ans.best.value == 4.0
  assert ans.runner_up is None and ans.margin is None
  assert set(ans.not_reached) == {"b", "c"}

  # Higher is better (BLEU-like): the ranking flips.
  ans = analysis.best_at_budget(curves, 15.0, higher_is_better=True)
  assert ans.best.label == "a" and ans.margin == pytest.approx(0.5)

  # Default budgets never pass the shortest run (c, 3 s); without c, a and b span 10-18 s.
  assert analysis.default_budgets(curves) == [3.0]
  budgets = analysis.default_budgets(curves[:2])
  assert budgets[0] == 10.0 and budgets[-1] == 18.0 and budgets == sorted(budgets)


def test_the_demos_budget_rows_name_the_right_winner(tmp_path):
  """The demo's report once named 4x128 best at 60.05 s (it overshot its 60 s budget by 0.05 s;
  the others, stopped at 60.0 s, were "not reached") and, at 10.07 s, set 2x128's step-0 eval
  of the untrained model (7.66) against it as the runner-up."""
  def run(name, layers, width, evals, stop):
    config = {**_pretrain_config(layers, width), "train": {"max_train_seconds": 60}}
    return load_run(_write_workdir(tmp_path / name, config, _metrics(
        [(0, 0.0, 7.66)] + evals, [(stop[0], stop[1], evals[-1][2] + 0.1)])), name)
  runs = [run("2x64", 2, 64, [(400, 10.2, 5.60), (2400, 60.0, 4.700)], (2400, 60.0)),
          run("2x128", 2, 128, [(300, 10.5, 5.70), (1800, 60.0, 4.763)], (1800, 60.0)),
          run("4x128", 4, 128, [(100, 10.07, 4.79), (600, 60.05, 4.777)], (600, 60.05))]
  curves = [analysis.eval_curve(r, "eval_loss", r.name) for r in runs]
  budgets = analysis.default_budgets(curves)
  assert budgets[0] == 10.5 and budgets[-1] == 60.0  # every run has a reading at each
  top = analysis.best_at_budget(curves, 60.0)
  assert [(r.label, r.value) for r in top.ranking] == [("2x64", 4.700), ("2x128", 4.763),
                                                       ("4x128", 4.777)]
  assert top.not_reached == ()
  # 60.05 s: the runs stopped at 60.0 s are within a step of it, so they count there too.
  assert analysis.best_at_budget(curves, 60.05).best.label == "2x64"
  early = analysis.best_at_budget(curves, 10.07)
  assert [(r.label, r.step) for r in early.ranking] == [("4x128", 100)]  # no step-0 reading
  assert early.no_eval == ("2x64", "2x128") and early.margin is None


def test_an_eval_timed_for_a_budget_reads_at_it_though_a_few_steps_late(tmp_path):
  """The loop syncs on the step its pace predicts for a timed eval, which lands a few steps past
  the mark (on an H100, 10.08 s for a 10 s mark at 5 ms a step): that eval is the budget's
  reading. One 2% past the budget is not."""
  run = load_run(_write_workdir(tmp_path / "r", _pretrain_config(2, 64), _metrics(
      [(0, 0.0, 8.0), (1700, 10.08, 2.3), (3800, 20.4, 1.8)],
      [(3800, 20.4, 1.9)])), "r")
  curve = analysis.eval_curve(run, "eval_loss", "r")
  assert curve.step_seconds == pytest.approx(20.4 / 3800)  # 15 steps are 0.08 s
  assert analysis.value_at(curve, 10.0).step == 1700
  assert analysis.value_at(curve, 20.0).step == 1700
  assert analysis.value_at(curve, 20.2).step == 3800


def test_runs_of_different_devices_are_named_and_their_budget_rows_flagged(tmp_path):
  """The H200 study's second part ran on an H100 (2026-12-06): a report over both parts would
  have set seconds of one device beside seconds of the other without a word."""
  def run(name, layers, devices):
    lines = _metrics([(0, 0.0, 8.0), (100, 10.0, 5.0 - layers / 10)], [(100, 10.0, 5.0)])
    for line, session in zip((lines[0], lines[-1]), devices):  # a second session resumed at 100
      line["devices"] = session
    return _write_workdir(tmp_path / "runs" / name, _pretrain_config(layers, 64), lines)
  h100, h200 = "1 x NVIDIA H100 80GB HBM3", "1 x NVIDIA H200"
  run("a", 2, [h100]), run("b", 4, [h100, h100])
  assert load_run(str(tmp_path / "runs" / "b"), "b").devices == (h100,)
  assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "one")]) == 0
  text = (tmp_path / "one" / "report.md").read_text()
  assert f"Every run trained on {h100}" in text and "different devices" not in text

  run("c", 6, [h200])
  run("d", 8, [h100, h200])  # resumed on another kind
  assert load_run(str(tmp_path / "runs" / "d"), "d").devices == (h100, h200)
  assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "two")]) == 0
  text = (tmp_path / "two" / "report.md").read_text()
  assert (f"**The runs trained on different devices** (metrics.jsonl's `devices`; *not recorded* "
          f"before 2026-12-06): {h100}: a, b; {h100} then {h200}: d; {h200}: c.") in text
  budget = text.split("### Training budgets")[1]
  assert "**These rows set runs of different devices side by side**" in budget


def test_budget_without_an_eval_yet_is_not_not_reached(tmp_path):
  run = load_run(_write_workdir(tmp_path / "r", _pretrain_config(2, 64), _metrics(
      [(100, 10.0, 5.0)], [(50, 5.0, 6.0), (100, 10.0, 5.1)])), "r")
  ans = analysis.best_at_budget([analysis.eval_curve(run, "eval_loss", "r")], 7.0)
  assert ans.best is None and ans.not_reached == () and ans.no_eval == ("r",)


# ---------------------------------------------------------------------------
# RQ4 gap.


def test_generalization_gap_uses_last_tenth_of_train_lines():
  train = [{"step": 10 * i, "train_seconds": i, "loss": float(i)} for i in range(1, 21)]
  evals = [{"step": 100, "train_seconds": 10, "eval_loss": 30.0},
           {"step": 200, "train_seconds": 20, "eval_loss": 21.0}]
  gap = analysis.generalization_gap(train + evals)
  assert gap.train_lines == 2 and gap.train_loss == pytest.approx(19.5)
  assert gap.eval_loss == 21.0 and gap.gap == pytest.approx(1.5)
  # Fewer than ten train lines: the last one alone.
  gap = analysis.generalization_gap(train[:5] + evals[:1])
  assert gap.train_lines == 1 and gap.gap == pytest.approx(25.0)
  assert analysis.generalization_gap(evals) is None


def test_layer_names_of_unrolled_and_scanned_layers():
  assert analysis.split_layer_name("encoder/layer_3/attention/key/kernel") == (3, "attention/key")
  assert analysis.split_layer_name("encoder/layers/mlp/wi/kernel[5]") == (5, "mlp/wi")
  assert analysis.split_layer_name("token_embed/embedding") == (None, "token_embed")


# ---------------------------------------------------------------------------
# End to end.


def _sweep(root) -> None:
  """Two sizes, two data sizes each, a finetuned + compressed model per size, a translation run."""
  for layers, width, speed, final in ((2, 64, 1.0, 4.0), (4, 128, 2.5, 3.5)):
    for tokens, overfit in ((100_000, 0.2 * layers), (1_000_000, 0.05 * layers)):
      steps = [20 * i for i in range(1, 11)]
      train = [(s, s * speed / 10, final + 3 * math.exp(-s / 60) - overfit) for s in steps]
      evals = [(0, 0.0, 8.0)] + [(s, s * speed / 10, final + 3 * math.exp(-s / 60))
                                 for s in steps[4::5]]
      _write_workdir(root / f"d{layers}-w{width}-t{tokens}" / "pretrain",
                     _pretrain_config(layers, width, tokens), _metrics(evals, train))
    _write_workdir(
        root / f"d{layers}-w{width}" / "finetune",
        {"task": "finetune", "name": "synthetic", "init": {"workdir": "../pretrain"},
         "model": {"num_layers": layers, "d_model": width, "decoder_layers": 0}},
        [{"step": 0, "train_seconds": 0.0, "elapsed_seconds": 1.0, "eval_loss": 0.69, "accuracy": 0.5,
          "eval_examples": 872},
         {"step": 50, "train_seconds": 5.0, "elapsed_seconds": 7.0, "eval_loss": 0.4,
          "accuracy": 0.8 + 0.01 * layers, "eval_examples": 872}],
        _grid(layers, width, 0.8 + 0.01 * layers, width / 64, kurtosis=0.4 / layers),
        {"step": 50, "metric": "accuracy", "accuracy": 0.8 + 0.01 * layers})
  _write_workdir(root / "mt", {"task": "translate", "name": "synthetic",
                               "model": {"num_layers": 3, "decoder_layers": 2, "d_model": 96}},
                 [{"step": 0, "train_seconds": 0.0, "eval_loss": 6.0, "bleu": 0.5},
                  {"step": 100, "train_seconds": 9.0, "eval_loss": 3.0, "bleu": 12.5},
                  {"step": 200, "train_seconds": 18.0, "eval_loss": 2.0, "bleu": 20.25}])


def test_report_end_to_end(tmp_path):
  root = tmp_path / "sweep"
  _sweep(root)
  # A Hugging Face checkpoint folder also has a config.json: not a workdir.
  (root / "hf").mkdir()
  (root / "hf" / "config.json").write_text(json.dumps({"model_type": "roberta"}))
  out = tmp_path / "report"
  assert main([str(root), "--out", str(out), "--budget-seconds=10,15", "--budget-seconds", "30,100"]) == 0

  text = (out / "report.md").read_text()
  for size in ("2x64", "4x128", "3+2x96"):
    assert size in text
  for heading in ("RQ1", "budget", "RQ2", "RQ3", "RQ4", "RQ5", "Pareto frontier"):
    assert heading in text
  assert "| hf |" not in text
  # One run's best accuracy: the eval set's binomial error alone, 0.84 ± 1.96 sqrt(0.84 x 0.16 / 872).
  half = 1.959964 * math.sqrt(0.84 * 0.16 / 872)
  assert f"best accuracy 0.8400 (step 50), 95% interval {0.84 - half:.4f} to {0.84 + half:.4f} (n = 872)" in text
  assert "0.8157 to 0.8643" in text
  # Budget 15 s: the 2x64 runs evaluated at step 100 (10 s), the 4x128 runs only at step 0,
  # which is no reading (their step 100 comes at 25 s). Budget 30 s: the 2x64 runs stopped at
  # 20 s.
  table = text.split("### Training budgets: best validation loss")[1].split("###")[0]
  rows = {l.split("|")[1].strip(): l for l in table.splitlines() if l.startswith("| ")}
  assert "2x64" in rows["15"].split("|")[2] and "step 100 at 10.0 s" in rows["15"]
  assert "no other size" in rows["15"].split("|")[5] and "4x128" in rows["15"].split("|")[9]
  assert "4x128" in rows["30"].split("|")[2]
  assert "2x64 (98K) d2-w64-t100000/pretrain" in rows["30"].split("|")[8]
  # Budget 100 s: past every run (4x128 stopped at 50 s), so a prediction, not a row of names.
  assert "100" not in rows and "No run reached 100 s: see the predictions below." in table
  assert "#### Predictions past the longest run" in text  # here: no law fitted to 4 evals
  # Figures: referenced and real PNGs.
  pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
  assert {"rq1_pretrain_loss.png", "rq1_translate_bleu.png", "rq2_synthetic.png",
          "rq3_synthetic.png", "rq4_gap.png", "rq5_synthetic_weights.png",
          "rq5_synthetic_layers.png"} <= set(pngs)
  for png in pngs:
    data = (out / png).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, png
    assert f"]({png})" in text


def test_report_sections_say_what_is_missing(tmp_path):
  # One pretraining run alone: no compression, no data-size sweep.
  _write_workdir(tmp_path / "pre", _pretrain_config(2, 64), _metrics(
      [(0, 0.0, 8.0), (100, 10.0, 5.0)], [(50, 5.0, 6.0), (100, 10.0, 5.1)]))
  out = tmp_path / "out"
  assert main([str(tmp_path / "pre"), f"--out={out}"]) == 0
  text = (out / "report.md").read_text()
  assert "No compress.jsonl was found" in text
  assert "No two pretraining runs differ in training data size" in text
  assert sorted(os.listdir(out)) == ["report.md", "rq1_pretrain_loss.png"]


def test_curves_use_train_seconds_of_eval_lines(tmp_path):
  # Evals logged out of order in the file still come out in training-seconds order.
  lines = [{"step": 200, "train_seconds": 20.0, "eval_loss": 4.0},
           {"step": 0, "train_seconds": 0.0, "eval_loss": 8.0},
           {"step": 100, "train_seconds": 11.0, "eval_loss": 5.0}]
  run = load_run(_write_workdir(tmp_path / "r", _pretrain_config(2, 64), lines), "r")
  curve = analysis.eval_curve(run, "eval_loss", "r")
  assert curve.seconds == (0.0, 11.0, 20.0) and curve.values == (8.0, 5.0, 4.0)


def _one_sentence(message: str) -> bool:
  return message.endswith(".") and "\n" not in message and message.count(". ") == 0


def test_bad_input_raises_user_error(tmp_path):
  empty = tmp_path / "empty"
  (empty / "sub").mkdir(parents=True)
  with pytest.raises(UserError) as e:
    main([str(empty), "--out", str(tmp_path / "out")])
  assert "no tl-jax workdir" in str(e.value) and str(empty) in str(e.value)
  assert _one_sentence(str(e.value))
  assert not (tmp_path / "out").exists()  # nothing written for a bad DIR

  with pytest.raises(UserError) as e:
    main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
  assert _one_sentence(str(e.value))

  _write_workdir(tmp_path / "pre", _pretrain_config(2, 64), _metrics([(0, 0.0, 8.0)], []))
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError) as e:
    main([str(tmp_path / "pre"), "--out", str(tmp_path / "file")])
  assert "--out" in str(e.value) and _one_sentence(str(e.value))

  with pytest.raises(UserError) as e:
    main([str(tmp_path / "pre"), "--out", str(tmp_path / "o"), "--budget-mib=lots"])
  assert _one_sentence(str(e.value))
  with pytest.raises(UserError):
    main([str(tmp_path / "pre")])  # --out is required


def test_load_runs_finds_each_workdir_once(tmp_path):
  _sweep(tmp_path)
  runs = load_runs([str(tmp_path), str(tmp_path / "d2-w64" / "finetune")])
  assert len(runs) == 7
  names = {r.name for r in runs}
  assert "d2-w64/finetune" in names and "mt" in names
  ft = next(r for r in runs if r.name == "d2-w64/finetune")
  assert ft.params == 12 * 2 * 64 ** 2 and len(ft.points) == 7
  # A translator's size is known only where training logged it (its first metrics line), and a
  # logged count comes before one a config or a compression grid implies.
  mt = next(r for r in runs if r.name == "mt")
  assert mt.params is None and size_labels([mt])[mt.shape] == mt.shape.label
  mt.metrics[0]["params"] = 12_345_678
  ft.metrics.insert(0, {"step": 0, "params": 1_000})
  assert (mt.params, ft.params) == (12_345_678, 1_000)
  assert size_labels([mt])[mt.shape] == f"{mt.shape.label} (12M)"


def test_more_than_eight_sizes_are_paged(tmp_path):
  shapes = [(2, 32 * k) for k in range(1, 10)]
  for layers, width in shapes:
    _write_workdir(tmp_path / f"d{layers}-w{width}", _pretrain_config(layers, width), _metrics(
        [(0, 0.0, 8.0), (100, 10.0 * width / 32, 5.0 - width / 1000)], [(100, 10.0, 5.0)]))
  out = tmp_path / "out"
  assert main([str(tmp_path), "--out", str(out)]) == 0
  assert (out / "rq1_pretrain_loss.png").exists() and (out / "rq1_pretrain_loss_2.png").exists()
  text = (out / "report.md").read_text()
  assert all(f"2x{w}" in text for _, w in shapes)


# ---------------------------------------------------------------------------
# The compute regime of each pretraining run.


@pytest.mark.parametrize("model", [{}, {"pre_ln": True}, {"positions": "sinusoidal"},
                                   {"type_vocab_size": 2, "d_ff": 96, "num_layers": 3}])
def test_regime_counts_the_models_own_parameters(model):
  import flax.linen as nn
  import jax
  import numpy as np
  from tl_jax import config as config_lib
  from tl_jax.models.encoder import MaskedLM, padded_vocab
  from tl_jax.report import regime
  c = config_lib.load_preset("configs/mlm.py:tiny")
  for k, v in model.items():
    setattr(c.model, k, v)
  params = jax.eval_shape(lambda: nn.meta.unbox(MaskedLM(c.model, padded_vocab(c.data.vocab_size)).init(
      jax.random.key(0), np.zeros((1, c.data.seq_len), np.int32))["params"]))
  sizes = {jax.tree_util.keystr(p): a.size for p, a in jax.tree_util.tree_flatten_with_path(params)[0]}
  tables = sum(n for p, n in sizes.items() if "embed']['embedding" in p or "type_embed" in p)
  total, non_embedding = regime.mlm_params(config_lib.to_dict(c))
  assert total == sum(sizes.values()) and non_embedding == total - tables


def test_regime_by_hand_and_its_flags(tmp_path):
  from tl_jax.report import regime
  from tl_jax.report.runs import format_params
  # 2 x 64, vocab 2000 (padded to 2048), 32-token rows, 8 rows a step, 500 steps, 100k tokens.
  config = {**_pretrain_config(2, 64, tokens=100_000), "train": {"batch_size": 8}}
  config["model"].update(num_heads=2, d_ff=256, max_len=32)
  config["data"].update(seq_len=32, vocab_size=2000, mask_prob=0.15, max_predictions=0)
  run = load_run(_write_workdir(tmp_path / "r", config, _metrics(
      [(500, 10.0, 5.0)], [(250, 5.0, 6.0), (500, 10.0, 5.1)])), "r")
  r = regime.of_run(run)
  layer = 4 * (64 * 64 + 64) + 2 * 64 * 256 + 256 + 64 + 4 * 64
  head = 2 * 64 + 64 * 64 + 64 + 2 * 64 + 2048
  assert r.non_embedding == 2 * layer + head
  assert r.params == r.non_embedding + 2048 * 64 + 32 * 64
  assert r.tokens_seen == 500 * 8 * 32 == 128_000 and r.passes == pytest.approx(1.28)
  assert r.tokens_per_param == pytest.approx(128_000 / r.params)
  # 6 x (matrix weights of the layers and of the head over all 32 positions) + attention.
  per_token = 6 * (2 * (4 * 64 * 64 + 2 * 64 * 256) + 64 * 64 + 64 * 2048) + 12 * 2 * 32 * 64
  assert r.flops == pytest.approx(128_000 * per_token)
  assert r.flags == ("data repeated (1.3 passes)",)  # 0.5 tokens a parameter: far from 20
  assert main([str(tmp_path / "r"), "--out", str(tmp_path / "report")]) == 0
  text = (tmp_path / "report" / "report.md").read_text()
  row = next(l for l in text.split("### Compute regime")[1].splitlines() if l.startswith("| 2x64"))
  assert "| 128,000 | 100,000 | 1.28 |" in row and "data repeated (1.3 passes)" in row
  assert f"| 2x64 ({format_params(r.params)}) | {format_params(r.params)} |" in row  # its own count
  assert f"Regime: 1 of 1 runs repeated their data (2x64 ({format_params(r.params)}))" in text


def test_a_run_stopped_short_of_its_budget_is_flagged_unfinished(tmp_path):
  """A pre-empted run not yet resumed: its last numbers are not its answer, and the report says
  so. Runs that reached an end of theirs (the budget, the seconds schedule's end step a little
  before it, max_steps, the target loss) are not flagged."""
  def run(name, train: dict, lines: list[dict]):
    config = {**_pretrain_config(2, 64), "train": {"max_train_seconds": 60, **train}}
    return load_run(_write_workdir(tmp_path / name, config, lines), name)

  stopped = _metrics([(1000, 25.0, 4.0)], [(500, 12.0, 5.0), (1000, 25.0, 4.5), (1150, 28.7, 4.4)])
  stopped[0]["schedule_end_step"] = 2400
  assert run("cut", {}, stopped).unfinished == "unfinished: 28.7 of 60 training seconds"
  at_end = stopped + _metrics([], [(2400, 59.6, 4.0)])
  assert run("horizon", {}, at_end).unfinished is None  # its schedule's end, 0.4 s early
  assert run("steps", {"max_steps": 1150}, stopped).unfinished is None
  assert run("target", {"target_eval_loss": 4.2}, stopped).unfinished is None
  assert run("budget", {}, _metrics([], [(500, 60.0, 5.0)])).unfinished is None
  no_budget = load_run(_write_workdir(tmp_path / "free", _pretrain_config(2, 64), stopped), "free")
  assert no_budget.unfinished is None


def test_runs_of_one_size_that_differ_in_one_setting_are_compared_as_a_b(tmp_path):
  """pre_ln true/false on 2x64, two seeds each, end at 4.70/4.72 against 4.90/4.94: B − A and
  Welch's p as the report prints them. A run of another size, and one differing in two
  settings, pair with nothing; neither does a run without evals, nor runs that differ only in
  their budget or data size."""
  def run(name, layers, seed, final, pre_ln=True, **train):
    config = _pretrain_config(layers, 64)
    config["model"]["pre_ln"] = pre_ln
    config["train"] = {"seed": seed, "learning_rate": 1e-3, **train}
    evals = [(0, 0.0, 8.0), (100, 10.0, final + 0.3), (200, 20.0, final)] if final else []
    _write_workdir(tmp_path / "ab" / name, config, _metrics(evals, [(200, 20.0, 5.0)]))
  run("pre-0", 2, 0, 4.70)
  run("pre-1", 2, 1, 4.72)
  run("post-0", 2, 0, 4.90, pre_ln=False)
  run("post-1", 2, 1, 4.94, pre_ln=False)
  run("deep", 4, 0, 4.50)  # another size
  run("two-changes", 2, 0, 4.60, learning_rate=5e-4, warmup_steps=10)
  run("no-evals", 2, 0, None, learning_rate=2e-3)
  run("longer", 2, 0, 4.40, max_train_seconds=60)  # a budget: RQ1's curves compare those
  run("less-data", 2, 0, 4.80)  # a data size: RQ4's section compares those
  config = json.loads((tmp_path / "ab" / "less-data" / "config.json").read_text())
  config["data"]["max_train_tokens"] = 1000
  (tmp_path / "ab" / "less-data" / "config.json").write_text(json.dumps(config))
  runs = [r for r in load_runs([str(tmp_path / "ab")]) if r.shape.num_layers == 2]
  [c] = analysis.one_setting_comparisons(runs, "eval_loss")
  assert (c.setting, c.values) == ("model.pre_ln", (False, True))
  assert c.names == (("post-0", "post-1"), ("pre-0", "pre-1"))
  assert [s.mean for s in c.spreads] == [pytest.approx(4.92), pytest.approx(4.71)]
  a, b = c.spreads
  t = (a.mean - b.mean) / math.sqrt(a.std ** 2 / 2 + b.std ** 2 / 2)
  dof = (a.std ** 2 / 2 + b.std ** 2 / 2) ** 2 / ((a.std ** 2 / 2) ** 2 + (b.std ** 2 / 2) ** 2)
  from scipy import stats
  p = 2 * stats.t.sf(t, dof)
  assert analysis.welch_p(b, a) == pytest.approx(p)

  assert main([str(tmp_path / "ab"), "--out", str(tmp_path / "report")]) == 0
  text = (tmp_path / "report" / "report.md").read_text()
  table = text.split("## Settings compared")[1].split("\n## ")[0]
  rows = [[c.strip() for c in l.split("|")[1:-1]] for l in table.splitlines() if l.startswith("| masked")]
  assert rows == [["masked LM", rows[0][1], "`model.pre_ln`", "`False`", "post-0, post-1", "4.9200 ± 0.0283",
                   "`True`", "pre-0, pre-1", "4.7100 ± 0.0141", "-0.2100", "`True`", f"winner (p = {p:.2g})"]]
  assert rows[0][1].startswith("2x64")


def test_a_field_added_since_an_old_run_is_its_default_there(tmp_path):
  """An old run's config.json lacks model.fp8 (added later); a new run of the same size sets it
  to its default, False. The two are seeds of one group, not an A/B pair, as in the H200 study
  (docs/results/h200_study). A new run with fp8 on is compared against both."""
  def run(name, seed, final, **model):
    config = _pretrain_config(2, 64)
    config["model"].update(model)
    config["train"] = {"seed": seed}
    _write_workdir(tmp_path / name, config,
                   _metrics([(0, 0.0, 8.0), (200, 20.0, final)], [(200, 20.0, 5.0)]))
  run("old", 0, 4.70)
  run("new", 1, 4.72, fp8=False)
  [old, new] = sorted(load_runs([str(tmp_path)]), key=lambda r: r.name, reverse=True)
  assert "fp8" not in old.config["model"] and old.settings["model.fp8"] is False
  assert old.seed_group == new.seed_group
  assert analysis.one_setting_comparisons([old, new], "eval_loss") == []
  run("fp8", 0, 4.60, fp8=True)
  [c] = analysis.one_setting_comparisons(load_runs([str(tmp_path)]), "eval_loss")
  assert (c.setting, c.values, c.names) == ("model.fp8", (False, True), (("new", "old"), ("fp8",)))


def test_no_a_b_section_without_a_one_setting_pair(tmp_path):
  _write_workdir(tmp_path / "a", _pretrain_config(2, 64), _metrics([(100, 10.0, 5.0)], []))
  _write_workdir(tmp_path / "b", _pretrain_config(4, 64), _metrics([(100, 10.0, 4.0)], []))
  assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
  assert "## Settings compared" not in (tmp_path / "report" / "report.md").read_text()


# ---------------------------------------------------------------------------
# Seeds: one size, several runs.


def test_seeds_of_a_size_count_as_one_with_their_spread(tmp_path):
  """Two sizes, two seeds each (train.seed 0 and 1): at 10 s the sizes are within their
  spread (a tie); at 20 s 2x64 is ahead by more than both spreads together (the winner)."""
  def run(layers, width, seed, at10, at20):
    config = {**_pretrain_config(layers, width), "train": {"seed": seed, "max_train_seconds": 20}}
    name = f"d{layers}w{width}/seed{seed}"
    _write_workdir(tmp_path / "sweep" / name, config, _metrics(
        [(0, 0.0, 8.0), (100, 10.0, at10), (200, 20.0, at20)], [(200, 20.0, at20 + 0.1)]))
  run(2, 64, 0, 5.00, 4.70)
  run(2, 64, 1, 5.10, 4.72)
  run(4, 128, 0, 5.05, 4.80)
  run(4, 128, 1, 5.12, 4.82)
  runs = load_runs([str(tmp_path / "sweep")])
  curves = [analysis.eval_curve(r, "eval_loss", r.name, f"{r.shape.label}") for r in runs]
  groups = analysis.groups_at_budget(analysis.best_at_budget(curves, 20.0), curves)
  assert [(g.size, len(g.readings)) for g in groups] == [("2x64", 2), ("4x128", 2)]
  assert groups[0].spread.mean == pytest.approx(4.71)
  assert groups[0].spread.std == pytest.approx(math.sqrt(2 * 0.01 ** 2))
  assert analysis.verdict(groups[0].spread, groups[1].spread) == "winner"
  at10 = analysis.groups_at_budget(analysis.best_at_budget(curves, 10.0), curves)
  assert analysis.verdict(at10[0].spread, at10[1].spread) == "tie within noise"
  one = analysis.Spread.of([4.7])
  assert one.std is None and analysis.verdict(one, at10[1].spread) == "one seed: spread unknown"

  assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report"), "--budget-seconds=10,20"]) == 0
  text = (tmp_path / "report" / "report.md").read_text()
  table = text.split("### Training budgets: best validation loss")[1].split("###")[0]
  rows = {l.split("|")[1].strip(): l.split("|") for l in table.splitlines() if l.startswith("| ")}
  assert "(2 seeds)" in rows["20"][2] and "4.7100 ± 0.0141" in rows["20"][3]
  assert "step 200 at 20.0 s; step 200 at 20.0 s" in rows["20"][4]
  # Welch's t at 20 s: t = 0.1 / 0.01414, 2 degrees of freedom, where p = 1 - t / sqrt(2 + t^2).
  t = 0.1 / math.sqrt(2 * 0.01 ** 2)
  assert analysis.welch_p(groups[0].spread, groups[1].spread) == pytest.approx(1 - t / math.sqrt(2 + t * t))
  assert rows["20"][10].strip() == f"winner (p = {1 - t / math.sqrt(2 + t * t):.2g})" == "winner (p = 0.019)"
  assert rows["10"][10].strip().startswith("tie within noise (p = ")
  # A margin of both standard deviations, equal ones: the winner by the rule, yet p = 0.18.
  edge = analysis.welch_p(analysis.Spread(0.0, 1.0, 2), analysis.Spread(2.0, 1.0, 2))
  assert edge == pytest.approx(1 - 2 / math.sqrt(6))
  assert analysis.welch_p(one, at10[1].spread) is None
  assert analysis.welch_p(analysis.Spread.of([1.0, 1.0]), analysis.Spread.of([2.0, 2.0])) is None
  assert "Repeated seeds" not in text


def test_a_seed_run_twice_is_named_as_a_repeat(tmp_path):
  """The same config and seed read from two folders (a part re-run in a later lease): the
  report names them, since its spreads would count the repeat as another seed."""
  config = lambda seed: {**_pretrain_config(2, 64), "train": {"seed": seed, "max_train_seconds": 20}}
  curve = lambda end: _metrics([(0, 0.0, 8.0), (200, 20.0, end)], [(200, 20.0, end + 0.1)])
  _write_workdir(tmp_path / "first" / "seed0", config(0), curve(4.70))
  _write_workdir(tmp_path / "first" / "seed1", config(1), curve(4.72))
  _write_workdir(tmp_path / "again" / "seed0", config(0), curve(4.69))
  other = {**config(0), "model": {"num_layers": 4, "d_model": 128, "decoder_layers": 0}}
  _write_workdir(tmp_path / "again" / "d4", other, curve(4.6))  # seed 0 too, another size
  # One seed, started from two different runs (--init): a seed group's seeds, not a repeat.
  for init in ("pre0", "pre1"):
    _write_workdir(tmp_path / "again" / f"from-{init}", {**config(3), "init": {"workdir": init}},
                   curve(4.7))
  assert main([str(tmp_path / "first"), str(tmp_path / "again"), "--out", str(tmp_path / "r")]) == 0
  text = (tmp_path / "r" / "report.md").read_text()
  notes = [line for line in text.splitlines() if line.startswith("Repeated seeds:")]
  assert len(notes) == 1 and notes[0].count("(seed 0)") == 1 and "(seed 1)" not in notes[0]
  assert "(seed 3)" not in notes[0]
  assert "`again/seed0`, `first/seed0` (seed 0)" in notes[0] and "d4" not in notes[0]


def _capture(monkeypatch, name: str) -> list[dict]:
  """The arguments of every call of figures.`name` during a report (the figure's data), the
  figure still drawn."""
  from tl_jax.report import figures
  calls, draw = [], getattr(figures, name)
  def spy(*args, **kwargs):
    calls.append({"args": args, **kwargs})
    return draw(*args, **kwargs)
  monkeypatch.setattr(figures, name, spy)
  return calls


def test_compressed_seeds_of_a_size_are_averaged_in_the_memory_advice(tmp_path, monkeypatch):
  """Each size's grid was run on two finetuned seeds: the memory table compares the sizes by
  their means, with the spread, and calls a tie where the margin is within it; the RQ2, RQ3
  and RQ5 figures draw the means with error bars over the seeds."""
  def finetuned(layers, width, seed, acc4, acc32):
    config = {"task": "finetune", "name": "synthetic", "train": {"seed": seed},
              "init": {"workdir": f"/pretrained/seed{seed}"},
              "model": {"num_layers": layers, "d_model": width, "decoder_layers": 0}}
    kurtosis = 0.1 * layers + 0.01 * seed
    _write_workdir(tmp_path / "sweep" / f"d{layers}w{width}-seed{seed}", config, points=[
        _point("float32", layers, width, acc32, acc32, 8.0 * layers / 2, kurtosis=kurtosis),
        _point("uniform4b", layers, width, acc4, acc32, 1.0 * layers / 2, bits=4, quant="uniform",
               kurtosis=kurtosis),
        _point("uniform3b", layers, width, acc4 - 0.1 + 0.01 * seed, acc32, 0.8 * layers / 2, bits=3,
               quant="uniform", kurtosis=kurtosis)])
  finetuned(2, 64, 0, 0.800, 0.810)
  finetuned(2, 64, 1, 0.804, 0.812)
  finetuned(4, 64, 0, 0.806, 0.820)
  finetuned(4, 64, 1, 0.830, 0.822)
  sweeps, memory, weights = (_capture(monkeypatch, f) for f in
                             ("compression_sweeps", "memory_frontier", "compressibility"))
  assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report"), "--budget-mib=1.5,9"]) == 0
  text = (tmp_path / "report" / "report.md").read_text()
  table = text.split("### Memory budgets")[1].split("##")[0]
  rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")] for l in table.splitlines()
          if l.startswith("| ")}
  assert rows["1.5"][2] == "2x64 (98K) (2 seeds): uniform4b" and rows["1.5"][6] == "no other size fits"
  assert rows["1.5"][3] == "0.8020 ± 0.0028"
  # 4 x 64 at 4 bits: 0.818 ± 0.017 against 2 x 64's float32, 0.811 ± 0.0014: within noise.
  assert rows["9"][2] == "4x64 (197K) (2 seeds): uniform4b" and rows["9"][3] == "0.8180 ± 0.0170"
  assert rows["9"][6] == "2x64 (98K) (2 seeds): float32" and rows["9"][11].startswith("tie within noise (p = ")
  # The 95% interval by hand: p ± 1.96 sqrt(s^2 / k + p (1 - p) / n), 2 seeds, 1000 examples.
  p, s = 0.818, math.sqrt(((0.806 - 0.818) ** 2 + (0.830 - 0.818) ** 2) / 1)
  half = 1.959964 * math.sqrt(s ** 2 / 2 + p * (1 - p) / 1000)
  assert rows["9"][4] == f"{p - half:.4f} to {p + half:.4f}" == "0.7845 to 0.8515"
  assert "p ± 1.96 √(s²/k + p(1−p)/n)" in table

  # RQ2: one line per size (the seeds' mean), bars from the lowest seed to the highest.
  from tl_jax.report import figures
  quant = sweeps[0]["args"][0]
  assert sorted(quant) == [("2x64 (98K) (2 seeds)", "uniform sym channel"),
                           ("4x64 (197K) (2 seeds)", "uniform sym channel")]
  four = {p.point: p for p in quant[("4x64 (197K) (2 seeds)", "uniform sym channel")]}["uniform4b"]
  assert four.value == pytest.approx(0.818)
  assert figures.seed_errors([four.value], [four.spread]) == [[pytest.approx(0.012)], [pytest.approx(0.012)]]
  rq2 = text.split("## 3. RQ2")[1].split("## 4.")[0]
  assert "| 4x64 (197K) (2 seeds) | uniform sym channel | uniform4b | 4 | 0.0% | 0.8180 ± 0.0170 | 0.7845 to 0.8515 |" in rq2
  assert "error bars from the lowest seed to the highest" in rq2
  # RQ3: every point is a mean with its spread.
  points = memory[0]["args"][0]
  assert {p.size for p in points} == {"2x64 (98K) (2 seeds)", "4x64 (197K) (2 seeds)"}
  assert all(p.spread.n == 2 and p.spread.lo <= p.value <= p.spread.hi for p in points)
  assert "0.8180 ± 0.0170 | 0.7845 to 0.8515 |" in text.split("## 4. RQ3")[1].split("## 5.")[0]
  # RQ5: the drop at uniform 3 bits, mean and range over the seeds (drop = acc32 - acc3).
  rows5 = {r["size"]: r for r in weights[0]["args"][0]}
  drop = rows5["4x64 (197K) (2 seeds)"]["drop_spreads"]["uniform 3-bit"]
  assert (drop.lo, drop.mean, drop.hi) == (pytest.approx(0.822 - 0.740), pytest.approx(0.098),
                                          pytest.approx(0.820 - 0.706))
  assert rows5["4x64 (197K) (2 seeds)"]["kurtosis"] == pytest.approx(0.405)
  assert rows5["4x64 (197K) (2 seeds)"]["seeds"] == 2
  rq5 = text.split("## 6. RQ5")[1]
  assert "| 4x64 (197K) (2 seeds) | 2 | 0.4050 |" in rq5 and "mean over them" in rq5


def test_single_seed_points_have_no_bars_and_a_binomial_interval():
  one = analysis.Compressed("s", "r", "p", 32, 0.0, 0.9, 0.0, 1.0, None, None, examples=400)
  from tl_jax.report import figures
  assert figures.seed_errors([0.9], [one.spread]) is None
  half = 1.959964 * math.sqrt(0.9 * 0.1 / 400)  # 0.0294
  assert analysis.accuracy_interval(0.9, 400) == pytest.approx((0.9 - half, 0.9 + half))
  assert analysis.accuracy_interval(0.999, 100)[1] == 1.0  # clipped
  assert analysis.accuracy_interval(0.9, None) is None
  seeds = analysis.Spread.of([0.88, 0.90, 0.92])  # s = 0.02, k = 3: the seeds' term alone
  assert analysis.accuracy_interval(0.9, None, seeds) == pytest.approx(
      (0.9 - 1.959964 * 0.02 / math.sqrt(3), 0.9 + 1.959964 * 0.02 / math.sqrt(3)))


def test_seeds_of_a_size_are_one_curve_with_a_band(tmp_path, monkeypatch):
  """Two seeds of 2x64 evaluated at the same steps: one mean curve with a min..max band; two
  seeds of 4x128 with timed evals (different steps): aligned by seconds; 2x32 alone: a curve."""
  def run(name, layers, width, seed, evals):
    config = {**_pretrain_config(layers, width), "train": {"seed": seed}}
    _write_workdir(tmp_path / "sweep" / name, config,
                   _metrics([(0, 0.0, 8.0)] + evals, [(evals[-1][0], evals[-1][1], 5.0)]))
  run("a/seed0", 2, 64, 0, [(100, 10.0, 6.0), (200, 20.0, 5.0)])
  run("a/seed1", 2, 64, 1, [(100, 12.0, 6.4), (200, 22.0, 5.2)])
  run("b/seed0", 4, 128, 0, [(40, 10.0, 6.0), (80, 20.0, 5.0)])
  run("b/seed1", 4, 128, 1, [(50, 10.0, 5.0), (90, 15.0, 4.0), (130, 25.0, 3.0)])
  run("c", 2, 32, 0, [(100, 10.0, 6.5)])
  calls = _capture(monkeypatch, "training_curves")
  assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
  (call,) = calls
  assert [c.label for c in call["args"][0]] == ["2x32"]  # the single seed as it is
  bands = {b.label: b for b in call["bands"]}
  a, b = bands["2x64 (2 seeds)"], bands["4x128 (2 seeds)"]
  assert a.aligned == "step" and a.steps == (0, 100, 200) and a.seconds == (0.0, 11.0, 21.0)
  assert a.values == pytest.approx((8.0, 6.2, 5.1)) and a.lo == (8.0, 6.0, 5.0) and a.hi == (8.0, 6.4, 5.2)
  # Seed 1 interpolated at seed 0's 0, 10 and 20 s: 8.0, 5.0 and 3.5.
  assert b.aligned == "seconds" and b.seconds == (0.0, 10.0, 20.0)
  assert b.values == pytest.approx((8.0, 5.5, 4.25)) and b.lo == (8.0, 5.0, 3.5) and b.hi == (8.0, 6.0, 5.0)
  text = (tmp_path / "report" / "report.md").read_text()
  assert "| 2x64 (2 seeds) | step | 100 | 11.0 | 6.2000 | 6.0000 | 6.4000 |" in text
  assert "min..max, not a standard deviation" in text


def test_seeds_held_to_one_budget_keep_their_last_eval_in_the_band(tmp_path, monkeypatch):
  """6x768 of the H100 study: seed 0 ended at 59.745 s, seed 1 at 59.698 s, both held to 60 s.
  The band once stopped at the 50 s evals (seed 0's end lay past seed 1's), and the compute
  panel drew the untrained step-0 eval far to the left, as a flat line."""
  def run(name, seed, evals):
    config = {**_pretrain_config(6, 768), "train": {"seed": seed, "max_train_seconds": 60}}
    _write_workdir(tmp_path / "sweep" / name, config,
                   _metrics([(0, 0.0, 8.4)] + evals, [(evals[-1][0], evals[-1][1], 1.5)]))
  run("seed0", 0, [(1795, 50.25, 1.570), (2135, 59.745, 1.544)])
  run("seed1", 1, [(1794, 50.30, 1.589), (2131, 59.698, 1.547)])
  calls = _capture(monkeypatch, "training_curves")
  assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
  (band,) = calls[0]["bands"]
  assert band.aligned == "seconds" and band.seconds[-1] == 59.745
  assert band.values[-1] == pytest.approx((1.544 + 1.547) / 2)  # seed 1's last eval
  from tl_jax.report import figures  # the compute panel's points: none at zero compute
  assert figures.positive_x([0.0, 2.0, 4.0], [8.4, 1.6, 1.5], [8.3, 1.5, 1.4]) == (
      [2.0, 4.0], [1.6, 1.5], [1.5, 1.4])


# ---------------------------------------------------------------------------
# The fitted scaling law.


def test_the_fit_recovers_a_known_law_and_refuses_too_few_sizes():
  from tl_jax.report import scaling
  true = scaling.Law(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)  # Chinchilla's fit
  sizes, tokens = (1e5, 4e5, 1.6e6, 6.4e6), np.geomspace(1e6, 1e9, 8)
  points = [scaling.Point(f"n{n:g}", n, d, float(true.loss(n, d))) for n in sizes for d in tokens]
  fit = scaling.fit(points, resamples=5)
  for name in ("E", "A", "alpha", "B", "beta"):  # noise-free curves: within 0.1%
    assert getattr(fit.law, name) == pytest.approx(getattr(true, name), rel=1e-3), name
  assert fit.rmse < 1e-4 and not fit.at_bounds
  # With 0.5% noise on every loss, the 90% intervals hold the true exponents.
  rng = np.random.default_rng(0)
  noisy = [dataclasses.replace(p, loss=p.loss * float(np.exp(rng.normal(0, 0.005)))) for p in points]
  fit = scaling.fit(noisy, resamples=20)
  for name in ("alpha", "beta"):
    lo, hi = fit.intervals[name]
    assert lo - 0.01 <= getattr(true, name) <= hi + 0.01, (name, lo, hi)
  two = [p for p in points if p.params in sizes[:2]]
  assert scaling.refusal(two) == ("A scaling law needs pretraining runs of at least 3 sizes; these "
                                  "runs have 2, so none is fitted (add sizes to the sweep).")
  assert scaling.refusal(points) is None
  # Compute-optimal size: at C = 6ND, N_opt grows as C^(beta / (alpha + beta)).
  assert true.optimal_params(1e21) / true.optimal_params(1e19) == pytest.approx(
      100 ** (0.28 / 0.62), rel=1e-9)


def test_the_compute_optimal_frontier_of_a_known_law():
  from tl_jax.report import scaling
  law = scaling.Law(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
  flops = np.array([1e15, 1e18, 1e21])
  n, d, loss = law.frontier(flops)
  assert 6 * n * d == pytest.approx(flops, rel=1e-12)
  # Chinchilla's eq. 4 by hand: N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / beta B)^(1/(alpha+beta)).
  g = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)
  assert n == pytest.approx(g * (flops / 6) ** (0.28 / 0.62), rel=1e-12)
  assert loss == pytest.approx(1.69 + 406.4 / n ** 0.34 + 410.7 / d ** 0.28, rel=1e-12)
  # At the optimum the two terms' marginal gains balance (alpha A / N^alpha = beta B / D^beta),
  # and any other split of the same compute does worse.
  assert 0.34 * 406.4 / n ** 0.34 == pytest.approx(0.28 * 410.7 / d ** 0.28, rel=1e-9)
  for k in (0.5, 2.0):
    assert (law.loss(k * n, d / k) > loss).all()


def test_the_report_fits_the_law_and_labels_predictions(tmp_path, monkeypatch):
  """Four sizes on a known law, each at its own pace (seconds per step grow with size): the
  fit's frontier on the RQ1 figure, and budget advice past the longest run as predictions."""
  from tl_jax.report import regime, scaling
  true = scaling.Law(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
  params, paces = {}, {}
  for layers, width in ((2, 64), (2, 128), (4, 128), (4, 256)):
    config = {**_pretrain_config(layers, width, tokens=10_000_000), "train": {"batch_size": 8}}
    config["model"].update(num_heads=2, d_ff=4 * width, max_len=32)
    config["data"].update(seq_len=32, vocab_size=2000, mask_prob=0.15, max_predictions=0)
    n = regime.mlm_params(config)[1]
    per_step = layers * width / 12_800  # seconds a step: 0.01 to 0.08
    evals = [(s, s * per_step, float(true.loss(n, s * 8 * 32))) for s in (500, 1000, 2000, 4000, 8000)]
    _write_workdir(tmp_path / "sweep" / f"d{layers}w{width}", config,
                   _metrics(evals, [(8000, 8000 * per_step, evals[-1][2] + 0.05)]))
    params[f"{layers}x{width}"], paces[f"{layers}x{width}"] = n, 8 * 32 / per_step
  curves = _capture(monkeypatch, "training_curves")
  assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
  text = (tmp_path / "report" / "report.md").read_text()
  # The frontier drawn on the RQ1 figure is the law's (the fit recovers it) at C = 6 N D.
  compute = curves[0]["compute"]
  flops, losses = compute["frontier"]
  assert losses == pytest.approx(true.frontier(flops)[2], rel=1e-3)
  assert flops[-1] == pytest.approx(4 * 6 * params["4x256"] * 8000 * 256)  # 4x the largest eval
  label = next(k for k in compute["per_step"] if k.startswith("2x64"))
  assert compute["per_step"][label] == pytest.approx(6 * params["2x64"] * 256)
  assert "compute-optimal frontier (predictions of the fitted law)" in text
  # Past the longest run (4x256, 640 s): 2x and 4x its seconds, every row a prediction, in a
  # table of its own after the measured one.
  budget = text.split("## 2.")[1].split("## 3.")[0]
  measured, predicted = budget.split("#### Predictions past the longest run (not measurements)")
  assert "prediction" not in measured.split("### Training budgets")[1]
  rows = [[c.strip() for c in l.split("|")[1:-1]] for l in predicted.splitlines() if l.startswith("| ")]
  rows = rows[1:]  # the header
  assert len(rows) == 8 and all(r[0] == "prediction" for r in rows)
  assert {r[1] for r in rows} == {"1280", "2560"}
  for r in rows:
    size = r[3].split()[0]
    tokens = paces[size] * float(r[1])  # seconds -> tokens at the size's own pace
    assert float(r[4]) == pytest.approx(paces[size], rel=1e-3) and float(r[5]) == pytest.approx(tokens, rel=1e-2)
    assert float(r[6]) == pytest.approx(float(true.loss(params[size], tokens)), rel=1e-3)
    lo, hi = (float(x) for x in r[7].split(" to "))
    assert lo <= float(r[6]) * (1 + 1e-3) and hi >= float(r[6]) * (1 - 1e-3)
  best = [r for r in rows if r[2] == "1"]
  assert {r[3].split()[0] for r in best} == {"4x256"} and all(r[8] == "100%" for r in best)
  section = text.split("### A fitted scaling law (pretraining)")[1].split("## 2.")[0]
  rows = {l.split("|")[1].strip(): l.split("|")[2].strip() for l in section.splitlines()
          if l.startswith("| ") and l.count("|") == 4}
  assert float(rows["alpha"]) == pytest.approx(0.34, rel=0.01)
  assert float(rows["beta"]) == pytest.approx(0.28, rel=0.01)
  assert "20 evals of 4 runs" in section and "**predictions** (not measurements)" in section
  assert "predicted at 2x tokens" in section


def test_a_bleu_grid_keeps_its_metric_name_in_figure_titles(tmp_path, monkeypatch):
  points = []
  for name, bleu, mem, kw in (("float32", 30.0, 8.0, {}),
                              ("uniform4b-sym-channel", 29.0, 1.0, {"bits": 4, "quant": "uniform"})):
    p = _point(name, 2, 64, 0.0, 0.0, mem, **kw)
    del p["accuracy"], p["accuracy_drop"]
    p.update(metric="bleu", bleu=bleu, value=bleu, higher_is_better=True, drop=30.0 - bleu)
    p["model"].update(name="multi30k", task="translate", decoder_layers=2)
    points.append(p)
  _write_workdir(tmp_path / "mt", {"task": "translate", "name": "multi30k",
                                   "model": {"num_layers": 2, "decoder_layers": 2, "d_model": 64}},
                 [{"step": 100, "train_seconds": 9.0, "eval_loss": 2.0, "bleu": 30.0}], points)
  sweeps, memory = _capture(monkeypatch, "compression_sweeps"), _capture(monkeypatch, "memory_frontier")
  assert main([str(tmp_path / "mt"), "--out", str(tmp_path / "report")]) == 0
  assert memory[0]["title"].startswith("BLEU against memory"), memory[0]["title"]
  assert sweeps[0]["title"].startswith("BLEU under quantization"), sweeps[0]["title"]
