"""Greedy and beam-search decoding on toy step functions whose right answers we know.

Two kinds of toy model:
* `HistoryModel`: random bigram logits plus a term from a per-row hidden state that
  accumulates the whole token history, so a beam whose cache rows are gathered from the
  wrong parent gets different logits, and teacher-forced rescoring catches it;
* `TableModel`: hand-written log-probs indexed by (position, last token), for cases where
  we want a specific trap (a greedy lure, a short-vs-long choice, a spelled target).

Models are built with numpy's seeded generator so the cases are the same on every jax.
Each model is a static `apply(params, cache, last, position)` plus its arrays, so the
decoders are compiled once per shape and reused across seeds (the file stays fast).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tl_jax.models import decoding
from tl_jax.models.decoding import beam_search, greedy_decode, length_penalty_divisor, tile_beams

PAD, EOS, BOS = 0, 1, 2
SUPPRESSED = -30.0  # a logit low enough that the token never reaches a candidate list


class ToyModel:
  params: dict

  @property
  def step(self):
    """The step function with this model's arrays bound, as a caller would pass it."""
    return functools.partial(self.apply, self.params)


class HistoryModel(ToyModel):
  """Bigram logits + a projection of a hidden state that sums the token history.

  eos: "free" lets EOS compete like any token; "terminal" allows EOS only right after
  token 3 (where it is the argmax), so EOS is never a runner-up; "never" suppresses it.
  """

  def __init__(self, seed: int, vocab: int = 12, dim: int = 8, eos: str = "free",
               eos_bias: float = 0.0):
    rng = np.random.RandomState(seed)
    table = rng.normal(size=(vocab, vocab)) * 1.5
    proj = rng.normal(size=(dim, vocab))
    table[:, [PAD, BOS]] = SUPPRESSED  # so pad in an output can only come from the decoder
    proj[:, [PAD, BOS]] = 0.0
    if eos == "free":
      table[:, EOS] += eos_bias
    else:
      table[:, EOS] = SUPPRESSED
      proj[:, EOS] = 0.0
      if eos == "terminal":
        table[3, EOS] = 30.0
    self.params = {"table": jnp.asarray(table, jnp.float32),
                   "emb": jnp.asarray(rng.normal(size=(vocab, dim)), jnp.float32),
                   "proj": jnp.asarray(proj, jnp.float32)}
    self.dim = dim

  def init_cache(self, n: int, seed: int = 0):
    rng = np.random.RandomState(1000 + seed)
    return {"h": jnp.asarray(rng.normal(size=(n, self.dim)) * 2.0, jnp.float32),
            "step": jnp.zeros((n,), jnp.int32)}

  @staticmethod
  def apply(params, cache, last, position):
    h = 0.8 * cache["h"] + params["emb"][last]
    logits = params["table"][last] + jnp.tanh(h) @ params["proj"]
    # Every row must be at `position`; if not, logits go flat and the scores show it.
    logits = jnp.where((cache["step"] == position)[:, None], logits, 0.0)
    return logits, {"h": h, "step": cache["step"] + 1}


class CacheModel(HistoryModel):
  """HistoryModel whose history is a cache with one slot per position, [rows, positions, dim],
  read through a mask as attention reads its keys: a cache shorter than the output so far
  (written past its end, which XLA clamps to the last slot) changes the logits."""

  def init_cache(self, n: int, seed: int = 0, length: int = 1):
    rng = np.random.RandomState(1000 + seed)
    start = np.zeros((n, length, self.dim), np.float32)
    start[:, 0] = rng.normal(size=(n, self.dim)) * 2.0  # position 0 differs per row
    return {"emb": jnp.asarray(start)}

  @staticmethod
  def grow(cache, length: int):
    return {"emb": jnp.pad(cache["emb"], [(0, 0), (0, length - cache["emb"].shape[1]), (0, 0)])}

  @staticmethod
  def apply(params, cache, last, position):
    slots = jnp.arange(cache["emb"].shape[1])
    emb = lax.dynamic_update_slice(cache["emb"], cache["emb"][:, position][:, None] +
                                   params["emb"][last][:, None], (0, position, 0))
    weights = jnp.where(slots <= position, 0.8 ** (position - slots), 0.0)
    h = jnp.einsum("nld,l->nd", emb, weights)
    return params["table"][last] + jnp.tanh(h) @ params["proj"], {"emb": emb}


