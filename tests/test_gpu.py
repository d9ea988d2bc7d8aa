"""GPU-only checks (skipped elsewhere): cuDNN attention and a bf16 training run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax import config as config_lib
from tl_jax.config import ModelConfig
from tl_jax.models.encoder import MaskedLM
from tl_jax.models.layers import attention_implementation
from tl_jax import tasks
from tl_jax.train import metrics

pytestmark = pytest.mark.gpu


def model_config(attention):
  return ModelConfig(num_layers=2, d_model=256, num_heads=4, max_len=128, dropout=0.0,
                     dtype="bfloat16", attention=attention)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_cudnn_attention_matches_xla(with_lengths):
  assert attention_implementation(model_config("auto")) == "cudnn"
  tokens = jax.random.randint(jax.random.key(0), (4, 128), 5, 1000)
  lengths = jnp.array([128, 100, 64, 17]) if with_lengths else None
  xla, cudnn = MaskedLM(model_config("xla"), 1024), MaskedLM(model_config("cudnn"), 1024)
  params = nn.meta.unbox(xla.init(jax.random.key(1), tokens)["params"])
  a = np.asarray(xla.apply({"params": params}, tokens, lengths=lengths), np.float32)
  b = np.asarray(cudnn.apply({"params": params}, tokens, lengths=lengths), np.float32)
  if with_lengths:  # positions past a sequence's length are padding: compare the real ones
    keep = np.arange(128)[None, :] < np.asarray(lengths)[:, None]
    a, b = a[keep], b[keep]
  scale = np.abs(a).max()
  assert np.abs(a - b).max() < 0.03 * scale, (np.abs(a - b).max(), scale)


def test_bf16_training_on_gpu_learns(tmp_path):
  c = config_lib.load_preset("configs/mlm.py:tiny")
  c.model.dtype = "bfloat16"  # the GPU default; cuDNN attention under `auto`
  c.train.max_steps = 200
  c.eval.num_batches = 4
  workdir = str(tmp_path / "bf16")
  assert tasks.run(c, workdir) == 0
  lines = metrics.read(workdir)
  evals = [l["eval_loss"] for l in lines if "eval_loss" in l]
  assert evals[-1] < evals[0] - 2.0, evals
  assert all(l["mfu"] is not None and l["mfu"] > 0 for l in lines if "loss" in l)


@pytest.mark.slow
def test_pretraining_pays_off_on_synthetic_sentiment(tmp_path):
  """RoBERTa-base shape, pretrained on the synthetic documents for 150 seconds, then finetuned
  on the sentiment task, beats the same shape finetuned from random weights."""
  pre = config_lib.load_preset("configs/mlm.py:gpu-smoke")
  pre.train.max_train_seconds, pre.train.max_steps, pre.train.warmup_steps = 150, 2000, 200
  pre.eval.every_steps, pre.checkpoint.every_steps = 2000, 2000
  pre.parallel.data = 1
  init = str(tmp_path / "pretrain")
  save = lambda: config_lib.save(pre, f"{init}/config.json")
  assert tasks.run(pre, init, jax.devices()[:1], on_ready=save) == 0
  accuracy = {}
  for name, from_scratch in (("pretrained", False), ("scratch", True)):
    c = config_lib.load_preset("configs/glue.py:synthetic")
    c.init.workdir, c.init.from_scratch = init, from_scratch
    c = config_lib.inherit_init_model(c, {})
    c.parallel.data = 1
    c.train.learning_rate = 5e-5
    assert tasks.run(c, str(tmp_path / name), jax.devices()[:1]) == 0
    accuracy[name] = [l for l in metrics.read(str(tmp_path / name)) if "accuracy" in l][-1]["accuracy"]
  print("synthetic sentiment accuracy:", accuracy)
  assert accuracy["pretrained"] - accuracy["scratch"] > 0.05, accuracy
