"""Sentence(-pair) classifier: the pretrained encoder plus RoBERTa's classification head.

The encoder's parameters sit under the same names as in `MaskedLM`
(`token_embed`, `encoder`), so finetuning copies them over by name and only the
head (`head_dense`, `head_out`) starts fresh.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from tl_jax.config import ModelConfig
from tl_jax.models.dropout import dropout
from tl_jax.models.encoder import Encoder, token_embedding
from tl_jax.models.layers import dense

ENCODER_PARAMS = ("token_embed", "encoder")


class Classifier(nn.Module):
  """Logits [B, num_labels] from a pooled state: dropout, dense, tanh, dropout, dense.

  `pooling` "first" reads the <s>/[CLS] state, as RoBERTa and BERT do; "mean" averages the
  states of the real tokens, which suits encoders whose first token was never trained to
  summarise (masked-LM pretraining never asks anything of it).
  """
  config: ModelConfig
  vocab_size: int
  num_labels: int
  pooling: str = "first"

  def setup(self):
    self.token_embed = token_embedding(self.config, self.vocab_size)
    self.encoder = Encoder(self.config, self.token_embed)
    self.head_dense = dense(self.config.d_model, ("embed", "embed_out"), self.config)
    self.head_out = dense(self.num_labels, ("embed", "classes"), self.config)
    self.dropout = dropout(self.config)

  def __call__(self, tokens, *, deterministic: bool = True, lengths=None, types=None):
    h = self.encoder(tokens, deterministic=deterministic, lengths=lengths, types=types)
    if self.pooling == "mean":
      if lengths is None:
        h = jnp.mean(h, axis=1)
      else:
        real = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(h.dtype)[..., None]
        h = jnp.sum(h * real, axis=1) / jnp.maximum(jnp.sum(real, axis=1), 1)
    else:
      h = h[:, 0]
    h = self.dropout(h, deterministic=deterministic)
    h = jnp.tanh(self.head_dense(h))
    h = self.dropout(h, deterministic=deterministic)
    return self.head_out(h).astype(jnp.float32)