class LineageModel(CacheModel):
  """CacheModel for a search that never reorders the cache: each row writes its own slot and
  reads its prefix through the lineage table, as the translator's self-attention does."""

  @staticmethod
  def apply(params, cache, last, position, lineage):
    slots = jnp.arange(cache["emb"].shape[1])
    emb = lax.dynamic_update_slice(cache["emb"], cache["emb"][:, position][:, None] +
                                   params["emb"][last][:, None], (0, position, 0))
    weights = jnp.where(slots <= position, 0.8 ** (position - slots), 0.0)
    h = jnp.einsum("nld,l->nd", decoding.read_through_lineage(emb, lineage), weights)
    return params["table"][last] + jnp.tanh(h) @ params["proj"], {"emb": emb}


class TableModel(ToyModel):
  """Logits = log(probs[position, last]); probs given as {(pos or None, last): {token: p}}."""

  def __init__(self, rules: dict, vocab: int, max_len: int):
    probs = np.full((max_len, vocab, vocab), 1e-6)
    for (pos, last), dist in rules.items():  # a later rule replaces an earlier one's row
      for p in (range(max_len) if pos is None else [pos]):
        probs[p, last] = 1e-6
        for token, prob in dist.items():
          probs[p, last, token] = prob
    self.params = {"logits": jnp.asarray(np.log(probs), jnp.float32)}

  def init_cache(self, n: int, seed: int = 0):
    return {"step": jnp.zeros((n,), jnp.int32)}

  @staticmethod
  def apply(params, cache, last, position):
    return params["logits"][position, last], {"step": cache["step"] + 1}


class SpellModel(ToyModel):
  """Spells a per-row target (kept in the cache, so it must follow its beam) then EOS.

  EOS is suppressed where the target does not want it, so a row cut off by max_len has no
  finished hypothesis and its unfinished ones are returned.
  """

  def __init__(self, targets, vocab: int = 10):
    self.targets = jnp.asarray(targets, jnp.int32)
    self.params = {"ids": jnp.arange(vocab, dtype=jnp.int32)}

  def init_cache(self, n: int, seed: int = 0):
    assert n == self.targets.shape[0]
    return {"target": self.targets}

  @staticmethod
  def apply(params, cache, last, position):
    width = cache["target"].shape[1]
    want = cache["target"][:, jnp.minimum(position, width - 1)]
    logits = jnp.where(params["ids"] == want[:, None], 8.0, 0.0)
    logits = logits.at[:, EOS].set(jnp.where(want == EOS, 8.0, SUPPRESSED))
    return logits, cache


def teacher_forced_scores(step_fn, cache, seqs, alpha: float) -> np.ndarray:
  """Length-penalised log-prob of each row of seqs [N, L], re-running step_fn along it."""
  seqs = jnp.asarray(seqs)
  n, max_len = seqs.shape
  last = jnp.full((n,), BOS, jnp.int32)
  total, length = np.zeros(n), np.zeros(n)
  running = np.ones(n, bool)
  for t in range(max_len):
    logits, cache = step_fn(cache, last, jnp.int32(t))
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
    token = np.asarray(seqs[:, t])
    total += np.where(running, logp[np.arange(n), token], 0.0)
    length += running
    running &= token != EOS
    last = seqs[:, t]
  return total / ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6, 7))
def _beam_jit(apply, params, cache, batch, beam, max_len, alpha, pad_id):
  return beam_search(functools.partial(apply, params), cache, batch, beam, max_len, BOS, EOS,
                     length_penalty=alpha, pad_id=pad_id)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _greedy_jit(apply, params, cache, batch, max_len, pad_id):
  return greedy_decode(functools.partial(apply, params), cache, batch, max_len, BOS, EOS,
                       pad_id=pad_id)


def run_beam(model, batch: int, beam: int, max_len: int, alpha: float = 0.6, seed: int = 0,
             pad_id: int = PAD, cache=None):
  cache = tile_beams(model.init_cache(batch, seed) if cache is None else cache, beam)
  seqs, scores = _beam_jit(model.apply, model.params, cache, batch, beam, max_len, alpha, pad_id)
  return np.asarray(seqs), np.asarray(scores)


def run_greedy(model, batch: int, max_len: int, seed: int = 0, pad_id: int = PAD, cache=None):
  cache = model.init_cache(batch, seed) if cache is None else cache
  return np.asarray(_greedy_jit(model.apply, model.params, cache, batch, max_len, pad_id))


