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
from tl_jax.train import metrics, pretrain

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
  assert pretrain.run(c, workdir) == 0
  lines = metrics.read(workdir)
  evals = [l["eval_loss"] for l in lines if "eval_loss" in l]
  assert evals[-1] < evals[0] - 2.0, evals
  assert all(l["mfu"] is not None and l["mfu"] > 0 for l in lines if "loss" in l)
