"""The translation model: cached decoding equals teacher forcing; packing isolates sentences."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.config import ModelConfig
from tl_jax.models.encoder_decoder import Translator

V = 50


def config(**kw):
  base = dict(num_layers=2, decoder_layers=2, d_model=32, num_heads=4, max_len=32, dropout=0.0,
              dtype="float32", positions="sinusoidal")
  base.update(kw)
  return ModelConfig(**base)


def unpacked(src, tgt):
  ones = lambda x: (x > 0).astype(jnp.int32)
  pos = lambda x: jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)
  return {"src": src, "src_segments": ones(src), "src_positions": pos(src),
          "tgt_in": tgt, "tgt_segments": jnp.ones_like(tgt), "tgt_positions": pos(tgt)}


def init(cfg):
  model = Translator(cfg, V)
  src = jax.random.randint(jax.random.key(0), (3, 10), 5, V).at[1, 7:].set(0)
  tgt = jax.random.randint(jax.random.key(1), (3, 8), 5, V)
  params = nn.meta.unbox(model.init(jax.random.key(2), unpacked(src, tgt))["params"])
  return model, params, src, tgt


@pytest.mark.parametrize("pre_ln,beams", [(False, 1), (True, 1), (False, 3)])
def test_cached_decoding_equals_teacher_forcing(pre_ln, beams):
  """One position at a time against the key/value cache gives the teacher-forced logits; with
  `beams`, each source's rows (each with its own target) read its keys and values, projected
  once on the first step, as if the source were repeated for every row."""
  model, params, src, _ = init(config(pre_ln=pre_ln))
  tgt = jax.random.randint(jax.random.key(3), (src.shape[0] * beams, 8), 5, V)
  full = model.apply({"params": params}, unpacked(jnp.repeat(src, beams, axis=0), tgt))
  segments = (src > 0).astype(jnp.int32)
  memory = model.apply({"params": params}, src, segments, method=Translator.encode)
  variables, steps = {"params": params}, []
  for t in range(tgt.shape[1]):
    logits, mutated = model.apply(variables, memory, segments, tgt[:, t], t, 8, beams,
                                  method=Translator.decode_step, mutable=["cache", "source_kv"])
    if t == 0:
      assert jax.tree.leaves(mutated["source_kv"])[0].shape[0] == src.shape[0]  # not per row
    variables = {"params": params, **mutated}
    steps.append(logits)
  np.testing.assert_allclose(jnp.stack(steps, axis=1), full, rtol=1e-4, atol=1e-4)


def test_packed_rows_keep_sentences_apart():
  """Two pairs packed into one row give the logits each gets alone."""
  model, params, src, tgt = init(config())
  a_src, b_src = src[0, :4], src[2, :5]
  a_tgt, b_tgt = tgt[0, :3], tgt[2, :4]
  row = lambda a, b, n: jnp.concatenate([a, b, jnp.zeros(n - len(a) - len(b), jnp.int32)])[None]
  seg = lambda a, b, n: row(jnp.ones_like(a), 2 * jnp.ones_like(b), n)
  pos = lambda a, b, n: row(jnp.arange(len(a)), jnp.arange(len(b)), n)
  packed = {"src": row(a_src, b_src, 12), "src_segments": seg(a_src, b_src, 12),
            "src_positions": pos(a_src, b_src, 12), "tgt_in": row(a_tgt, b_tgt, 9),
            "tgt_segments": seg(a_tgt, b_tgt, 9), "tgt_positions": pos(a_tgt, b_tgt, 9)}
  together = model.apply({"params": params}, packed)[0]
  alone_a = model.apply({"params": params}, unpacked(a_src[None], a_tgt[None]))[0]
  alone_b = model.apply({"params": params}, unpacked(b_src[None], b_tgt[None]))[0]
  np.testing.assert_allclose(together[:3], alone_a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(together[3:7], alone_b, rtol=1e-4, atol=1e-4)


def test_embeddings_are_shared():
  _, params, _, _ = init(config())
  assert sorted(params) == ["decoder", "encoder", "token_embed"]
  assert not any(p.shape == (32, V) for p in jax.tree.leaves(params))