def test_tile_beams_repeats_rows_in_beam_major_order():
  tree = {"a": jnp.arange(6).reshape(2, 3), "b": (jnp.array([5.0, 7.0]),)}
  tiled = tile_beams(tree, 3)
  np.testing.assert_array_equal(tiled["a"], np.repeat(np.arange(6).reshape(2, 3), 3, axis=0))
  np.testing.assert_array_equal(tiled["b"][0], [5, 5, 5, 7, 7, 7])


@pytest.mark.parametrize("eos,alpha", [("terminal", 0.0), ("never", 0.6)])
def test_beam_size_one_is_greedy(eos, alpha):
  # With beam 1 every EOS among the top 2 candidates enters the finished set, so a runner-up
  # EOS may legitimately win over greedy's path; these models keep EOS off the runner-up
  # spot ("terminal": only as argmax, with alpha 0 so a longer path cannot out-score it).
  ended = []
  for seed in range(3):
    model = HistoryModel(seed, eos=eos)
    greedy = run_greedy(model, 4, 12, seed=seed)
    seqs, _ = run_beam(model, 4, 1, 12, alpha=alpha, seed=seed)
    np.testing.assert_array_equal(seqs[:, 0], greedy)
    ended.extend((greedy == EOS).any(axis=1))
  if eos == "terminal":
    assert any(ended) and not all(ended)  # rows that stop at EOS and rows cut by max_len


@pytest.mark.parametrize("alpha", [0.6, 0.0])
def test_beam_scores_sorted_and_equal_teacher_forced_rescoring(alpha):
  batch, beam, max_len = 3, 4, 10
  finished = unfinished = False
  for seed in range(3):
    model = HistoryModel(seed, eos="free")
    seqs, scores = run_beam(model, batch, beam, max_len, alpha=alpha, seed=seed)
    assert seqs.shape == (batch, beam, max_len) and scores.shape == (batch, beam)
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all(), scores
    # Rescoring starts from the untiled rows, so it only agrees if every beam's cache
    # followed its parent through the reorderings.
    rescored = teacher_forced_scores(model.step, tile_beams(model.init_cache(batch, seed), beam),
                                     seqs.reshape(batch * beam, max_len), alpha)
    np.testing.assert_allclose(scores.reshape(-1), rescored, rtol=1e-5, atol=1e-4)
    for b in range(batch):  # beam 0 alone at the start: no duplicated hypotheses
      assert len({tuple(s) for s in seqs[b]}) == beam
    finished |= bool((seqs == EOS).any())
    unfinished |= bool((seqs[:, :, -1] != PAD).any())
  assert finished and unfinished  # both kinds were rescored


def test_beam_at_least_as_good_as_greedy_on_random_models():
  # Not a theorem (greedy's prefix can be pruned), but it holds on these fixed cases, and a
  # search that scored or reordered wrongly would lose to greedy often.
  batch, beam, max_len, alpha = 4, 4, 10, 0.6
  strictly_better = 0
  for seed in range(3):
    model = HistoryModel(seed, eos="free")
    greedy = run_greedy(model, batch, max_len, seed=seed)
    greedy_score = teacher_forced_scores(model.step, model.init_cache(batch, seed), greedy, alpha)
    _, scores = run_beam(model, batch, beam, max_len, alpha=alpha, seed=seed)
    assert (scores[:, 0] >= greedy_score - 1e-4).all(), (scores[:, 0], greedy_score)
    strictly_better += int((scores[:, 0] > greedy_score + 1e-4).sum())
  assert strictly_better > 0


def test_beam_escapes_the_greedy_lure():
  # After BOS, A is a bit likelier than B; but A leads only to weak continuations, while B is
  # followed by EOS almost surely.
  a, b, c = 3, 4, 5
  model = TableModel({(0, BOS): {a: 0.5, b: 0.45, c: 0.05},
                      (None, a): {c: 0.5, EOS: 0.2, a: 0.15, b: 0.15},
                      (None, c): {EOS: 0.5, c: 0.3, a: 0.2},
                      (None, b): {EOS: 0.99, a: 0.01}}, vocab=6, max_len=6)
  greedy = run_greedy(model, 1, 6)
  np.testing.assert_array_equal(greedy[0], [a, c, EOS, PAD, PAD, PAD])
  seqs, scores = run_beam(model, 1, 2, 6)
  np.testing.assert_array_equal(seqs[0, 0], [b, EOS, PAD, PAD, PAD, PAD])
  greedy_score = teacher_forced_scores(model.step, model.init_cache(1), greedy, 0.6)[0]
  expected = np.log(0.45 * 0.99) / length_penalty_divisor(2, 0.6)  # GNMT: ((5 + 2) / 6) ** 0.6
  np.testing.assert_allclose(scores[0, 0], expected, rtol=1e-4)
  assert scores[0, 0] > greedy_score + 0.5


