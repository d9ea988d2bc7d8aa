"""Autoregressive decoding, greedy and beam search, driven by a per-row step function.

The model side is one function, `step_fn(cache, last_tokens, position) -> (logits, cache)`:
it feeds `last_tokens` (BOS at position 0) and returns the logits for the next token.
Everything per row lives in `cache`, a pytree whose leaves all lead with the row axis, so
the decoders can reorder beams without knowing what the model stores. Both decoders are
`lax.while_loop`s with static shapes, so they jit whole and stop once no row can change.

A model that can lengthen its cache passes `grow(cache, length) -> cache`: the search then
starts with a cache of `cache_stages(max_len)[0]` positions and doubles it as the output
reaches each length, one while loop per stage, so a step reads (and beam search re-gathers)
a cache about as long as the output so far, not max_len. Masked positions add nothing, so the
outputs are those of one cache of max_len (up to the rounding of a reduction over another length).

A model that reads its cache by position can spare beam search the reordering: with
`beam_search(..., lineage=True)` the step function takes a fourth argument, `lineage`
(int32[B, beams, max_len]), and the search never moves the cache. Each row keeps what it
computed where it computed it; `lineage[b, k, t]` says which beam of example b wrote position t
of beam k's prefix, and the model reads that position from there. Re-gathering a key/value cache
by the surviving beams' parents copies all of it every step: on one H100 those gathers and a
memcpy after them took 177 of the 420 ms of kernels in a beam-4 search of the multi30k model
(L = 128), and the search through the table ran 1.90x as fast (2026-12-06, docs/BENCHMARKS.md).
The table itself is a few hundred kilobytes. On the CPU the table's gather is the slower way
(`translation.reorders_cache` picks by backend).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

StepFn = Callable[..., tuple[jax.Array, Any]]  # (cache, last_tokens, position[, lineage])
GrowFn = Callable[[Any, int], Any]

# The first cache length of a staged search. Translation outputs are mostly short (Multi30k's
# ~15-30 tokens) while max_len is the training length (128): every step of a beam search re-gathers
# the whole cache: on a 2-core CPU a beam-4 step of the multi30k model (32 sources of 20 tokens)
# took 137 ms with 128 positions and 74 ms with 32 (2026-12-05; docs/BENCHMARKS.md, Decoding, has
# the bench/decode.py rows). Doubling from here keeps the compiled copies of the step to
# log2(max_len / 32) + 1.
FIRST_CACHE_STAGE = 32

# Finite stand-in for log(0): dead beams and empty slots still go through sums, divisions
# and top-k, where an infinity could turn into nan (-inf - -inf, inf * 0).
NEG_INF = -1.0e9
_DEAD = NEG_INF / 2  # anything at or below this is an empty slot or a dead beam


def tile_beams(tree, beam_size: int):
  """Repeats every leaf's rows beam_size times: [B, ...] -> [B*beam_size, ...].

  Row b*beam_size + k is a copy of row b, the layout `beam_search` expects.
  """
  return jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0), tree)


def read_through_lineage(cache: jax.Array, lineage: jax.Array) -> jax.Array:
  """[B*K, C, ...]: position t of row b*K + k read from row b*K + lineage[b, k, t] of `cache`
  [B*K, C, ...], for a lineage table [B, K, >= C] (module docstring). The beams of one example
  read only each other's rows: the gather runs along the beam axis, example by example."""
  B, K = lineage.shape[:2]
  C = cache.shape[1]
  by_example = cache.reshape((B, K) + cache.shape[1:])
  index = lineage[:, :, :C].reshape((B, K, C) + (1,) * (cache.ndim - 2))
  return jnp.take_along_axis(by_example, index, axis=1).reshape(cache.shape)


def cache_stages(max_len: int) -> tuple[int, ...]:
  """The cache lengths a staged search moves through: FIRST_CACHE_STAGE, twice that, ..., then
  max_len."""
  stages, first = [], FIRST_CACHE_STAGE
  while first < max_len:
    stages.append(first)
    first *= 2
  return (*stages, max_len)


def _staged_loop(cond, body, state, max_len: int, grow: GrowFn | None):
  """`lax.while_loop(cond, body, state)`, run in stages when `grow` is given: each stage grows
  `state.cache` to its length and stops at it (or at `cond`). `state` has fields i and cache."""
  if grow is None:
    return lax.while_loop(cond, body, state)
  for end in cache_stages(max_len):
    state = state._replace(cache=grow(state.cache, end))
    state = lax.while_loop(lambda s, end=end: (s.i < end) & cond(s), body, state)
  return state


