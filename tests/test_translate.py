"""Translation end to end: BLEU rises on the synthetic task; scoring and bad input."""

import os
import subprocess
import sys

import jax
import pytest

from tl_jax import config as config_lib
from tl_jax.data.pairs import pack, padding_fraction
from tl_jax.train import metrics, translate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sacrebleu_of_a_reference_against_itself_is_100():
  refs = ["le chat est sur le tapis .", "un homme fait du vélo dans la rue ."]
  score, signature = translate.bleu_score(refs, refs)
  assert score == pytest.approx(100.0)
  assert "tok:13a" in signature
  assert translate.bleu_score(["tout autre chose ici", "rien du tout"], refs)[0] < 10


def test_packing_keeps_every_pair_and_counts_padding():
  pairs = [([5, 6, 7], [8, 9]), ([10] * 4, [11] * 5), ([12], [13])]
  rows = pack(pairs, 8)
  assert rows["src"].shape == (2, 8)  # pairs 1-2 fill row 0 (4+5 > 8 would not fit), pair 3 joins row 1
  assert list(rows["src"][0, :4]) == [5, 6, 7, 2] and list(rows["src_segments"][0, :4]) == [1] * 4
  assert list(rows["tgt_in"][0, :3]) == [1, 8, 9] and list(rows["tgt_out"][0, :3]) == [8, 9, 2]
  assert list(rows["tgt_positions"][1]) == [0, 1, 2, 3, 4, 5, 0, 1]
  assert padding_fraction(rows) == pytest.approx(1 - (3 + 6 + 2) / 16)


@pytest.mark.slow
def test_tiny_synthetic_translation_bleu_rises(tmp_path):
  c = config_lib.load_preset("configs/translate.py:tiny")
  c.train.max_steps = 400
  c.eval.every_steps = 400
  c.parallel.data = 1
  workdir = str(tmp_path / "mt")
  save_config = lambda: config_lib.save(c, os.path.join(workdir, "config.json"))  # as the CLI does
  assert translate.run(c, workdir, jax.devices()[:1], on_ready=save_config) == 0
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
  assert translate.translate_file(workdir, str(tmp_path / "in.txt"), str(tmp_path / "out.txt")) == 0
  hypotheses = (tmp_path / "out.txt").read_text().splitlines()
  assert len(hypotheses) == len(pairs)
  assert translate.bleu_score(hypotheses, [tgt for _, tgt in pairs])[0] > 25.0


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