@pytest.mark.parametrize("pad_id", [0, 9])
def test_eos_then_padding_and_max_len(pad_id):
  # Row 0 ends early, row 1 exactly at max_len, row 2 is cut off by max_len.
  targets = [[3, 4, EOS, 0, 0, 0, 0, 0, 0],
             [5, 6, 7, 8, 3, EOS, 0, 0, 0],
             [3, 3, 4, 4, 5, 5, 6, 6, EOS]]
  model = SpellModel(targets)
  max_len = 6
  expected = np.array([[3, 4, EOS, pad_id, pad_id, pad_id],
                       [5, 6, 7, 8, 3, EOS],
                       [3, 3, 4, 4, 5, 5]])
  greedy = run_greedy(model, 3, max_len, pad_id=pad_id)
  np.testing.assert_array_equal(greedy, expected)
  seqs, scores = run_beam(model, 3, 3, max_len, pad_id=pad_id)
  assert seqs.shape == (3, 3, max_len)
  np.testing.assert_array_equal(seqs[:, 0], expected)
  for row in seqs.reshape(-1, max_len):  # every hypothesis: nothing but pad after its EOS
    ends = np.flatnonzero(row == EOS)
    if ends.size:
      assert (row[ends[0] + 1:] == pad_id).all(), row
  # The cut-off row is scored over max_len tokens, like any unfinished hypothesis.
  rescored = teacher_forced_scores(model.step, model.init_cache(3), expected, 0.6)
  np.testing.assert_allclose(scores[:, 0], rescored, rtol=1e-5, atol=1e-5)


def test_batch_rows_decode_independently():
  model = HistoryModel(7, eos="free")
  batch, beam, max_len = 3, 3, 9
  cache = model.init_cache(batch, seed=5)
  greedy = run_greedy(model, batch, max_len, cache=cache)
  seqs, scores = run_beam(model, batch, beam, max_len, cache=cache)
  assert len({tuple(r) for r in greedy}) == batch  # rows differ, so mixing them would show
  for b in range(batch):
    row = jax.tree.map(lambda x: x[b:b + 1], cache)
    np.testing.assert_array_equal(run_greedy(model, 1, max_len, cache=row)[0], greedy[b])
    row_seqs, row_scores = run_beam(model, 1, beam, max_len, cache=row)
    np.testing.assert_array_equal(row_seqs[0], seqs[b])
    np.testing.assert_allclose(row_scores[0], scores[b], rtol=1e-6)


def test_jit_matches_eager():
  # The caller's pattern: step function bound by partial, sizes static, cache traced.
  model = HistoryModel(3, eos="free")
  batch, beam, max_len = 2, 3, 8
  cache = model.init_cache(batch)
  greedy_jit = jax.jit(functools.partial(greedy_decode, model.step, batch_size=batch,
                                         max_len=max_len, bos_id=BOS, eos_id=EOS))
  beam_jit = jax.jit(functools.partial(beam_search, model.step, batch_size=batch, beam_size=beam,
                                       max_len=max_len, bos_id=BOS, eos_id=EOS))
  np.testing.assert_array_equal(greedy_jit(cache),
                                greedy_decode(model.step, cache, batch, max_len, BOS, EOS))
  seqs, scores = beam_jit(tile_beams(cache, beam))
  eager_seqs, eager_scores = beam_search(model.step, tile_beams(cache, beam), batch, beam, max_len,
                                         BOS, EOS)
  np.testing.assert_array_equal(seqs, eager_seqs)
  np.testing.assert_allclose(scores, eager_scores, rtol=1e-6)
  assert seqs.dtype == jnp.int32 and scores.dtype == jnp.float32


