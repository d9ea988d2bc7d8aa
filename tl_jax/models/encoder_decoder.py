"""Encoder-decoder Transformer for translation (Vaswani et al. 2017; fairseq/Flax-WMT shapes).

Source, target and output embeddings are one table over a joint vocabulary. Training
rows are packed: several sentence pairs share a row, told apart by segment ids
(0 = padding) and with positions restarting at each sentence, so masks keep every
sentence to itself. Decoding runs one position at a time against a key/value cache.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from tl_jax.config import ModelConfig, d_ff
from tl_jax.models.dropout import dropout
from tl_jax.models.encoder import Encoder, embed_tokens, token_embedding
from tl_jax.models.layers import MLP, Attention, layer_norm, residual


def segment_mask(query_segments, key_segments, causal: bool = False):
  """[B, 1, Q, K]: a query sees keys of its own segment; padding queries see everything.

  Letting padding rows attend somewhere keeps every softmax row non-empty; their
  outputs are never used.
  """
  mask = query_segments[:, None, :, None] == key_segments[:, None, None, :]
  if causal:
    q, k = query_segments.shape[1], key_segments.shape[1]
    mask &= jnp.arange(q)[:, None] >= jnp.arange(k)[None, :]
  return mask | (query_segments == 0)[:, None, :, None]


class DecoderLayer(nn.Module):
  config: ModelConfig
  d_ff: int
  deterministic: bool

  @nn.compact
  def __call__(self, y, memory, self_mask, cross_mask, decode_position=None, cache_len: int = 0,
               beams: int = 0, lineage=None):
    cfg, det = self.config, self.deterministic
    self_attention = lambda h: Attention(cfg, name="self_attention")(
        h, mask=self_mask, decode_position=decode_position, cache_len=cache_len, lineage=lineage)
    cross_attention = lambda h: Attention(cfg, name="cross_attention")(h, kv=memory, mask=cross_mask,
                                                                        beams=beams)
    mlp = lambda h: MLP(cfg, self.d_ff, name="mlp")(h, det)
    y = residual(cfg, det, "ln_self_attention", self_attention, y)
    y = residual(cfg, det, "ln_cross_attention", cross_attention, y)
    y = residual(cfg, det, "ln_mlp", mlp, y)
    return nn.with_logical_constraint(y, ("batch", "length", "embed"))


class Decoder(nn.Module):
  config: ModelConfig
  token_embed: nn.Embed

  @nn.compact
  def __call__(self, tokens, memory, self_mask, cross_mask, positions, *, deterministic: bool,
               decode_position=None, cache_len: int = 0, beams: int = 0, lineage=None,
               project: bool = True):
    cfg = self.config
    y = embed_tokens(cfg, self.token_embed, tokens, positions)
    y = dropout(cfg)(y, deterministic=deterministic)
    for i in range(cfg.decoder_layers):
      y = DecoderLayer(cfg, d_ff(cfg), deterministic, name=f"layer_{i}")(
          y, memory, self_mask, cross_mask, decode_position, cache_len, beams, lineage)
    if cfg.pre_ln:
      y = layer_norm(cfg, "ln_final")(y)
    if not project:
      return y
    return self.token_embed.attend(y)  # compute dtype: the loss upcasts inside its fused reductions


class Translator(nn.Module):
  """Encoder (`num_layers`) + decoder (`decoder_layers`) with shared embeddings."""
  config: ModelConfig
  vocab_size: int

  def setup(self):
    self.token_embed = token_embedding(self.config, self.vocab_size)
    self.encoder = Encoder(self.config, self.token_embed)
    self.decoder = Decoder(self.config, self.token_embed)

  def encode(self, src, src_segments, src_positions=None, *, deterministic: bool = True):
    return self.encoder(src, deterministic=deterministic, positions=src_positions,
                        mask=segment_mask(src_segments, src_segments))

  def decode(self, memory, src_segments, tgt, tgt_segments, tgt_positions=None, *,
             deterministic: bool = True, project: bool = True):
    """Logits [B, T, V] for every target position at once (teacher forcing); with
    `project=False`, the decoder's last hidden states [B, T, D] instead."""
    return self.decoder(tgt, memory, segment_mask(tgt_segments, tgt_segments, causal=True),
                        segment_mask(tgt_segments, src_segments), tgt_positions,
                        deterministic=deterministic, project=project)

  def decode_step(self, memory, src_segments, last_tokens, position, cache_len: int, beams: int = 1,
                  lineage=None):
    """Logits [B * beams, V] for one new target position of B unpacked sources (`memory`
    [B, S, D], `src_segments` [B, S]) with `beams` rows each, beam-major within a source.
    Updates the `cache` collection (keys and values of the target so far, one per row; with
    `lineage` [B, beams, >= cache_len], each row reads its earlier positions from the rows the
    table names: decoding.py). The source's keys and values are the `source_kv` collection: made
    on the first call, which must let it change (`mutable=["cache", "source_kv"]`), and passed
    in unchanged after that."""
    positions = jnp.full((last_tokens.shape[0], 1), position)
    cross_mask = (src_segments > 0)[:, None, None, :]
    logits = self.decoder(last_tokens[:, None], memory, None, cross_mask, positions,
                          deterministic=True, decode_position=position, cache_len=cache_len,
                          beams=beams, lineage=lineage)
    return logits[:, 0].astype(jnp.float32)

  def __call__(self, batch: dict, *, deterministic: bool = True, project: bool = True):
    """Logits [B, T, V]; with `project=False`, (the decoder's last hidden states [B, T, D], the
    float32 table [V, D] whose `attend` makes the logits), for a loss that projects them itself."""
    memory = self.encode(batch["src"], batch["src_segments"], batch["src_positions"],
                         deterministic=deterministic)
    out = self.decode(memory, batch["src_segments"], batch["tgt_in"], batch["tgt_segments"],
                      batch["tgt_positions"], deterministic=deterministic, project=project)
    return out if project else (out, self.token_embed.embedding)