def length_penalty_divisor(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT's ((5 + length) / 6) ** alpha, in float32."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** jnp.float32(alpha)


class _GreedyState(NamedTuple):
  i: jax.Array      # tokens generated so far (= position of the next input)
  cache: Any        # leaves [B, ...]
  last: jax.Array   # int32[B], the token to feed next
  out: jax.Array    # int32[B, L], pad beyond i
  done: jax.Array   # bool[B], the row has emitted EOS


def greedy_decode(step_fn: StepFn, cache, batch_size: int, max_len: int, bos_id: int, eos_id: int,
                  pad_id: int = 0, grow: GrowFn | None = None) -> jax.Array:
  """int32[B, max_len]: argmax tokens after BOS; after a row's EOS, its positions hold pad_id.
  With `grow`, the cache is lengthened in stages (module docstring)."""
  if max_len < 1:
    raise ValueError(f"max_len must be at least 1, got {max_len}")

  def cond(s: _GreedyState):
    return (s.i < max_len) & ~jnp.all(s.done)

  def body(s: _GreedyState) -> _GreedyState:
    logits, cache = step_fn(s.cache, s.last, s.i)
    token = jnp.argmax(logits.astype(jnp.float32), axis=-1).astype(jnp.int32)
    # Finished rows keep being stepped (the batch moves together) but emit padding.
    token = jnp.where(s.done, jnp.int32(pad_id), token)
    out = lax.dynamic_update_slice(s.out, token[:, None], (jnp.int32(0), s.i))
    return _GreedyState(s.i + 1, cache, token, out, s.done | (token == eos_id))

  state = _GreedyState(jnp.int32(0), cache, jnp.full((batch_size,), bos_id, jnp.int32),
                       jnp.full((batch_size, max_len), pad_id, jnp.int32),
                       jnp.zeros((batch_size,), bool))
  return _staged_loop(cond, body, state, max_len, grow).out


class _BeamState(NamedTuple):
  i: jax.Array           # tokens generated so far (= position of the next input)
  alive_seq: jax.Array   # int32[B, K, L], pad beyond i
  alive_logp: jax.Array  # float32[B, K], sum of log-probs; NEG_INF for dead beams; sorted
  alive_last: jax.Array  # int32[B, K], the token to feed next
  cache: Any             # leaves [B*K, ...], row b*K + k belongs to alive beam k of example b
  fin_seq: jax.Array     # int32[B, K, L], EOS then pad
  fin_score: jax.Array   # float32[B, K], length-penalised; NEG_INF for empty slots; sorted
  lineage: Any           # int32[B, K, L] (module docstring), or None: the cache follows its beams


def _take_beams(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x[b, idx[b, j], ...] for x [B, n, ...] and idx [B, m]."""
  return jax.vmap(lambda row, j: row[j])(x, idx)


def beam_search(step_fn: StepFn, cache, batch_size: int, beam_size: int, max_len: int, bos_id: int,
                eos_id: int, length_penalty: float = 0.6, pad_id: int = 0,
                grow: GrowFn | None = None, lineage: bool = False) -> tuple[jax.Array, jax.Array]:
  """(sequences int32[B, beam_size, max_len], scores float32[B, beam_size]), best first.

  `cache` must already be tiled to B*beam_size rows (tile_beams). Score = sum of log-probs /
  ((5 + length) / 6) ** length_penalty, length counting tokens up to and including EOS.
  Hypotheses still unfinished at max_len are scored the same way (length max_len) and are
  ranked with the finished ones only for examples with fewer than beam_size finished. After
  EOS positions hold pad_id. Slots no hypothesis could fill (vocabulary too small for the
  beam) get score -inf and an all-pad sequence.

  Stops once every example has beam_size finished hypotheses (fairseq's rule; with
  beam_size=1 this is exactly greedy decoding). Only an EOS among the best beam_size
  candidates of a step finishes a hypothesis. With `grow`, the cache is lengthened in stages;
  with `lineage`, the cache stays where each row wrote it and `step_fn` reads it through the
  lineage table (module docstring).
  """
  if max_len < 1:
    raise ValueError(f"max_len must be at least 1, got {max_len}")
  B, K, L = batch_size, beam_size, max_len
  f32 = jnp.float32
  own_beams = jnp.broadcast_to(jnp.arange(K, dtype=jnp.int32)[None, :, None], (B, K, 1))

  def penalty(length):
    return length_penalty_divisor(length, length_penalty)

  def cond(s: _BeamState):
    # fairseq's rule: an example is done once beam_size hypotheses have finished (or no
    # beam is alive). This makes beam_size=1 exactly greedy decoding.
    full = jnp.min(s.fin_score, axis=1) > _DEAD
    no_alive = jnp.max(s.alive_logp, axis=1) <= _DEAD
    return (s.i < L) & ~jnp.all(full | no_alive)

  def body(s: _BeamState) -> _BeamState:
    tokens = s.alive_last.reshape(B * K)
    if lineage:
      logits, cache = step_fn(s.cache, tokens, s.i, s.lineage)
    else:
      logits, cache = step_fn(s.cache, tokens, s.i)
    V = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(f32), axis=-1).reshape(B, K, V)
    cand = (s.alive_logp[:, :, None] + logp).reshape(B, K * V)
    # 2K candidates: even if K of them end in EOS, K remain to keep the beam full.
    cand_logp, flat = lax.top_k(cand, min(2 * K, K * V))
    parent, token = flat // V, (flat % V).astype(jnp.int32)
    seqs = _take_beams(s.alive_seq, parent)
    seqs = lax.dynamic_update_slice(seqs, token[:, :, None], (jnp.int32(0), jnp.int32(0), s.i))
    is_eos = token == eos_id

    # Finished: merge with the kept set, old ones first so ties keep the earlier hypothesis.
    # Only EOS among the best K candidates finishes a hypothesis (as fairseq): a runner-up
    # EOS never displaces the continuations that rank above it.
    top_k = jnp.arange(cand_logp.shape[1]) < K
    new_score = jnp.where(is_eos & top_k & (cand_logp > _DEAD), cand_logp / penalty(s.i + 1), NEG_INF)
    fin_score, idx = lax.top_k(jnp.concatenate([s.fin_score, new_score], axis=1), K)
    fin_seq = _take_beams(jnp.concatenate([s.fin_seq, seqs], axis=1), idx)

    # Alive: the best K candidates that did not end in EOS.
    alive_logp, idx = lax.top_k(jnp.where(is_eos, NEG_INF, cand_logp), K)
    parents = _take_beams(parent, idx)
    if lineage:
      # Beam k now continues its parent's prefix, read where the parent read it; the position
      # it writes next step is its own. (After the last step i + 1 = L clamps to L - 1: unused.)
      new_lineage = lax.dynamic_update_slice(_take_beams(s.lineage, parents), own_beams,
                                             (jnp.int32(0), jnp.int32(0), s.i + 1))
    else:
      rows = (jnp.arange(B, dtype=jnp.int32)[:, None] * K + parents).reshape(-1)
      cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), cache)
      new_lineage = None
    return _BeamState(s.i + 1, _take_beams(seqs, idx), alive_logp, _take_beams(token, idx), cache,
                      fin_seq, fin_score, new_lineage)

  # Only beam 0 is alive at first: the K rows hold the same prefix, and letting all of them
  # expand would fill the beam with K copies of each continuation.
  alive_logp = jnp.full((B, K), NEG_INF, f32).at[:, 0].set(0.0)
  init = _BeamState(
      i=jnp.int32(0), alive_seq=jnp.full((B, K, L), pad_id, jnp.int32), alive_logp=alive_logp,
      alive_last=jnp.full((B, K), bos_id, jnp.int32), cache=cache,
      fin_seq=jnp.full((B, K, L), pad_id, jnp.int32), fin_score=jnp.full((B, K), NEG_INF, f32),
      lineage=jnp.broadcast_to(own_beams, (B, K, L)) if lineage else None)
  s = _staged_loop(cond, body, init, L, grow)

  # Unfinished beams have length i (= L unless the loop stopped early, and then they are
  # either dead or cannot beat a full finished set, so they are not used).
  n_finished = jnp.sum(s.fin_score > _DEAD, axis=1)
  alive_score = jnp.where(s.alive_logp > _DEAD, s.alive_logp / penalty(s.i), NEG_INF)
  alive_score = jnp.where((n_finished < K)[:, None], alive_score, NEG_INF)
  scores, idx = lax.top_k(jnp.concatenate([s.fin_score, alive_score], axis=1), K)
  seqs = _take_beams(jnp.concatenate([s.fin_seq, s.alive_seq], axis=1), idx)
  valid = scores > _DEAD
  seqs = jnp.where(valid[:, :, None], seqs, jnp.int32(pad_id))
  return seqs, jnp.where(valid, scores, -jnp.inf).astype(f32)
