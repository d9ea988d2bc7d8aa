"""RoBERTa-style encoder and its masked-LM model.

Width and depth come from `ModelConfig`, so every point of the paper's grid is
the same class. The MLM decoder is tied to the token embeddings.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.config import ModelConfig, d_ff
from tl_jax.models.dropout import dropout
from tl_jax.models.layers import (REMAT_POLICIES, Embed, EncoderLayer, ScannedLayer, INIT,
                                  activation, dense, dtype_of, embed_grad_method, layer_norm)


def padded_vocab(vocab_size: int, multiple: int = 128) -> int:
  """Embedding rows rounded up so the vocab axis splits evenly over any mesh."""
  return -(-vocab_size // multiple) * multiple


def token_embedding(config: ModelConfig, vocab_size: int, name: str | None = None) -> nn.Embed:
  return Embed(vocab_size, config.d_model, grad=embed_grad_method(config.embed_grad),
               dtype=dtype_of(config.dtype), param_dtype=jnp.float32,
               embedding_init=nn.with_logical_partitioning(INIT, ("vocab", "embed")), name=name)


class Encoder(nn.Module):
  """Token + learned position embeddings, then `num_layers` Transformer layers.

  The token embedding is passed in by the parent so that heads can share it
  (the MLM decoder is tied to it).
  """
  config: ModelConfig
  token_embed: nn.Embed

  def _layers(self, x, lengths, mask, deterministic: bool):
    cfg = self.config
    if cfg.scan_layers:
      block = ScannedLayer
      if cfg.remat != "none":
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=nn.broadcast, length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, d_ff(cfg), deterministic, name="layers")(x, lengths, mask)
      return x
    block = EncoderLayer
    if cfg.remat != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat])
    for i in range(cfg.num_layers):
      x = block(cfg, d_ff(cfg), deterministic, name=f"layer_{i}")(x, lengths, mask)
    return x

  @nn.compact
  def __call__(self, tokens, *, deterministic: bool, lengths=None, mask=None, positions=None,
               types=None):
    """Hidden states [B, S, D]; `positions` (packed rows restart them) default to 0..S-1;
    `types` are token-type (segment) ids, used where model.type_vocab_size > 0."""
    cfg = self.config
    x = embed_tokens(cfg, self.token_embed, tokens, positions, types)
    x = dropout(cfg)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = self._layers(x, lengths, mask, deterministic)
    return layer_norm(cfg, "ln_final")(x) if cfg.pre_ln else x


def sinusoidal(positions, d_model: int):
  """Vaswani et al.'s fixed position encodings for integer `positions` [..., S] -> [..., S, D]."""
  half = d_model // 2
  freqs = jnp.exp(-jnp.log(10_000.0) * jnp.arange(half) / max(half - 1, 1))
  angles = positions[..., None].astype(jnp.float32) * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def embed_tokens(cfg: ModelConfig, token_embed: nn.Embed, tokens, positions=None, types=None):
  """Token + position embeddings: RoBERTa's (learned, LayerNorm) or Vaswani's (scaled, sinusoidal).

  Imported BERT/RoBERTa checkpoints add token-type embeddings and start positions at
  `position_offset` (model config). Called inside a compact module, whose scope then
  owns the position and norm parameters.
  """
  if positions is None:
    positions = jnp.arange(tokens.shape[1])[None, :]
  positions = positions + cfg.position_offset
  if cfg.positions == "sinusoidal":
    x = token_embed(tokens) * jnp.sqrt(cfg.d_model).astype(dtype_of(cfg.dtype))
    return x + sinusoidal(positions, cfg.d_model).astype(x.dtype)
  position_embed = nn.Embed(
      cfg.max_len, cfg.d_model, dtype=dtype_of(cfg.dtype), param_dtype=jnp.float32,
      embedding_init=nn.with_logical_partitioning(INIT, ("position", "embed")),
      name="position_embed")
  x = token_embed(tokens) + position_embed(positions)
  if cfg.type_vocab_size:
    type_embed = Embed(  # a one-hot gradient: most rows share type 0
        cfg.type_vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype), param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(INIT, ("types", "embed")), name="type_embed")
    x = x + type_embed(jnp.zeros_like(tokens) if types is None else types)
  return layer_norm(cfg, "ln_embed")(x)


class MaskedLM(nn.Module):
  """Encoder + RoBERTa's LM head (dense, GELU, LayerNorm, tied decoder, bias)."""
  config: ModelConfig
  vocab_size: int

  def setup(self):
    self.token_embed = token_embedding(self.config, self.vocab_size)
    self.encoder = Encoder(self.config, self.token_embed)
    self.head_dense = dense(self.config.d_model, ("embed", "embed_out"), self.config)
    self.head_ln = layer_norm(self.config)
    self.head_bias = self.param("head_bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                          ("vocab",)),
                                (self.vocab_size,), jnp.float32)

  def __call__(self, tokens, *, deterministic: bool = True, lengths=None, types=None,
               predict_at=None):
    """Logits [B, S, V], or [B, K, V] at the positions `predict_at` [B, K] only.

    Pretraining scores about 15% of the positions; projecting only those onto the
    vocabulary skips most of the head's work (a quarter of RoBERTa-base's FLOPs).
    """
    h = self.encoder(tokens, deterministic=deterministic, lengths=lengths, types=types)
    if predict_at is not None:
      # A gather of whole rows within each sequence (the batch axis stays the batch axis, as
      # the sharding wants); its gradient scatters rows to distinct positions, no atomics clash.
      h = jax.vmap(lambda rows, at: jnp.take(rows, at, axis=0, unique_indices=True,
                                             mode="clip"))(h, predict_at)
    h = self.head_ln(activation(self.config)(self.head_dense(h)))
    logits = self.token_embed.attend(h) + self.head_bias.astype(h.dtype)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