def test_length_penalty_moves_preference_towards_longer_hypotheses():
  # [x, EOS] has log-prob log 0.5; [y, y, y, y, y, EOS] has log 0.4. Raw sums prefer the short
  # one; alpha = 1 divides the long one by 11/6 and the short by 7/6, which flips the order.
  x, y, z = 3, 4, 5
  rules = {(0, BOS): {x: 0.5, y: 0.4, z: 0.1}, (None, x): {EOS: 1.0}, (None, z): {EOS: 1.0},
           (None, y): {y: 1.0}, (5, y): {EOS: 1.0}}
  model = TableModel(rules, vocab=6, max_len=8)
  short = [x, EOS] + [PAD] * 6
  long = [y] * 5 + [EOS] + [PAD] * 2
  seqs, scores = run_beam(model, 1, 2, 8, alpha=0.0)
  np.testing.assert_array_equal(seqs[0], [short, long])
  np.testing.assert_allclose(scores[0], np.log([0.5, 0.4]), atol=1e-4)
  seqs, scores = run_beam(model, 1, 2, 8, alpha=1.0)
  np.testing.assert_array_equal(seqs[0], [long, short])
  np.testing.assert_allclose(scores[0], [np.log(0.4) * 6 / 11, np.log(0.5) * 6 / 7], atol=1e-4)


def test_unfinished_hypotheses_compete_only_while_the_finished_set_is_short():
  # EOS straight away (0.3) or y forever (0.7): the y path never finishes but scores better.
  # After y, four other tokens each beat EOS, so no candidate list holds a y...EOS.
  y = 3
  model = TableModel({(0, BOS): {EOS: 0.3, y: 0.7}, (None, y): {y: 0.996, 4: 1e-3, 5: 1e-3, 6: 1e-3,
                                                                 7: 1e-3}}, vocab=8, max_len=4)
  # Beam 1: the runner-up EOS does not finish (only the top beam_size candidates can), so
  # the result is the greedy path, unfinished at max_len.
  seqs, scores = run_beam(model, 1, 1, 4)
  np.testing.assert_array_equal(seqs[0], [[y] * 4])
  # Beam 2: the set is short, so the unfinished one competes, scored at length max_len.
  seqs, scores = run_beam(model, 1, 2, 4)
  np.testing.assert_array_equal(seqs[0], [[y] * 4, [EOS, PAD, PAD, PAD]])
  np.testing.assert_allclose(scores[0], [np.log(0.7 * 0.996**3) / length_penalty_divisor(4, 0.6),
                                         np.log(0.3) / length_penalty_divisor(1, 0.6)], atol=1e-4)


def test_eos_candidates_do_not_shrink_the_alive_beam():
  # At position 1 the candidates rank [b d] 0.45, [a EOS] 0.33, [a c] 0.22. Were only beam_size
  # candidates drawn, [a EOS] would take one of the two and [a c] (whose [a c EOS] is the second
  # best answer) would be lost.
  a, b, c, d = 3, 4, 5, 6
  model = TableModel({(0, BOS): {a: 0.55, b: 0.45}, (None, a): {EOS: 0.6, c: 0.4},
                      (None, b): {d: 1.0}, (None, c): {EOS: 1.0}, (None, d): {EOS: 0.3, d: 0.7}},
                     vocab=7, max_len=4)
  seqs, scores = run_beam(model, 1, 2, 4, alpha=0.0)
  np.testing.assert_array_equal(seqs[0], [[a, EOS, PAD, PAD], [a, c, EOS, PAD]])
  np.testing.assert_allclose(scores[0], np.log([0.33, 0.22]), atol=1e-4)


def test_decoding_stops_once_no_row_can_change():
  # Rows finish after 3 and 6 tokens; max_len is 12. Greedy stops when every row has emitted
  # EOS; beam 1 (alpha 0.6) when the runner-up's bound, about -8 / ((5 + 12) / 6) ** 0.6,
  # falls below the finished score (about 0), which happens as soon as each row finishes.
  targets = [[3, 4, EOS, 0, 0, 0], [5, 6, 7, 8, 3, EOS]]
  model = SpellModel(targets)
  positions = []

  def counting_step(cache, last, position):
    jax.debug.callback(lambda p: positions.append(int(p)), position)
    return model.step(cache, last, position)

  cache = model.init_cache(2)
  greedy_decode(counting_step, cache, 2, 12, BOS, EOS)
  jax.effects_barrier()
  assert sorted(positions) == list(range(6))
  positions.clear()
  seqs, _ = beam_search(counting_step, tile_beams(cache, 1), 2, 1, 12, BOS, EOS)
  jax.effects_barrier()
  assert sorted(positions) == list(range(6))
  np.testing.assert_array_equal(seqs[:, 0, :6], targets)


