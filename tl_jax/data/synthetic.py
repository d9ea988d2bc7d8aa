"""A synthetic language: the embedded default corpus.

Text is generated deterministically from a seed, without end, from a small
grammar with nesting, long-range number agreement and Zipfian word choice, so
that masked-LM pretraining on CPU rewards bigger models. Every sentence is a
tree (`Node`) before it is words, and the tree carries what later tasks need:
  - translation: a "French" side re-renders the same tree with its own lexicon
    (indexed by each leaf's `lex`), its own word order (e.g. adjectives after
    the noun), and Det/Adj agreement from the NP's `gender` and `number`;
  - sentiment: sum the `polarity` of every Adj (weighted up under an
    intensifier Adv in its AdjP), flipping the sign inside a VP with
    `negated`; the sign of the sum is the label.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Callable, Iterator

import numpy as np

SPLITS = ("train", "eval")
MIN_WORDS = 200
ZIPF_EXPONENT = 1.1
MAX_NESTING = 4  # most NPs stacked on one root-to-leaf path
STOP = "."

# Distinct SeedSequence tags, so lexicon and splits never share a stream.
_STREAM_TAG = {"train": 1, "eval": 2}
_LEXICON_TAG = 0x1E71C0

# Grammar probabilities. Modifier odds shrink with nesting level so that
# deep, long sentences are occasional rather than typical.
_P_PLURAL = 0.4
_P_CONJOIN = 0.2
_P_ADJ = 0.4
_P_MORE_ADJ = 0.25
_MAX_ADJ = 3
_P_INTENSIFIER = 0.25
_P_MODIFIER = (0.0, 0.45, 0.25, 0.12)  # indexed by NP level 1..MAX_NESTING-1
_P_PP = 0.55  # else a relative clause
_P_SUBJECT_REL = 0.55  # else an object relative
_P_NEG = 0.12
_P_TRANSITIVE = 0.55
_P_ADVERB = 0.2
_MIN_SENTENCES, _MAX_SENTENCES = 2, 10

# Closed classes are small and fixed; open classes share the rest.
_CLOSED_SIZES = {"Det": 6, "P": 16, "Rel": 1, "Conj": 1, "Neg": 1}
_OPEN_SHARES = {"N": 0.40, "Adj": 0.18, "Vt": 0.16, "Vi": 0.12, "Adv": 0.14}

_ONSETS = ("", "b", "br", "bl", "d", "dr", "f", "fr", "fl", "g", "gr", "gl",
           "k", "kr", "kl", "l", "m", "n", "p", "pr", "pl", "r", "s", "st",
           "sk", "t", "tr", "v", "z", "sh", "ch", "th")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou", "ea")
_INNER_CODAS = ("", "", "", "", "n", "r", "l", "s")
_FINAL_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k", "st", "nt", "rd")


@dataclasses.dataclass(slots=True)
class Node:
  """A node of a sentence tree.

  Phrase labels: S, Clause, NP, AdjP, PP, RelC, VP. Leaf labels: Det, N, Adj,
  Adv, P, Rel, Vt, Vi, Neg, Conj, Stop. Leaves have `word` (source surface
  form) and `features["lex"]` (frequency rank within the category).
  Features by label: N has number ("sg"/"pl") and gender ("m"/"f"); NP copies
  its head noun's; Det and Vt/Vi have number; Adj has polarity (+1/0/-1);
  Adv has intensifier (bool); VP has number, negated, transitive and gap (True
  for the object-less VP of an object relative); RelC has kind ("subj"/"obj").
  """
  label: str
  children: list[Node] = dataclasses.field(default_factory=list)
  word: str | None = None
  features: dict[str, Any] = dataclasses.field(default_factory=dict)

  def leaves(self) -> Iterator[Node]:
    """Leaves in surface order."""
    if self.word is not None:
      yield self
      return
    for child in self.children:
      yield from child.leaves()

  def nesting(self) -> int:
    """Most NP nodes on one path from this node down to a leaf."""
    below = max((c.nesting() for c in self.children), default=0)
    return below + (self.label == "NP")


@dataclasses.dataclass(frozen=True)
class Category:
  """One lexical category; lexeme i is the i-th most frequent.

  `forms` maps a form name ("base", or "sg"/"pl" for inflected categories) to
  the surface word of every lexeme; `features` holds per-lexeme properties
  ("gender" for N, "polarity" for Adj, "intensifier" for Adv).
  """
  label: str
  forms: dict[str, tuple[str, ...]]
  features: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(next(iter(self.forms.values())))


def _zipf_cdf(n: int) -> list[float]:
  weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** ZIPF_EXPONENT
  cdf = np.cumsum(weights) / weights.sum()
  cdf[-1] = 1.0  # draws are < 1, so bisect never runs off the end
  return cdf.tolist()


def _uniform_source(rng: np.random.Generator,
                    block: int) -> Callable[[], float]:
  """Returns a draw-one-uniform callable; numpy is called once per block."""
  def stream() -> Iterator[float]:
    while True:
      yield from rng.random(block).tolist()
  return stream().__next__


def _check_split(split: str) -> int:
  if split not in _STREAM_TAG:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  return _STREAM_TAG[split]


class SyntheticLanguage:
  """A seeded synthetic language with a Zipfian lexicon and a nested grammar.

  Grammar: S -> Clause (Conj Clause)? "."; Clause -> NP VP;
  NP -> Det AdjP* N (PP | RelC)?; AdjP -> Adv(intensifier)? Adj;
  PP -> P NP; RelC -> Rel VP | Rel NP VP(gap: Vt only);
  VP -> Neg? (Vi | Vt NP) Adv?. Each verb agrees in number with its subject's
  head noun (the modified noun for a subject relative), and each Det with its
  noun, however much material sits in between.
  """

  def __init__(self, seed: int = 0, num_words: int = 3000):
    if isinstance(num_words, bool) or not isinstance(num_words, (int, np.integer)):
      raise ValueError(f"num_words must be an int, got {num_words!r}")
    if num_words < MIN_WORDS:
      raise ValueError(
          f"num_words must be at least {MIN_WORDS} to fill every word "
          f"category, got {num_words}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    self.seed = int(seed)
    self.num_words = int(num_words)
    self.lexicon: dict[str, Category] = self._build_lexicon()

    # Flat per-category arrays keep the generation hot path free of lookups.
    lex = self.lexicon
    self._det = lex["Det"].forms
    self._noun = lex["N"].forms
    self._vt = lex["Vt"].forms
    self._vi = lex["Vi"].forms
    self._adj = lex["Adj"].forms["base"]
    self._adv = lex["Adv"].forms["base"]
    self._prep = lex["P"].forms["base"]
    self._rel = lex["Rel"].forms["base"][0]
    self._conj = lex["Conj"].forms["base"][0]
    self._neg = lex["Neg"].forms["base"][0]
    self._gender = lex["N"].features["gender"]
    self._polarity = lex["Adj"].features["polarity"]
    self._num_intensifiers = sum(lex["Adv"].features["intensifier"])
    self._cdf = {name: _zipf_cdf(len(cat)) for name, cat in lex.items()}
    self._cdf_intensifier = _zipf_cdf(self._num_intensifiers)
    self._cdf_manner = _zipf_cdf(len(lex["Adv"]) - self._num_intensifiers)

    vocab = [w for cat in lex.values() for forms in cat.forms.values() for w in forms]
    self._vocabulary = tuple(vocab) + (STOP,)

  # -- lexicon ---------------------------------------------------------------

  def _build_lexicon(self) -> dict[str, Category]:
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, _LEXICON_TAG]))
    sizes = dict(_CLOSED_SIZES)
    open_total = self.num_words - sum(sizes.values())
    for name, share in _OPEN_SHARES.items():
      sizes[name] = int(open_total * share)
    sizes["N"] += open_total - sum(sizes[n] for n in _OPEN_SHARES)

    taken: set[str] = set()

    def syllable(final: bool) -> str:
      codas = _FINAL_CODAS if final else _INNER_CODAS
      return (_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
              + codas[rng.integers(len(codas))])

    def coin(num_syllables: int, make: Callable[[str], list[str]]) -> list[str]:
      # Rejection keeps all surface forms unique; growing the length after
      # repeated clashes guarantees termination for large lexicons.
      tries = 0
      while True:
        stem = "".join(syllable(i == num_syllables - 1) for i in range(num_syllables))
        forms = make(stem)
        if (len(stem) >= 2 and len(set(forms)) == len(forms)
            and not taken.intersection(forms)):
          taken.update(forms)
          return forms
        tries += 1
        if tries % 20 == 0:
          num_syllables += 1

    def vowel_final(stem: str) -> bool:
      return stem[-1] in "aeiou"

    makers: dict[str, Callable[[str], list[str]]] = {
        "N": lambda s: [s, s + ("s" if vowel_final(s) else "es")],
        "Vt": lambda s: [s + ("t" if vowel_final(s) else "et"), s],
        "Vi": lambda s: [s + ("t" if vowel_final(s) else "et"), s],
    }
    words: dict[str, list[list[str]]] = {name: [] for name in sizes}

    # Closed classes first and one syllable: function words are short.
    for name in _CLOSED_SIZES:
      for _ in range(sizes[name]):
        if name == "Det":  # suppletive sg/pl pair, like "this"/"these"
          words[name].append(coin(1, lambda s: [s]) + coin(1, lambda s: [s]))
        else:
          words[name].append(coin(1, lambda s: [s]))

    # Open classes interleaved by relative rank, so frequent words of every
    # category get the short stems (Zipf's law of abbreviation).
    order = sorted((rank / sizes[name], name) for name in _OPEN_SHARES
                   for rank in range(sizes[name]))
    for frac, name in order:
      num_syllables = min(3, 1 + int(2.0 * frac + rng.random()))
      words[name].append(coin(num_syllables, makers.get(name, lambda s: [s])))

    def forms(name: str, keys: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
      return {k: tuple(w[i] for w in words[name]) for i, k in enumerate(keys)}

    # One +, one - and three neutral per block of five ranks: about 20/20/60
    # by lexeme, and balanced by frequency mass too.
    polarity: list[int] = []
    while len(polarity) < sizes["Adj"]:
      polarity.extend(int(p) for p in rng.permutation([1, -1, 0, 0, 0]))
    num_intensifiers = max(3, min(10, sizes["Adv"] // 8))
    gender = tuple("m" if g else "f" for g in rng.integers(0, 2, sizes["N"]))

    return {
        "Det": Category("Det", forms("Det", ("sg", "pl"))),
        "N": Category("N", forms("N", ("sg", "pl")), {"gender": gender}),
        "Vt": Category("Vt", forms("Vt", ("sg", "pl"))),
        "Vi": Category("Vi", forms("Vi", ("sg", "pl"))),
        "Adj": Category("Adj", forms("Adj", ("base",)),
                        {"polarity": tuple(polarity[:sizes["Adj"]])}),
        "Adv": Category("Adv", forms("Adv", ("base",)), {
            "intensifier": tuple(i < num_intensifiers for i in range(sizes["Adv"]))}),
        "P": Category("P", forms("P", ("base",))),
        "Rel": Category("Rel", forms("Rel", ("base",))),
        "Conj": Category("Conj", forms("Conj", ("base",))),
        "Neg": Category("Neg", forms("Neg", ("base",))),
    }

  @property
  def vocabulary(self) -> list[str]:
    """Every surface form the language can emit, including "."."""
    return list(self._vocabulary)

  # -- generation ------------------------------------------------------------

  def sentence(self, rng: np.random.Generator) -> Node:
    """One sentence tree; draws from `rng` in blocks of uniforms."""
    return self._sentence(_uniform_source(rng, 64))

  def render(self, tree: Node) -> list[str]:
    """Source-language surface words of `tree`, in order."""
    out: list[str] = []
    stack = [tree]
    while stack:
      node = stack.pop()
      if node.word is not None:
        out.append(node.word)
      else:
        stack.extend(reversed(node.children))
    return out

  def document(self, index: int, split: str = "train") -> str:
    """Document `index` of `split`: 2-10 sentences, space-separated words."""
    tag = _check_split(split)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
      raise ValueError(f"index must be a non-negative int, got {index!r}")
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, tag, int(index)]))
    u = _uniform_source(rng, 256)
    count = _MIN_SENTENCES + int(u() * (_MAX_SENTENCES - _MIN_SENTENCES + 1))
    words: list[str] = []
    for _ in range(count):
      words.extend(self.render(self._sentence(u)))
    return " ".join(words)

  def documents(self, split: str = "train", start: int = 0) -> Iterator[str]:
    """Unbounded stream: document(start), document(start + 1), ..."""
    _check_split(split)  # fail at the call, not at the first next()
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
      raise ValueError(f"start must be a non-negative int, got {start!r}")

    def stream() -> Iterator[str]:
      index = int(start)
      while True:
        yield self.document(index, split)
        index += 1
    return stream()

  def _sentence(self, u: Callable[[], float]) -> Node:
    children = [self._clause(u)]
    if u() < _P_CONJOIN:
      children.append(Node("Conj", [], self._conj, {"lex": 0}))
      children.append(self._clause(u))
    children.append(Node("Stop", [], STOP, {}))
    return Node("S", children, None, {})

  def _clause(self, u: Callable[[], float]) -> Node:
    subject = self._np(u, 1)
    return Node("Clause", [subject, self._vp(u, subject.features["number"], 1)],
                None, {})

  def _np(self, u: Callable[[], float], level: int) -> Node:
    number = "pl" if u() < _P_PLURAL else "sg"
    d = bisect.bisect_right(self._cdf["Det"], u())
    children = [Node("Det", [], self._det[number][d], {"lex": d, "number": number})]
    if u() < _P_ADJ:
      children.append(self._adjp(u))
      while len(children) <= _MAX_ADJ and u() < _P_MORE_ADJ:
        children.append(self._adjp(u))
    n = bisect.bisect_right(self._cdf["N"], u())
    gender = self._gender[n]
    children.append(Node("N", [], self._noun[number][n],
                         {"lex": n, "number": number, "gender": gender}))
    if level < MAX_NESTING and u() < _P_MODIFIER[level]:
      if u() < _P_PP:
        p = bisect.bisect_right(self._cdf["P"], u())
        children.append(Node("PP", [Node("P", [], self._prep[p], {"lex": p}),
                                    self._np(u, level + 1)], None, {}))
      else:
        children.append(self._relative(u, level, number))
    return Node("NP", children, None, {"number": number, "gender": gender})

  def _adjp(self, u: Callable[[], float]) -> Node:
    children = []
    if u() < _P_INTENSIFIER:
      i = bisect.bisect_right(self._cdf_intensifier, u())
      children.append(Node("Adv", [], self._adv[i], {"lex": i, "intensifier": True}))
    a = bisect.bisect_right(self._cdf["Adj"], u())
    children.append(Node("Adj", [], self._adj[a],
                         {"lex": a, "polarity": self._polarity[a]}))
    return Node("AdjP", children, None, {})

  def _relative(self, u: Callable[[], float], level: int, number: str) -> Node:
    rel = Node("Rel", [], self._rel, {"lex": 0})
    if u() < _P_SUBJECT_REL:
      # The gap is the subject: the verb agrees with the modified noun.
      return Node("RelC", [rel, self._vp(u, number, level + 1)], None,
                  {"kind": "subj"})
    # The gap is the object: the verb agrees with the embedded subject.
    subject = self._np(u, level + 1)
    inner = subject.features["number"]
    v = bisect.bisect_right(self._cdf["Vt"], u())
    verb = Node("Vt", [], self._vt[inner][v], {"lex": v, "number": inner})
    vp = Node("VP", [verb], None, {"number": inner, "negated": False,
                                   "transitive": True, "gap": True})
    return Node("RelC", [rel, subject, vp], None, {"kind": "obj"})

  def _vp(self, u: Callable[[], float], number: str, object_level: int) -> Node:
    children = []
    negated = u() < _P_NEG
    if negated:
      children.append(Node("Neg", [], self._neg, {"lex": 0}))
    transitive = u() < _P_TRANSITIVE
    if transitive:
      v = bisect.bisect_right(self._cdf["Vt"], u())
      children.append(Node("Vt", [], self._vt[number][v], {"lex": v, "number": number}))
      children.append(self._np(u, object_level))
    else:
      v = bisect.bisect_right(self._cdf["Vi"], u())
      children.append(Node("Vi", [], self._vi[number][v], {"lex": v, "number": number}))
    if u() < _P_ADVERB:
      k = self._num_intensifiers + bisect.bisect_right(self._cdf_manner, u())
      children.append(Node("Adv", [], self._adv[k], {"lex": k, "intensifier": False}))
    return Node("VP", children, None, {"number": number, "negated": negated,
                                       "transitive": transitive, "gap": False})