@pytest.mark.parametrize("beam", [1, 4])
def test_translate_batch_withholds_eos_until_min_len(beam):
  """A Translator whose every step puts nearly all mass on </s>: translate_batch stops at once,
  unless min_len holds </s> back; then the best ordinary token fills the positions before it."""
  import flax.linen as nn
  from tl_jax.config import ModelConfig
  from tl_jax.data.tokenizer import EOS_ID, PAD_ID
  from tl_jax.models.encoder_decoder import Translator
  from tl_jax.tasks.translation import translate_batch

  vocab, max_len = 100, 6
  model = Translator(ModelConfig(num_layers=1, decoder_layers=1, d_model=16, num_heads=2,
                                 max_len=16, dropout=0.0, dtype="float32", positions="sinusoidal"), 128)
  src = jnp.array([[7, 8, 9, EOS_ID], [11, 12, EOS_ID, PAD_ID]], jnp.int32)
  segments = (src != PAD_ID).astype(jnp.int32)
  params = model.init(jax.random.key(0), {"src": src, "src_segments": segments, "src_positions": src,
                                          "tgt_in": src, "tgt_segments": segments, "tgt_positions": src})
  params = jax.tree.map(np.array, nn.meta.unbox(params["params"]))  # writable copies
  # The last norm outputs 5 * e_0 whatever its input, and </s>'s embedding is 5 * e_0: logits
  # are 25 for </s> and 5 * E[j, 0] (about 0.1) for every other token j, at every step.
  ln = params["decoder"]["layer_0"]["ln_mlp"]
  ln["scale"][:] = 0.0
  ln["bias"][:] = 0.0
  ln["bias"][0] = 5.0
  table = params["token_embed"]["embedding"]
  table[EOS_ID] = 0.0
  table[EOS_ID, 0] = 5.0
  best = 5 + int(np.argmax(table[5:vocab, 0]))  # the ordinary token with the highest logit

  search = jax.jit(functools.partial(translate_batch, model=model, vocab_size=vocab, beam_size=beam,
                                     length_penalty=0.6, max_len=max_len))
  decode = lambda min_len: np.asarray(search(params, src, min_len=min_len))  # one compile

  np.testing.assert_array_equal(decode(0), [[EOS_ID] + [PAD_ID] * 5] * 2)
  np.testing.assert_array_equal(decode(3), [[best] * 3 + [EOS_ID, PAD_ID, PAD_ID]] * 2)
  np.testing.assert_array_equal(decode(max_len), [[best] * max_len] * 2)


@pytest.mark.parametrize("eos", ["free", "never"])
def test_a_cache_grown_in_stages_decodes_as_one_cache_of_max_len(monkeypatch, eos):
  """With `grow`, the search starts from a short cache and doubles it (2, 4, 8, then 11 here):
  the outputs are those of one cache of max_len, early stops (eos free) and full length alike;
  without growing, the short cache gives other outputs, so the comparison can tell."""
  monkeypatch.setattr(decoding, "FIRST_CACHE_STAGE", 2)
  assert decoding.cache_stages(11) == (2, 4, 8, 11) and decoding.cache_stages(2) == (2,)
  model, batch, beam, max_len = CacheModel(7, eos=eos, eos_bias=3.5), 3, 3, 11
  full = model.init_cache(batch, seed=1, length=max_len)
  short = model.init_cache(batch, seed=1, length=2)
  greedy = lambda cache, grow: np.asarray(jax.jit(functools.partial(
      greedy_decode, model.step, batch_size=batch, max_len=max_len, bos_id=BOS, eos_id=EOS,
      grow=grow))(cache))
  beams = lambda cache, grow: jax.jit(functools.partial(
      beam_search, model.step, batch_size=batch, beam_size=beam, max_len=max_len, bos_id=BOS,
      eos_id=EOS, grow=grow))(tile_beams(cache, beam))

  reference = greedy(full, None)
  np.testing.assert_array_equal(greedy(short, CacheModel.grow), reference)
  assert not np.array_equal(greedy(short, None), reference)
  seqs, scores = beams(full, None)
  staged_seqs, staged_scores = beams(short, CacheModel.grow)
  np.testing.assert_array_equal(staged_seqs, seqs)
  np.testing.assert_allclose(staged_scores, scores, rtol=1e-6)
  assert not np.array_equal(beams(short, None)[0], seqs)
  lengths = (np.asarray(seqs[:, 0]) != PAD).sum(axis=1)  # eos free: the search stops at 6
  assert (lengths.max() == max_len) == (eos == "never"), lengths


@pytest.mark.parametrize("eos,staged", [("free", False), ("never", False), ("free", True)])
def test_a_search_through_the_lineage_table_equals_one_that_reorders_the_cache(monkeypatch, eos,
                                                                              staged):
  """The same history model, its cache reordered every step or left in place and read through
  the lineage table: the same hypotheses and scores, with the cache grown in stages or not.
  Reading in place without the table (a model that ignores it) gives other outputs, so the
  comparison can tell."""
  monkeypatch.setattr(decoding, "FIRST_CACHE_STAGE", 2)
  kwargs = dict(eos=eos, eos_bias=3.5)
  reordered, in_place = CacheModel(7, **kwargs), LineageModel(7, **kwargs)
  batch, beam, max_len = 3, 3, 11
  cache = tile_beams(reordered.init_cache(batch, seed=2, length=2 if staged else max_len), beam)
  grow = CacheModel.grow if staged else None
  search = lambda step, lineage: jax.jit(functools.partial(
      beam_search, step, batch_size=batch, beam_size=beam, max_len=max_len, bos_id=BOS,
      eos_id=EOS, grow=grow, lineage=lineage))(cache)
  seqs, scores = search(reordered.step, False)
  table_seqs, table_scores = search(in_place.step, True)
  np.testing.assert_array_equal(table_seqs, seqs)
  np.testing.assert_allclose(table_scores, scores, rtol=1e-6)
  ignored = lambda cache, last, position, lineage: reordered.step(cache, last, position)
  assert not np.array_equal(search(ignored, True)[0], seqs)


def test_read_through_lineage_reads_each_position_from_the_row_the_table_names():
  B, K, C = 2, 3, 4
  cache = jnp.arange(B * K * C * 2).reshape(B * K, C, 2)
  lineage = jnp.asarray(np.random.RandomState(0).randint(0, K, (B, K, C + 3)), jnp.int32)
  out = np.asarray(decoding.read_through_lineage(cache, lineage))
  for b in range(B):
    for k in range(K):
      for t in range(C):
        np.testing.assert_array_equal(out[b * K + k, t], cache[b * K + lineage[b, k, t], t])


@pytest.mark.parametrize("min_len", [0, 10])
def test_translate_batch_reads_through_the_lineage_table_as_the_reordering_search(monkeypatch,
                                                                                 min_len):
  """A random float32 translator: beam 4 through the lineage table gives the outputs of the
  search that reorders its cache, outputs ending early (min_len 0) and forced to full length.
  Reading each row's own cache, as if the table were not there, changes some outputs, so the
  comparison can tell."""
  import flax.linen as nn
  from tl_jax.config import ModelConfig
  from tl_jax.data.tokenizer import EOS_ID, PAD_ID
  from tl_jax.models.encoder_decoder import Translator
  from tl_jax.tasks.translation import translate_batch

  vocab, max_len = 40, 10
  model = Translator(ModelConfig(num_layers=2, decoder_layers=2, d_model=32, num_heads=4,
                                 max_len=16, dropout=0.0, dtype="float32", positions="sinusoidal"), 48)
  src = jnp.asarray(np.random.RandomState(0).randint(5, vocab, (8, 6)), jnp.int32)
  src = src.at[:, -1].set(EOS_ID).at[2, 3:].set(PAD_ID)
  segments = (src != PAD_ID).astype(jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), {
      "src": src, "src_segments": segments, "src_positions": src, "tgt_in": src,
      "tgt_segments": segments, "tgt_positions": src})["params"])
  # BERT's initial scale gives every source nearly the same flat logits; larger weights make
  # the beams trade places, so a beam reading another's cache would change the outputs.
  params = jax.tree.map(lambda x: x * 10.0, params)
  search = lambda reorder: np.asarray(jax.jit(functools.partial(
      translate_batch, model=model, vocab_size=vocab, beam_size=4, length_penalty=0.6,
      max_len=max_len, min_len=min_len, reorder_cache=reorder))(params, src))
  reference = search(True)
  np.testing.assert_array_equal(search(False), reference)
  monkeypatch.setattr(decoding, "read_through_lineage", lambda cache, lineage: cache)
  assert not np.array_equal(search(False), reference)
