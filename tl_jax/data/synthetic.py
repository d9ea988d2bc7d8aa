"""A synthetic language: the embedded default corpus.

Text is generated deterministically from a seed, without end, from a small
grammar with nesting, long-range number agreement and Zipfian word choice, so
that masked-LM pretraining on CPU rewards bigger models. Beyond grammar, word
choice carries structure that only context and memorised associations predict,
so that loss keeps falling with capacity instead of stopping at the lexical
entropy:
  - topics: the lexicon has NUM_TOPICS latent topics and every open-class
    lexeme (nouns, verbs, adjectives, manner adverbs) belongs to two of them.
    A document draws one topic and, within it, boosts the topic's lexemes; the
    boost is small for frequent words (they stay general) and large for rare
    ones, and averages out over topics, so lexeme i is still (about) the
    i-th most frequent. Earlier sentences of a document thus predict later words.
  - selectional preferences: every noun has one of NUM_CLASSES semantic
    classes; every verb prefers one or two classes for its subject (and a
    transitive verb for its object), every adjective for the noun it modifies
    and every preposition for its object, and a slot obeys its governor's
    preference with probability 0.85 (_P_PREFER). Hundreds of arbitrary verb->class
    and adjective->class associations take capacity to memorise.
  - tone: a document is positive, negative or neutral (_P_POSITIVE_TONE,
    _P_NEGATIVE_TONE, else neutral) and a toned document redraws half
    (_P_TONE) of its adjectives among those of its polarity, keeping their
    topic and class preference; the object of a negated VP takes the opposite
    polarity ("not see the bad film" in a good review). As in real reviews,
    where "great" and "wonderful" co-occur, masked-LM pretraining can thus
    learn each adjective's polarity, and how negation turns it, from
    co-occurrence alone, which the sentiment task below then rewards.
Version 4 (`version=4`; version 3, the default, is the language above and
stays as it was) adds what only memory and long context predict, so that a
bigger model keeps gaining where a small one stalls:
  - entities: ENTITIES_PER_WORD * num_words named entities (coined two-
    syllable names), each with a topic, FAVOURITES nouns of that topic, and a
    value for each of NUM_RELATIONS relations (a noun of the relation's
    class, uniform within it: no prior guesses it). Entities are drawn Zipfian (_ENTITY_ZIPF), so
    a few are common and most are rare: memorising them pays gradually.
  - entity documents (_P_ENTITY_DOC of documents): one entity, its topic,
    and as first sentence a fact "NAME RELATION Det VALUE ."; each later
    sentence is another fact (_P_FACT) or a grammar sentence whose nouns are,
    with _P_FAVOURITE, one of the entity's favourites. A fact's value is
    determined by the name and relation (learnable only by memorising the
    table), and favourite nouns recur across the document (long-range).
Other documents follow version 3's rules (their draws differ: the entity
coin is drawn first). The task streams (pairs, sentiment, agreement) and the
lexicon are the same in both versions, so the tasks do not depend on it.

The lexicon records topics and preferences (Category.features "topics",
"semclass", "subject_classes", "object_classes", "noun_classes"); the trees
record the document topic and tone (S) and each noun's class (N and NP).

Every sentence is a tree (`Node`) before it is words, and the tree carries
what later tasks need:
  - translation: a "French-like" target language (`render_target`, `pair`)
    re-renders the same tree with its own lexicon (`target_lexicon`, indexed
    by each leaf's `lex`), its own word order and its own agreement; see
    "Target language" below;
  - sentiment (`sentiment`, `sentiment_example`): sum the `polarity` of
    every Adj (doubled under an intensifier Adv in its AdjP), flipping the
    sign inside a VP with `negated` (nested negations compose); the sign of
    the sum is the label. See "Sentiment task" below.

Target language. A deterministic transduction of the trees, so that a
seq2seq model has a real mapping to learn, but one that is exactly learnable:
  - vocabulary: every source lexeme has one target lexeme, coined from its own
    syllable inventory whose word-initial consonants (h j w x y qu ...) never
    start a source word, so the two vocabularies share only ".";
  - agreement: Det and Adj inflect for the gender (the noun's own, invisible
    on the noun, as in French) and number of their NP: Det has four
    suppletive forms, Adj suffixes (-, -e, -s, -es); nouns take -s/-x; verbs
    agree with their subject (-e/-ent); "that" is split by the gap's role
    (subject vs object relative, like qui/que);
  - order: adjectives follow the noun, in mirror order (Det N Adj2 Adj1, as
    in Romance), each after its own intensifier; negation is a circumfix
    around the verb ("ne V pas"); PPs, relative clauses and adverbs keep the
    source order. (Moving a manner adverb before the object would make the
    target depend on attachment that the source string leaves ambiguous,
    "V the N that runs quickly"; every rule here is decidable from the source
    words, so a perfect translation exists.)
`pair(index, split)` draws one sentence per pair (on a per-pair topic, at most
MAX_PAIR_WORDS source words) from a stream of its own, for the splits
"train", "eval" and "test". A hash of the source text assigns every sentence
to one split (_PAIR_BUCKETS), and each split redraws the others' sentences:
short frequent sentences would otherwise recur across splits (~7% of eval
sentences were in 200k train pairs), and eval/test would measure recall.

Sentiment task. `sentiment_example(index, split)` is one sentence (at most
MAX_PAIR_WORDS words) and a label, 1 positive or 0 negative, from a stream of
its own, split by the same hash of the text as pairs (so no sentence is in
two splits). The label needs composition: each example first draws its label
(even odds) and whether negation flips it (_P_SENTIMENT_FLIPPED = 0.4: the
negation-blind sum has the other sign, or none), then draws sentences until
one fits; sentences with sum 0 never qualify. They are drawn on a topic but
without tone, and with more adjectives, objects and negation than documents
(_SENTIMENT_P_*) so that fitting sentences come quickly (~2 ms an eval
example). A model finetuned from scratch has to learn hundreds of adjective
polarities from labels; one pretrained on the (toned) documents has seen them.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import zlib
from typing import Any, Callable, Iterator

import numpy as np

SPLITS = ("train", "eval")
MIN_WORDS = 200
ZIPF_EXPONENT = 1.1
MAX_NESTING = 4  # most NPs stacked on one root-to-leaf path
STOP = "."
NUM_TOPICS = 24
NUM_CLASSES = 10
# Versions of the document language; each is frozen (a change of what a
# version generates needs a new version, as token caches are keyed by it).
VERSIONS = (3, 4)
DEFAULT_VERSION = 3
# Version 4: entities and their facts.
ENTITIES_PER_WORD = 8
NUM_RELATIONS = 8
FAVOURITES = 6
_ENTITY_ZIPF = 0.8  # flatter than words: the tail is seen, rarely
_P_ENTITY_DOC = 0.6
_P_FACT = 0.5
_P_FAVOURITE = 0.3
_ENTITY_TAG = 0xE7717
_MASK32 = 0xFFFFFFFF

# Distinct SeedSequence tags, so lexicon and splits never share a stream.
_STREAM_TAG = {"train": 1, "eval": 2}
_LEXICON_TAG = 0x1E71C0
# Semantics (topics, classes, preferences) get their own stream, so surface
# forms for a seed are the same as before they existed.
_SEMANTICS_TAG = 0x5E3A
# Likewise the target lexicon and the sentence pairs: adding the translation
# task changed no source document.
_TARGET_LEXICON_TAG = 0x7A26E7
_PAIR_TAG = 0x9A125
PAIR_SPLITS = ("train", "eval", "test")
_PAIR_STREAM_TAG = {"train": 1, "eval": 2, "test": 3}
# Longer sentences (about 0.1%) are redrawn, so pairs fit short sequence lengths.
MAX_PAIR_WORDS = 40
# crc32(source text) % 10 -> the split owning the sentence: eval and test own
# one bucket each (so they cost ~10 draws a pair), train the rest.
_PAIR_BUCKETS = (2, 3, 1, 1, 1, 1, 1, 1, 1, 1)
# Sentiment examples: a stream of their own, split like pairs (PAIR_SPLITS,
# _PAIR_BUCKETS on the sentence text).
_SENTIMENT_TAG = 0x5E471
_AGREEMENT_TAG = 0xA64EE
_INTENSIFIER_WEIGHT = 2  # an intensified adjective counts double
_P_SENTIMENT_FLIPPED = 0.4  # examples whose label negation flips
# Grammar rates of sentiment sentences: more adjectives, objects and negation
# than in documents, so that a sentence whose label negation flips is ~13% of
# draws rather than ~1.7%.
_SENTIMENT_P_ADJ = 0.6
_SENTIMENT_P_TRANSITIVE = 0.8
_SENTIMENT_P_NEG = 0.5

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
# Document tone: positive, negative (else neutral), and the share of a toned
# document's adjectives redrawn among those of its polarity.
_P_POSITIVE_TONE, _P_NEGATIVE_TONE = 0.4, 0.4
_P_TONE = 0.5

# Semantics. A lexeme of global probability g has topical share
# tau = min(_TOPICAL_MAX, _TOPICAL_CAP * _TOPICS_PER_LEXEME / (NUM_TOPICS * g)):
# under a topic it is scaled by (1 - tau) + tau * NUM_TOPICS / _TOPICS_PER_LEXEME
# if it belongs to the topic and by (1 - tau) otherwise, which averages to 1
# over topics; the cap keeps any boosted word below ~_TOPICAL_CAP of a topic's
# draws, so frequent words stay general and rare ones become topical.
_TOPICS_PER_LEXEME = 2
_TOPICAL_MAX = 0.95
_TOPICAL_CAP = 0.08
_P_PREFER = 0.85  # a slot takes one of its governor's preferred classes
_P_TWO_CLASSES = 0.5  # else a governor prefers a single class

# Closed classes are small and fixed; open classes share the rest.
_CLOSED_SIZES = {"Det": 6, "P": 16, "Rel": 1, "Conj": 1, "Neg": 1}
_OPEN_SHARES = {"N": 0.40, "Adj": 0.18, "Vt": 0.16, "Vi": 0.12, "Adv": 0.14}

_ONSETS = ("", "b", "br", "bl", "d", "dr", "f", "fr", "fl", "g", "gr", "gl",
           "k", "kr", "kl", "l", "m", "n", "p", "pr", "pl", "r", "s", "st",
           "sk", "t", "tr", "v", "z", "sh", "ch", "th")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou", "ea")
_INNER_CODAS = ("", "", "", "", "n", "r", "l", "s")
_FINAL_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k", "st", "nt", "rd")

# Target syllables. Word-initial onsets use only letters that no source word
# starts with (source words start with a vowel or one of b c d f g k l m n p r
# s t v z), so no target form can equal a source form.
_T_INITIALS = ("h", "j", "w", "x", "y", "qu", "hr", "wr")
_T_ONSETS = ("c", "d", "gn", "h", "j", "l", "ll", "m", "n", "qu", "rr", "ss",
             "t", "v", "x", "y")
_T_VOWELS = ("a", "e", "i", "o", "u", "y", "a", "e", "eu", "au", "oi", "ie", "ui")
_T_INNER_CODAS = ("", "", "", "", "n", "r", "s")
_T_FINAL_CODAS = ("", "", "", "n", "r", "l", "x", "t", "c", "nd", "rt")
# Agreement cells of Det and Adj, gender x number; keys of their target forms.
AGREEMENT_CELLS = ("m.sg", "f.sg", "m.pl", "f.pl")
_CELL = {("m", "sg"): "m.sg", ("f", "sg"): "f.sg", ("m", "pl"): "m.pl",
         ("f", "pl"): "f.pl"}

# A sampling table: cumulative probabilities and the lexeme each slot names.
_Table = tuple[list[float], list[int]]


@dataclasses.dataclass(slots=True)
class Node:
  """A node of a sentence tree.

  Phrase labels: S, Clause, NP, AdjP, PP, RelC, VP. Leaf labels: Det, N, Adj,
  Adv, P, Rel, Vt, Vi, Neg, Conj, Stop. Leaves have `word` (source surface
  form) and `features["lex"]` (frequency rank within the category).
  Features by label: S has topic (document topic, None for a sentence drawn
  without one) and tone (+1/-1/0, the document's; 0 without one); N has
  number ("sg"/"pl"), gender ("m"/"f") and semclass (0..NUM_CLASSES-1); NP
  copies its head noun's; Det and Vt/Vi have number;
  Adj has polarity (+1/0/-1); Adv has intensifier (bool); VP has number,
  negated, transitive and gap (True for the object-less VP of an object
  relative); RelC has kind ("subj"/"obj").
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
  the surface word of every lexeme; `features` holds per-lexeme properties:
  "gender" and "semclass" for N, "polarity" for Adj, "intensifier" for Adv;
  "topics" (the two topics a lexeme belongs to; () for intensifiers) for N,
  Vt, Vi, Adj and Adv; preferred noun classes as tuples: "subject_classes"
  for Vt and Vi, "object_classes" for Vt and P, "noun_classes" for Adj.
  """
  label: str
  forms: dict[str, tuple[str, ...]]
  features: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(next(iter(self.forms.values())))


@dataclasses.dataclass(slots=True)
class _Tables:
  """What a sentence is drawn from: the sampling tables of one topic (or of
  the global distribution) under one tone, and the grammar rates."""
  noun: _Table
  noun_by_class: list[_Table]  # nouns of class c
  vt: _Table
  vt_by_subject: list[_Table]  # transitive verbs preferring subject class c
  vt_by_object: list[_Table]  # transitive verbs preferring object class c
  vi: _Table
  vi_by_subject: list[_Table]
  adj: _Table
  adj_by_class: list[_Table]  # adjectives preferring noun class c
  manner: _Table  # manner adverbs, indexed from 0
  topic: int | None  # None: the global distribution
  tone: int = 0  # +1/-1: adj and adj_by_class favour that polarity
  p_adj: float = _P_ADJ
  p_transitive: float = _P_TRANSITIVE
  p_neg: float = _P_NEG
  # Tables for the object of a negated VP: the opposite tone, so that the
  # polarity a tone favours is the one that counts after negation.
  negated: _Tables | None = None
  # Version 4: an entity document's favourite nouns, drawn with _P_FAVOURITE.
  favourites: tuple[int, ...] = ()


def _zipf_weights(n: int) -> np.ndarray:
  weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** ZIPF_EXPONENT
  return weights / weights.sum()


def _zipf_cdf(n: int) -> list[float]:
  return _table(_zipf_weights(n), np.arange(n))[0]


def _table(weights: np.ndarray, ids: np.ndarray) -> _Table:
  """Sampling table over lexemes `ids` with probability ∝ `weights[ids]`."""
  cdf = np.cumsum(weights[ids])
  cdf /= cdf[-1]
  cdf[-1] = 1.0  # draws are < 1, so bisect never runs off the end
  return cdf.tolist(), ids.tolist()


def _uniform_source(rng: np.random.Generator,
                    block: int) -> Callable[[], float]:
  """Returns a draw-one-uniform callable; numpy is called once per block."""
  # chain's __next__ runs in C: a draw costs no Python frame (a generator's did).
  blocks = iter(lambda: rng.random(block).tolist(), None)  # endless: never None
  return itertools.chain.from_iterable(blocks).__next__


def _check_split(split: str) -> int:
  if split not in _STREAM_TAG:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  return _STREAM_TAG[split]


def _check_pair_split(split: str) -> int:
  if split not in _PAIR_STREAM_TAG:
    raise ValueError(f"split must be one of {PAIR_SPLITS}, got {split!r}")
  return _PAIR_STREAM_TAG[split]


def _check_index(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{name} must be a non-negative int, got {value!r}")
  return int(value)


class _Coiner:
  """Coins pseudo-words, unique across everything it has coined, from one
  syllable inventory (`initials` are the onsets of a word's first syllable)."""

  def __init__(self, rng: np.random.Generator, initials: tuple[str, ...],
               onsets: tuple[str, ...], vowels: tuple[str, ...],
               inner_codas: tuple[str, ...], final_codas: tuple[str, ...]):
    self._rng = rng
    self._initials, self._onsets, self._vowels = initials, onsets, vowels
    self._inner_codas, self._final_codas = inner_codas, final_codas
    self.taken: set[str] = set()

  def _syllable(self, first: bool, final: bool) -> str:
    # Onset, vowel, coda: this draw order fixes the source lexicon of a seed.
    rng = self._rng
    onsets = self._initials if first else self._onsets
    codas = self._final_codas if final else self._inner_codas
    return (onsets[rng.integers(len(onsets))] + self._vowels[rng.integers(len(self._vowels))]
            + codas[rng.integers(len(codas))])

  def coin(self, num_syllables: int, make: Callable[[str], list[str]]) -> list[str]:
    """`make(stem)`: the stem's inflected forms, all kept unique."""
    # Rejection keeps all surface forms unique; growing the length after
    # repeated clashes guarantees termination for large lexicons.
    tries = 0
    while True:
      stem = "".join(self._syllable(i == 0, i == num_syllables - 1)
                     for i in range(num_syllables))
      forms = make(stem)
      if (len(stem) >= 2 and len(set(forms)) == len(forms)
          and not self.taken.intersection(forms)):
        self.taken.update(forms)
        return forms
      tries += 1
      if tries % 20 == 0:
        num_syllables += 1


def _topic_weights(rng: np.random.Generator,
                   n: int) -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
  """Per-topic lexeme probabilities (NUM_TOPICS + 1 rows, the last global)
  and each lexeme's topics."""
  g = _zipf_weights(n)
  # Within each block of NUM_TOPICS ranks every topic gets the same number
  # of members, so topics are balanced by frequency mass as well as by count.
  member = np.zeros((NUM_TOPICS, n))
  topics = []
  for start in range(0, n, NUM_TOPICS):
    perm = rng.permutation(NUM_TOPICS)
    for j in range(min(NUM_TOPICS, n - start)):
      mine = tuple(sorted(int(perm[(j + k) % NUM_TOPICS])
                          for k in range(_TOPICS_PER_LEXEME)))
      member[mine, start + j] = 1.0
      topics.append(mine)
  boost = NUM_TOPICS / _TOPICS_PER_LEXEME
  tau = np.minimum(_TOPICAL_MAX, _TOPICAL_CAP / (boost * g))
  weights = g * ((1.0 - tau) + tau * boost * member)
  weights /= weights.sum(axis=1, keepdims=True)
  return np.vstack([weights, g]), tuple(topics)


def _noun_classes(rng: np.random.Generator, n: int) -> tuple[int, ...]:
  """Semantic class of each noun: one noun per class in each block of
  NUM_CLASSES ranks, so classes are equal in size and each has frequent and
  rare members (their frequency mass still differs through the head)."""
  classes: list[int] = []
  while len(classes) < n:
    classes.extend(int(c) for c in rng.permutation(NUM_CLASSES))
  return tuple(classes[:n])


def _preferences(rng: np.random.Generator, n: int,
                 class_mass: np.ndarray) -> tuple[tuple[int, ...], ...]:
  """One or two preferred noun classes for each of `n` Zipfian governors.

  Governors take classes in rank order where their preference is most in
  deficit against `class_mass`: then the class mix demanded by governors
  matches the mix nouns supply, and preferences reshape which noun goes with
  which word without distorting either's overall frequency.
  """
  g = _zipf_weights(n)
  given = np.zeros(NUM_CLASSES)
  out = []
  for i in range(n):
    deficit = class_mass - given
    order = np.argsort(-deficit, kind="stable")
    chosen = [int(order[0])]
    if rng.random() < _P_TWO_CLASSES:
      chosen.append(int(order[1 + rng.integers(3)]))
    for c in chosen:
      given[c] += g[i] / len(chosen)
    out.append(tuple(sorted(chosen)))
  return tuple(out)


def _polarity_sums(node: Node) -> tuple[int, int]:
  """Adjective polarity summed over `node`: (with negation, without).

  An adjective counts its polarity, times _INTENSIFIER_WEIGHT under an
  intensifier in its AdjP; the first sum flips inside every negated VP
  (nested negations compose).
  """
  if node.label == "Adj":
    polarity = node.features["polarity"]
    return polarity, polarity
  if node.label == "AdjP":
    weight = 1
    signed = 0
    for child in node.children:
      if child.label == "Adv" and child.features.get("intensifier"):
        weight = _INTENSIFIER_WEIGHT
      elif child.label == "Adj":
        signed += child.features["polarity"]
    return weight * signed, weight * signed
  signed = unsigned = 0
  for child in node.children:
    a, b = _polarity_sums(child)
    signed += a
    unsigned += b
  if node.label == "VP" and node.features.get("negated"):
    signed = -signed
  return signed, unsigned


def _sign(x: int) -> int:
  return (x > 0) - (x < 0)


def _by_class(weights: np.ndarray, prefs: tuple[tuple[int, ...], ...],
              fallback: _Table) -> list[_Table]:
  """Per class c, a table over the lexemes preferring c.

  A lexeme preferring two classes splits its weight between them, matching
  how _preferences counted it; a class no lexeme prefers (possible only in a
  tiny lexicon) falls back to the unrestricted table.
  """
  share = weights / np.array([len(p) for p in prefs], dtype=np.float64)
  tables = []
  for c in range(NUM_CLASSES):
    ids = np.array([i for i, p in enumerate(prefs) if c in p], dtype=np.int64)
    tables.append(_table(share, ids) if len(ids) else fallback)
  return tables


@dataclasses.dataclass(frozen=True)
class Entities:
  """Version 4's named entities; entity e is the e-th most frequent.

  `relations` are the relation words; `values[e][r]` is the noun lexeme
  (of class `relation_classes[r]`) that relation r gives entity e.
  """
  names: tuple[str, ...]
  topics: tuple[int, ...]
  favourites: tuple[tuple[int, ...], ...]  # noun lexemes of the entity's topic
  relations: tuple[str, ...]
  relation_classes: tuple[int, ...]
  values: tuple[tuple[int, ...], ...]


def _coin_names(rng: np.random.Generator, count: int,
                taken: frozenset[str]) -> tuple[str, ...]:
  """`count` distinct two-syllable words, none in `taken`, drawn in bulk
  (a _Coiner call per name would take seconds for tens of thousands)."""
  parts = [np.array(a) for a in (_ONSETS, _VOWELS, _INNER_CODAS, _ONSETS, _VOWELS,
                                 _FINAL_CODAS)]
  names: list[str] = []
  seen = set(taken)
  while len(names) < count:
    k = count - len(names) + 64
    drawn = [a[rng.integers(len(a), size=k)] for a in parts]
    for name in map("".join, zip(*drawn)):
      if name not in seen:
        seen.add(name)
        names.append(name)
        if len(names) == count:
          break
  return tuple(names)


def _build_entities(seed: int, count: int, lex: dict[str, Category],
                    taken: frozenset[str]) -> Entities:
  """`count` entities and NUM_RELATIONS relations, from a stream of their own."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, _ENTITY_TAG]))
  words = _coin_names(rng, NUM_RELATIONS + count, taken)
  nouns = lex["N"].features
  topics = rng.integers(NUM_TOPICS, size=count)
  favourites = np.zeros((count, FAVOURITES), np.int64)
  for t in range(NUM_TOPICS):
    members = np.array([n for n, ts in enumerate(nouns["topics"]) if t in ts], np.int64)
    mine = np.flatnonzero(topics == t)
    favourites[mine] = members[rng.integers(len(members), size=(len(mine), FAVOURITES))]
  # Values are uniform within the relation's class, so that only memory
  # predicts them (log of the class size, ~4.8 nats at 3000 words, a fact).
  semclass = np.asarray(nouns["semclass"])
  classes = tuple(r % NUM_CLASSES for r in range(NUM_RELATIONS))
  values = np.zeros((count, NUM_RELATIONS), np.int64)
  for r, c in enumerate(classes):
    ids = np.flatnonzero(semclass == c)
    values[:, r] = ids[rng.integers(len(ids), size=count)]
  return Entities(names=words[NUM_RELATIONS:], topics=tuple(topics.tolist()),
                  favourites=tuple(map(tuple, favourites.tolist())),
                  relations=words[:NUM_RELATIONS], relation_classes=classes,
                  values=tuple(map(tuple, values.tolist())))


class SyntheticLanguage:
  """A seeded synthetic language with a Zipfian lexicon and a nested grammar.

  Grammar: S -> Clause (Conj Clause)? "."; Clause -> NP VP;
  NP -> Det AdjP* N (PP | RelC)?; AdjP -> Adv(intensifier)? Adj;
  PP -> P NP; RelC -> Rel VP | Rel NP VP(gap: Vt only);
  VP -> Neg? (Vi | Vt NP) Adv?. Each verb agrees in number with its subject's
  head noun (the modified noun for a subject relative), and each Det with its
  noun, however much material sits in between.

  Generation order follows the semantics rather than the surface: a main
  clause draws its verb first and then nouns for its slots, conditioned on the
  verb's preferences; a relative clause draws its verb given the class of the
  noun it modifies; an NP draws its noun before that noun's adjectives.
  """

  def __init__(self, seed: int = 0, num_words: int = 3000,
               version: int = DEFAULT_VERSION):
    if isinstance(version, bool) or version not in VERSIONS:
      raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
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
    self.version = int(version)
    lex, weights = self._build_lexicon()
    self.lexicon: dict[str, Category] = lex

    # Flat per-category arrays keep the generation hot path free of lookups.
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
    # (singular, plural) forms, indexed by a bool, for document()'s word path.
    self._det_forms = (self._det["sg"], self._det["pl"])
    self._noun_forms = (self._noun["sg"], self._noun["pl"])
    self._vt_forms = (self._vt["sg"], self._vt["pl"])
    self._vi_forms = (self._vi["sg"], self._vi["pl"])
    self._gender = lex["N"].features["gender"]
    self._semclass = lex["N"].features["semclass"]
    self._polarity = lex["Adj"].features["polarity"]
    self._vt_subject = lex["Vt"].features["subject_classes"]
    self._vt_object = lex["Vt"].features["object_classes"]
    self._vi_subject = lex["Vi"].features["subject_classes"]
    self._p_object = lex["P"].features["object_classes"]
    self._num_intensifiers = sum(lex["Adv"].features["intensifier"])
    self._cdf_det = _zipf_cdf(len(lex["Det"]))
    self._cdf_prep = _zipf_cdf(len(lex["P"]))
    self._cdf_intensifier = _zipf_cdf(self._num_intensifiers)
    # Draw contexts, indexed [tone][topic] (topic NUM_TOPICS: global).
    neutral = [self._topic_tables(weights, t) for t in range(NUM_TOPICS + 1)]
    positive = [self._toned_tables(tab, weights["Adj"][t], 1)
                for t, tab in enumerate(neutral)]
    negative = [self._toned_tables(tab, weights["Adj"][t], -1)
                for t, tab in enumerate(neutral)]
    sentiment = [dataclasses.replace(tab, p_adj=_SENTIMENT_P_ADJ,
                                     p_transitive=_SENTIMENT_P_TRANSITIVE,
                                     p_neg=_SENTIMENT_P_NEG) for tab in neutral]
    for tabs in zip(neutral, positive, negative, sentiment):
      tabs[0].negated, tabs[3].negated = tabs[0], tabs[3]
      tabs[1].negated, tabs[2].negated = tabs[2], tabs[1]
    self._tables = {0: neutral, 1: positive, -1: negative}
    self._sentiment_tables = sentiment

    vocab = [w for cat in lex.values() for forms in cat.forms.values() for w in forms]
    self.entities: Entities | None = None
    if self.version >= 4:
      self.entities = _build_entities(self.seed, ENTITIES_PER_WORD * self.num_words, lex,
                                      frozenset(vocab))
      vocab += self.entities.relations + self.entities.names
      ranks = np.arange(1, len(self.entities.names) + 1, dtype=np.float64)
      self._entity_cdf = _table(ranks ** -_ENTITY_ZIPF, np.arange(len(ranks)))[0]
    self._vocabulary = tuple(vocab) + (STOP,)

    target = self._build_target_lexicon()
    self.target_lexicon: dict[str, Category] = target
    self._t_det = target["Det"].forms
    self._t_noun = target["N"].forms
    self._t_verb = {"Vt": target["Vt"].forms, "Vi": target["Vi"].forms}
    self._t_adj = target["Adj"].forms
    self._t_adv = target["Adv"].forms["base"]
    self._t_prep = target["P"].forms["base"]
    self._t_rel = {kind: forms[0] for kind, forms in target["Rel"].forms.items()}
    self._t_conj = target["Conj"].forms["base"][0]
    self._t_neg_pre = target["Neg"].forms["pre"][0]
    self._t_neg_post = target["Neg"].forms["post"][0]
    vocab = [w for cat in target.values() for forms in cat.forms.values() for w in forms]
    self._target_vocabulary = tuple(vocab) + (STOP,)

  # -- lexicon ---------------------------------------------------------------

  def _build_lexicon(self) -> tuple[dict[str, Category], dict[str, np.ndarray]]:
    """The lexicon, and per open category its (NUM_TOPICS + 1, size) topic
    probabilities."""
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, _LEXICON_TAG]))
    sizes = dict(_CLOSED_SIZES)
    open_total = self.num_words - sum(sizes.values())
    for name, share in _OPEN_SHARES.items():
      sizes[name] = int(open_total * share)
    sizes["N"] += open_total - sum(sizes[n] for n in _OPEN_SHARES)

    coin = _Coiner(rng, _ONSETS, _ONSETS, _VOWELS, _INNER_CODAS, _FINAL_CODAS).coin

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

    sem = np.random.default_rng(np.random.SeedSequence([self.seed, _SEMANTICS_TAG]))
    semclass = _noun_classes(sem, sizes["N"])
    class_mass = np.bincount(semclass, weights=_zipf_weights(sizes["N"]),
                             minlength=NUM_CLASSES)
    weights, topics = {}, {}
    for name in ("N", "Vt", "Vi", "Adj"):
      weights[name], topics[name] = _topic_weights(sem, sizes[name])
    # Intensifiers are function-like and stay general; manner adverbs are topical.
    weights["Adv"], manner_topics = _topic_weights(
        sem, sizes["Adv"] - num_intensifiers)
    topics["Adv"] = ((),) * num_intensifiers + manner_topics

    def prefer(name: str) -> tuple[tuple[int, ...], ...]:
      return _preferences(sem, sizes[name], class_mass)

    lexicon = {
        "Det": Category("Det", forms("Det", ("sg", "pl"))),
        "N": Category("N", forms("N", ("sg", "pl")), {
            "gender": gender, "semclass": semclass, "topics": topics["N"]}),
        "Vt": Category("Vt", forms("Vt", ("sg", "pl")), {
            "topics": topics["Vt"], "subject_classes": prefer("Vt"),
            "object_classes": prefer("Vt")}),
        "Vi": Category("Vi", forms("Vi", ("sg", "pl")), {
            "topics": topics["Vi"], "subject_classes": prefer("Vi")}),
        "Adj": Category("Adj", forms("Adj", ("base",)), {
            "polarity": tuple(polarity[:sizes["Adj"]]), "topics": topics["Adj"],
            "noun_classes": prefer("Adj")}),
        "Adv": Category("Adv", forms("Adv", ("base",)), {
            "intensifier": tuple(i < num_intensifiers for i in range(sizes["Adv"])),
            "topics": topics["Adv"]}),
        "P": Category("P", forms("P", ("base",)), {"object_classes": prefer("P")}),
        "Rel": Category("Rel", forms("Rel", ("base",))),
        "Conj": Category("Conj", forms("Conj", ("base",))),
        "Neg": Category("Neg", forms("Neg", ("base",))),
    }
    return lexicon, weights

  def _build_target_lexicon(self) -> dict[str, Category]:
    """The target lexicon: lexeme i of a category translates lexeme i of the
    same source category. Forms are keyed by inflection: AGREEMENT_CELLS for
    Det and Adj, "sg"/"pl" for N, Vt and Vi, "subj"/"obj" for Rel (the
    relative's gap), "pre"/"post" for the two halves of Neg, "base" otherwise.
    """
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TARGET_LEXICON_TAG]))
    coin = _Coiner(rng, _T_INITIALS, _T_ONSETS, _T_VOWELS, _T_INNER_CODAS,
                   _T_FINAL_CODAS).coin
    src = self.lexicon
    sizes = {name: len(cat) for name, cat in src.items()}
    intensifier = src["Adv"].features["intensifier"]

    def vowel_final(stem: str) -> bool:
      return stem[-1] in "aeiouy"

    def single(stem: str) -> list[str]:
      return [stem]

    def adverb(rank: int) -> Callable[[str], list[str]]:
      # Manner adverbs carry a derivational suffix, like French "-ment";
      # intensifiers ("tres") do not.
      return single if intensifier[rank] else lambda s: [s + "ment"]

    makers: dict[str, Callable[[str], list[str]]] = {
        "N": lambda s: [s, s + ("x" if s.endswith("u") else "s")],
        "Adj": lambda s: [s, s + "e", s + "s", s + "es"],  # AGREEMENT_CELLS order
        "Vt": lambda s: [s if vowel_final(s) else s + "e",
                         s + ("nt" if vowel_final(s) else "ent")],
    }
    makers["Vi"] = makers["Vt"]
    words: dict[str, list[list[str]]] = {name: [] for name in sizes}

    # Closed classes: one syllable per form, and suppletive forms per cell
    # (like le/la/les, qui/que, ne...pas), so none is a suffix of another.
    cells = {"Det": len(AGREEMENT_CELLS), "Rel": 2, "Neg": 2}
    for name in _CLOSED_SIZES:
      for _ in range(sizes[name]):
        words[name].append([w for _ in range(cells.get(name, 1))
                            for w in coin(1, single)])

    # Open classes interleaved by rank, as in the source: frequent words short.
    order = sorted((rank / sizes[name], name, rank) for name in _OPEN_SHARES
                   for rank in range(sizes[name]))
    for frac, name, rank in order:
      num_syllables = min(3, 1 + int(2.0 * frac + rng.random()))
      make = adverb(rank) if name == "Adv" else makers.get(name, single)
      words[name].append(coin(num_syllables, make))

    def forms(name: str, keys: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
      return {k: tuple(w[i] for w in words[name]) for i, k in enumerate(keys)}

    return {
        "Det": Category("Det", forms("Det", AGREEMENT_CELLS)),
        "N": Category("N", forms("N", ("sg", "pl")),
                      {"gender": src["N"].features["gender"]}),
        "Vt": Category("Vt", forms("Vt", ("sg", "pl"))),
        "Vi": Category("Vi", forms("Vi", ("sg", "pl"))),
        "Adj": Category("Adj", forms("Adj", AGREEMENT_CELLS)),
        "Adv": Category("Adv", forms("Adv", ("base",))),
        "P": Category("P", forms("P", ("base",))),
        "Rel": Category("Rel", forms("Rel", ("subj", "obj"))),
        "Conj": Category("Conj", forms("Conj", ("base",))),
        "Neg": Category("Neg", forms("Neg", ("pre", "post"))),
    }

  def _topic_tables(self, weights: dict[str, np.ndarray], topic: int) -> _Tables:
    """Sampling tables for row `topic` of the topic weights (NUM_TOPICS: global)."""
    lex = self.lexicon
    w = {name: rows[topic] for name, rows in weights.items()}
    everything = {name: _table(row, np.arange(len(row))) for name, row in w.items()}
    noun_by_class = []
    for c in range(NUM_CLASSES):
      ids = np.flatnonzero(np.asarray(self._semclass) == c)
      noun_by_class.append(_table(w["N"], ids) if len(ids) else everything["N"])
    return _Tables(
        noun=everything["N"], noun_by_class=noun_by_class,
        vt=everything["Vt"],
        vt_by_subject=_by_class(w["Vt"], self._vt_subject, everything["Vt"]),
        vt_by_object=_by_class(w["Vt"], self._vt_object, everything["Vt"]),
        vi=everything["Vi"],
        vi_by_subject=_by_class(w["Vi"], self._vi_subject, everything["Vi"]),
        adj=everything["Adj"],
        adj_by_class=_by_class(w["Adj"], lex["Adj"].features["noun_classes"],
                               everything["Adj"]),
        manner=everything["Adv"], topic=None if topic == NUM_TOPICS else topic)

  def _toned_tables(self, tab: _Tables, weights: np.ndarray, tone: int) -> _Tables:
    """`tab` under `tone` (+1/-1): a _P_TONE share of adjective draws is
    redrawn among the adjectives of that polarity, with the same topic
    `weights` and, in adj_by_class, the same class preference (the whole
    polarity where no adjective of it prefers the class)."""
    prefs = self.lexicon["Adj"].features["noun_classes"]
    share = weights / np.array([len(p) for p in prefs], dtype=np.float64)
    everything = np.arange(len(weights))
    polar = np.flatnonzero(np.asarray(self._polarity) == tone)

    def mix(base_weights: np.ndarray, base: np.ndarray, toned_weights: np.ndarray,
            toned: np.ndarray) -> _Table:
      mixed = np.zeros(len(weights))
      mixed[base] += (1.0 - _P_TONE) * base_weights[base] / base_weights[base].sum()
      mixed[toned] += _P_TONE * toned_weights[toned] / toned_weights[toned].sum()
      return _table(mixed, np.flatnonzero(mixed))

    by_class = []
    for c in range(NUM_CLASSES):
      ids = np.array([i for i, p in enumerate(prefs) if c in p], dtype=np.int64)
      if not len(ids):  # as _by_class: no preference to keep
        by_class.append(mix(weights, everything, weights, polar))
        continue
      toned = ids[np.isin(ids, polar)]
      by_class.append(mix(share, ids, share, toned) if len(toned)
                      else mix(share, ids, weights, polar))
    return dataclasses.replace(tab, adj=mix(weights, everything, weights, polar),
                               adj_by_class=by_class, tone=tone)

  @property
  def vocabulary(self) -> list[str]:
    """Every surface form the language can emit, including "."."""
    return list(self._vocabulary)

  @property
  def target_vocabulary(self) -> list[str]:
    """Every surface form the target language can emit, including "."."""
    return list(self._target_vocabulary)

  # -- generation ------------------------------------------------------------

  def sentence(self, rng: np.random.Generator, topic: int | None = None,
               tone: int = 0) -> Node:
    """One sentence tree; draws from `rng` in blocks of uniforms.

    With `topic` (0..NUM_TOPICS-1) words follow that topic, as inside a
    document; without, they follow the global (topic-averaged) distribution.
    With `tone` +1 (-1), adjectives favour positive (negative) polarity, as
    in a document of that tone.
    """
    if topic is not None and (isinstance(topic, bool)
                              or not isinstance(topic, (int, np.integer))
                              or not 0 <= topic < NUM_TOPICS):
      raise ValueError(f"topic must be None or an int in [0, {NUM_TOPICS}), "
                       f"got {topic!r}")
    if isinstance(tone, bool) or tone not in (-1, 0, 1):
      raise ValueError(f"tone must be -1, 0 or 1, got {tone!r}")
    tab = self._tables[int(tone)][NUM_TOPICS if topic is None else int(topic)]
    return self._sentence(_uniform_source(rng, 64), tab)

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

  def render_target(self, tree: Node) -> list[str]:
    """Target-language words of `tree` (a sentence, or any phrase whose Det
    and Adj leaves sit inside their NP), in target order.

    A pure function of the tree's labels and features: leaf `word`s (the
    source forms) are never read.
    """
    out: list[str] = []
    self._emit_target(tree, out)
    return out

  def _emit_target(self, node: Node, out: list[str]) -> None:
    label = node.label
    if label == "NP":
      self._emit_target_np(node, out)
    elif label == "VP":
      self._emit_target_vp(node, out)
    elif label == "RelC":
      # Rel's form names the gap (qui/que); the rest keeps source order.
      out.append(self._t_rel[node.features["kind"]])
      for child in node.children[1:]:
        self._emit_target(child, out)
    elif label == "P":
      out.append(self._t_prep[node.features["lex"]])
    elif label == "Conj":
      out.append(self._t_conj)
    elif label == "Stop":
      out.append(STOP)
    elif node.word is not None:
      raise ValueError(f"a {label} leaf has no target form outside its phrase")
    else:  # S, Clause, PP: source order
      for child in node.children:
        self._emit_target(child, out)

  def _emit_target_np(self, node: Node, out: list[str]) -> None:
    # Det N AdjP* (PP | RelC)? -> Det N AdjP*(reversed) (PP | RelC)?
    cell = _CELL[node.features["gender"], node.features["number"]]
    children = node.children
    head = 1
    while children[head].label == "AdjP":
      head += 1
    noun = children[head]
    out.append(self._t_det[cell][children[0].features["lex"]])
    out.append(self._t_noun[noun.features["number"]][noun.features["lex"]])
    adjectives = self._t_adj[cell]
    for i in range(head - 1, 0, -1):  # mirror order after the noun
      for leaf in children[i].children:
        if leaf.label == "Adj":
          out.append(adjectives[leaf.features["lex"]])
        else:  # the intensifier stays before its adjective
          out.append(self._t_adv[leaf.features["lex"]])
    for child in children[head + 1:]:
      self._emit_target(child, out)

  def _emit_target_vp(self, node: Node, out: list[str]) -> None:
    # Neg? V NP? Adv? -> (ne)? V (pas)? NP? Adv?
    negated = node.features["negated"]
    for child in node.children:
      label = child.label
      if label == "Vt" or label == "Vi":
        if negated:
          out.append(self._t_neg_pre)
        out.append(self._t_verb[label][child.features["number"]][child.features["lex"]])
        if negated:
          out.append(self._t_neg_post)
      elif label == "NP":
        self._emit_target_np(child, out)
      elif label == "Adv":
        out.append(self._t_adv[child.features["lex"]])
      # Neg itself is spelled by the circumfix.

  def pair_tree(self, index: int, split: str = "train") -> Node:
    """The sentence tree behind `pair(index, split)`."""
    return self._pair(index, split)[0]

  def pair(self, index: int, split: str = "train") -> tuple[str, str]:
    """Sentence pair `index` of `split` ("train", "eval" or "test"):
    (source text, target text), both ending in "."."""
    tree, text = self._pair(index, split)
    return text, " ".join(self.render_target(tree))

  def pairs(self, split: str = "train", start: int = 0) -> Iterator[tuple[str, str]]:
    """Unbounded stream: pair(start), pair(start + 1), ..."""
    return _indexed_stream(self.pair, split, start)

  def _pair(self, index: int, split: str) -> tuple[Node, str]:
    """Tree and source text of pair `index`; the stream is tagged with
    _PAIR_TAG, so pairs never replay a document's draws."""
    tag = _check_pair_split(split)
    index = _check_index("index", index)
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, _PAIR_TAG, tag, index]))
    u = _uniform_source(rng, 128)
    tab = self._tables[0][int(u() * NUM_TOPICS)]
    while True:  # deterministic: redraws continue the same stream
      tree = self._sentence(u, tab)
      words = self.render(tree)
      if len(words) > MAX_PAIR_WORDS:
        continue
      text = " ".join(words)
      if _PAIR_BUCKETS[zlib.crc32(text.encode()) % len(_PAIR_BUCKETS)] == tag:
        return tree, text

  def sentiment(self, tree: Node, negation: bool = True) -> int:
    """Sentiment of `tree` (any phrase): the sign (-1, 0 or +1) of the
    adjectives' polarity sum, an intensified adjective counting
    _INTENSIFIER_WEIGHT times, its sign flipped inside every negated VP
    (nested negations compose). `negation=False` ignores negation: the naive
    reading that the task's examples are drawn to defeat."""
    signed, unsigned = _polarity_sums(tree)
    return _sign(signed if negation else unsigned)

  def sentiment_tree(self, index: int, split: str = "train") -> Node:
    """The sentence tree behind `sentiment_example(index, split)`."""
    return self._sentiment_example(index, split)[0]

  def sentiment_example(self, index: int, split: str = "train") -> tuple[str, int]:
    """Sentiment example `index` of `split` ("train", "eval" or "test"):
    (sentence text ending in ".", label), label 1 for a positive sentence
    and 0 for a negative one (see `sentiment`)."""
    tree, text = self._sentiment_example(index, split)
    return text, int(self.sentiment(tree) > 0)

  def sentiment_examples(self, split: str = "train",
                         start: int = 0) -> Iterator[tuple[str, int]]:
    """Unbounded stream: sentiment_example(start), sentiment_example(start + 1), ..."""
    return _indexed_stream(self.sentiment_example, split, start)

  def _sentiment_example(self, index: int, split: str) -> tuple[Node, str]:
    """Tree and text of sentiment example `index`.

    The stream (tagged _SENTIMENT_TAG) first draws the label (+/-, even odds),
    whether negation flips it (_P_SENTIMENT_FLIPPED: the naive, negation-blind
    sum has another sign, or none) and a topic, then draws neutral-tone
    sentences, at the richer _SENTIMENT_P_* rates, until one matches, fits
    MAX_PAIR_WORDS and hashes to `split` (as pairs do, by _PAIR_BUCKETS).
    """
    tag = _check_pair_split(split)
    index = _check_index("index", index)
    rng = np.random.default_rng(
        np.random.SeedSequence([self.seed, _SENTIMENT_TAG, tag, index]))
    u = _uniform_source(rng, 256)
    label = 1 if u() < 0.5 else -1
    flipped = u() < _P_SENTIMENT_FLIPPED
    tab = self._sentiment_tables[int(u() * NUM_TOPICS)]
    while True:  # deterministic: redraws continue the same stream
      tree = self._sentence(u, tab)
      signed, unsigned = _polarity_sums(tree)
      if _sign(signed) != label or (_sign(unsigned) != label) != flipped:
        continue
      words = self.render(tree)
      if len(words) > MAX_PAIR_WORDS:
        continue
      text = " ".join(words)
      if _PAIR_BUCKETS[zlib.crc32(text.encode()) % len(_PAIR_BUCKETS)] == tag:
        return tree, text

  def agreement_example(self, index: int, split: str = "train") -> tuple[str, int]:
    """Agreement example `index` of `split` ("train", "eval" or "test"): (sentence text, label),
    label 1 when the main verb agrees in number with its subject and 0 when its number was
    flipped. The subject always carries a PP or relative clause between its head noun and
    the verb, so the label needs the head found through that phrase (an agreement-attraction
    test, as in BLiMP/CoLA): a structure masked-LM pretraining on the documents learns."""
    tree, text = self._agreement_example(index, split)
    return text, 1 if text == " ".join(self.render(tree)) else 0

  def agreement_examples(self, split: str = "train", start: int = 0) -> Iterator[tuple[str, int]]:
    """Unbounded stream: agreement_example(start), agreement_example(start + 1), ..."""
    return _indexed_stream(self.agreement_example, split, start)

  def _agreement_example(self, index: int, split: str) -> tuple[Node, str]:
    """The (grammatical) tree of agreement example `index` and the example's text, whose main
    verb is in the wrong number for a drawn half of the examples. Sentences are drawn at
    document rates (no tone) until the first clause's subject has a modifier, the sentence fits
    MAX_PAIR_WORDS and its grammatical text hashes to `split` (as pairs do)."""
    tag = _check_pair_split(split)
    index = _check_index("index", index)
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, _AGREEMENT_TAG, tag, index]))
    u = _uniform_source(rng, 256)
    grammatical = u() < 0.5
    tab = self._tables[0][int(u() * NUM_TOPICS)]
    while True:
      tree = self._sentence(u, tab)
      subject, vp = tree.children[0].children
      if not any(c.label in ("PP", "RelC") for c in subject.children):
        continue
      words = self.render(tree)
      if len(words) > MAX_PAIR_WORDS:
        continue
      text = " ".join(words)
      if _PAIR_BUCKETS[zlib.crc32(text.encode()) % len(_PAIR_BUCKETS)] != tag:
        continue
      if grammatical:
        return tree, text
      verb = next(c for c in vp.children if c.label in ("Vt", "Vi"))
      forms = self._vt if verb.label == "Vt" else self._vi
      other = "pl" if verb.features["number"] == "sg" else "sg"
      wrong = dataclasses.replace(verb, word=forms[other][verb.features["lex"]])
      return tree, " ".join(self.render(_replace_leaf(tree, verb, wrong)))

  def document_trees(self, index: int, split: str = "train") -> list[Node]:
    """The sentence trees of `document(index, split)`; each S records the
    document's topic and tone, and a version 4 fact S has "fact" True (its
    leaves: Name with "entity", Relation with "lex", then Det N, Stop)."""
    u, count, tab, e = self._document_start(index, split)
    if e is None:
      return [self._sentence(u, tab) for _ in range(count)]
    tab = _with_favourites(tab, self.entities.favourites[e])
    trees = [self._fact(u, e, tab)]
    for _ in range(count - 1):
      trees.append(self._fact(u, e, tab) if u() < _P_FACT else self._sentence(u, tab))
    return trees

  def _document_start(self, index: int, split: str
                      ) -> tuple[Callable[[], float], int, _Tables, int | None]:
    """The draws that open document `index`: its uniform source, sentence
    count, tables (of the entity's topic, without its favourites) and entity
    (None: a version 3 document, or not about one)."""
    tag = _check_split(split)
    index = _check_index("index", index)
    entropy = [self.seed, tag, index]
    if max(entropy) <= _MASK32:
      # Numpy coerces a list of ints below 2**32 to exactly this array (each int one word,
      # documented), but ~3 us slower: a tenth of a document's fixed cost.
      entropy = np.array(entropy, np.uint32)
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    # A document draws ~150-220 uniforms: blocks of 128 waste fewer than 256 did
    # (the block size does not change the draws).
    u = _uniform_source(rng, 128)
    count = _MIN_SENTENCES + int(u() * (_MAX_SENTENCES - _MIN_SENTENCES + 1))
    topic = int(u() * NUM_TOPICS)
    r = u()
    tone = 1 if r < _P_POSITIVE_TONE else -1 if r < _P_POSITIVE_TONE + _P_NEGATIVE_TONE else 0
    tab = self._tables[tone][topic]
    if self.entities is None or u() >= _P_ENTITY_DOC:
      return u, count, tab, None
    e = bisect.bisect_right(self._entity_cdf, u())
    return u, count, self._tables[tone][self.entities.topics[e]], e

  def _fact(self, u: Callable[[], float], e: int, tab: _Tables) -> Node:
    """A fact about entity `e`: "NAME RELATION Det VALUE ." for a drawn relation."""
    ent = self.entities
    r = int(u() * NUM_RELATIONS)
    v = ent.values[e][r]
    gender, semclass = self._gender[v], self._semclass[v]
    np_node = Node("NP", [Node("Det", [], self._det["sg"][0], {"lex": 0, "number": "sg"}),
                          Node("N", [], self._noun["sg"][v],
                               {"lex": v, "number": "sg", "gender": gender,
                                "semclass": semclass})],
                   None, {"number": "sg", "gender": gender, "semclass": semclass})
    return Node("S", [Node("Name", [], ent.names[e], {"entity": e}),
                      Node("Relation", [], ent.relations[r], {"lex": r}), np_node,
                      Node("Stop", [], STOP, {})],
                None, {"topic": tab.topic, "tone": tab.tone, "fact": True})

  def document(self, index: int, split: str = "train") -> str:
    """Document `index` of `split`: 2-10 sentences on one topic and tone
    (version 4: some are about one entity, see the module docstring)."""
    # The same draws as document_trees, in the same order, but words go
    # straight to `out`: building and rendering the trees took most of the time.
    u, count, tab, e = self._document_start(index, split)
    out: list[str] = []
    sentence = self._sentence_words
    if e is None:
      for _ in range(count):
        sentence(u, tab, (), out)
      return " ".join(out)
    favourites = self.entities.favourites[e]
    fact = self._fact_words
    fact(u, e, out)
    for _ in range(count - 1):
      if u() < _P_FACT:
        fact(u, e, out)
      else:
        sentence(u, tab, favourites, out)
    return " ".join(out)

  def documents(self, split: str = "train", start: int = 0) -> Iterator[str]:
    """Unbounded stream: document(start), document(start + 1), ..."""
    _check_split(split)  # fail at the call, not at the first next()
    start = _check_index("start", start)

    def stream() -> Iterator[str]:
      index = start
      while True:
        yield self.document(index, split)
        index += 1
    return stream()

  def _sentence(self, u: Callable[[], float], tab: _Tables) -> Node:
    children = [self._clause(u, tab)]
    if u() < _P_CONJOIN:
      children.append(Node("Conj", [], self._conj, {"lex": 0}))
      children.append(self._clause(u, tab))
    children.append(Node("Stop", [], STOP, {}))
    return Node("S", children, None, {"topic": tab.topic, "tone": tab.tone})

  def _clause(self, u: Callable[[], float], tab: _Tables) -> Node:
    # The verb comes first so that its subject can be chosen to suit it.
    transitive = u() < tab.p_transitive
    cdf, ids = tab.vt if transitive else tab.vi
    v = ids[bisect.bisect_right(cdf, u())]
    prefs = self._vt_subject[v] if transitive else self._vi_subject[v]
    subject = self._np(u, tab, 1, prefs)
    vp = self._vp(u, tab, subject.features["number"], 1, transitive, v)
    return Node("Clause", [subject, vp], None, {})

  def _np(self, u: Callable[[], float], tab: _Tables, level: int,
          prefs: tuple[int, ...]) -> Node:
    """An NP for a slot whose governor prefers noun classes `prefs`."""
    number = "pl" if u() < _P_PLURAL else "sg"
    d = bisect.bisect_right(self._cdf_det, u())
    det = Node("Det", [], self._det[number][d], {"lex": d, "number": number})
    # Without favourites (version 3, or no entity) no uniform is drawn here,
    # so those streams are unchanged.
    if tab.favourites and u() < _P_FAVOURITE:
      n = tab.favourites[int(u() * len(tab.favourites))]
    else:
      if prefs and u() < _P_PREFER:
        cdf, ids = tab.noun_by_class[prefs[int(u() * len(prefs))]]
      else:
        cdf, ids = tab.noun
      n = ids[bisect.bisect_right(cdf, u())]
    gender, semclass = self._gender[n], self._semclass[n]
    noun = Node("N", [], self._noun[number][n],
                {"lex": n, "number": number, "gender": gender, "semclass": semclass})
    children = [det]
    if u() < tab.p_adj:
      children.append(self._adjp(u, tab, semclass))
      while len(children) <= _MAX_ADJ and u() < _P_MORE_ADJ:
        children.append(self._adjp(u, tab, semclass))
    children.append(noun)
    if level < MAX_NESTING and u() < _P_MODIFIER[level]:
      if u() < _P_PP:
        p = bisect.bisect_right(self._cdf_prep, u())
        children.append(Node("PP", [Node("P", [], self._prep[p], {"lex": p}),
                                    self._np(u, tab, level + 1, self._p_object[p])],
                             None, {}))
      else:
        children.append(self._relative(u, tab, level, number, semclass))
    return Node("NP", children, None,
                {"number": number, "gender": gender, "semclass": semclass})

  def _adjp(self, u: Callable[[], float], tab: _Tables, semclass: int) -> Node:
    children = []
    if u() < _P_INTENSIFIER:
      i = bisect.bisect_right(self._cdf_intensifier, u())
      children.append(Node("Adv", [], self._adv[i], {"lex": i, "intensifier": True}))
    cdf, ids = tab.adj_by_class[semclass] if u() < _P_PREFER else tab.adj
    a = ids[bisect.bisect_right(cdf, u())]
    children.append(Node("Adj", [], self._adj[a],
                         {"lex": a, "polarity": self._polarity[a]}))
    return Node("AdjP", children, None, {})

  def _relative(self, u: Callable[[], float], tab: _Tables, level: int,
                number: str, semclass: int) -> Node:
    rel = Node("Rel", [], self._rel, {"lex": 0})
    prefer = u() < _P_PREFER
    if u() < _P_SUBJECT_REL:
      # The gap is the subject: the verb suits, and agrees with, the
      # modified noun.
      transitive = u() < tab.p_transitive
      if transitive:
        cdf, ids = tab.vt_by_subject[semclass] if prefer else tab.vt
      else:
        cdf, ids = tab.vi_by_subject[semclass] if prefer else tab.vi
      v = ids[bisect.bisect_right(cdf, u())]
      return Node("RelC", [rel, self._vp(u, tab, number, level + 1, transitive, v)],
                  None, {"kind": "subj"})
    # The gap is the object: the verb suits the modified noun as its object,
    # then the embedded subject suits the verb, which agrees with it.
    cdf, ids = tab.vt_by_object[semclass] if prefer else tab.vt
    v = ids[bisect.bisect_right(cdf, u())]
    subject = self._np(u, tab, level + 1, self._vt_subject[v])
    inner = subject.features["number"]
    verb = Node("Vt", [], self._vt[inner][v], {"lex": v, "number": inner})
    vp = Node("VP", [verb], None, {"number": inner, "negated": False,
                                   "transitive": True, "gap": True})
    return Node("RelC", [rel, subject, vp], None, {"kind": "obj"})

  def _vp(self, u: Callable[[], float], tab: _Tables, number: str,
          object_level: int, transitive: bool, v: int) -> Node:
    """VP around the already chosen verb lexeme `v`."""
    children = []
    negated = u() < tab.p_neg
    if negated:
      children.append(Node("Neg", [], self._neg, {"lex": 0}))
    if transitive:
      children.append(Node("Vt", [], self._vt[number][v], {"lex": v, "number": number}))
      children.append(self._np(u, tab.negated if negated else tab, object_level,
                               self._vt_object[v]))
    else:
      children.append(Node("Vi", [], self._vi[number][v], {"lex": v, "number": number}))
    if u() < _P_ADVERB:
      cdf, ids = tab.manner
      k = self._num_intensifiers + ids[bisect.bisect_right(cdf, u())]
      children.append(Node("Adv", [], self._adv[k], {"lex": k, "intensifier": False}))
    return Node("VP", children, None, {"number": number, "negated": negated,
                                       "transitive": transitive, "gap": False})

  # -- documents as words ------------------------------------------------------
  # Mirrors of _fact, _sentence, _clause, _np, _adjp, _relative and _vp that
  # draw the same uniforms in the same order but append surface words to `out`
  # instead of building nodes. A number is a bool here (True: plural), which
  # indexes the (sg, pl) form pairs, and an entity's favourite nouns are an
  # argument (what _Tables.favourites is to the trees: copying the tables for
  # each entity document cost ~10% of version 4's time). test_synthetic checks
  # that both paths give the same text.

  def _fact_words(self, u: Callable[[], float], e: int, out: list[str]) -> None:
    ent = self.entities
    r = int(u() * NUM_RELATIONS)
    out += (ent.names[e], ent.relations[r], self._det_forms[0][0],
            self._noun_forms[0][ent.values[e][r]], STOP)

  def _sentence_words(self, u: Callable[[], float], tab: _Tables,
                      favourites: tuple[int, ...], out: list[str]) -> None:
    self._clause_words(u, tab, favourites, out)
    if u() < _P_CONJOIN:
      out.append(self._conj)
      self._clause_words(u, tab, favourites, out)
    out.append(STOP)

  def _clause_words(self, u: Callable[[], float], tab: _Tables,
                    favourites: tuple[int, ...], out: list[str]) -> None:
    if u() < tab.p_transitive:
      cdf, ids = tab.vt
      v = ids[bisect.bisect_right(cdf, u())]
      plural = self._np_words(u, tab, favourites, 1, self._vt_subject[v], out)
      self._vp_words(u, tab, favourites, plural, 1, True, v, out)
    else:
      cdf, ids = tab.vi
      v = ids[bisect.bisect_right(cdf, u())]
      plural = self._np_words(u, tab, favourites, 1, self._vi_subject[v], out)
      self._vp_words(u, tab, favourites, plural, 1, False, v, out)

  def _np_words(self, u: Callable[[], float], tab: _Tables, favourites: tuple[int, ...],
                level: int, prefs: tuple[int, ...], out: list[str]) -> bool:
    """Appends an NP's words; returns whether it is plural."""
    plural = u() < _P_PLURAL
    out.append(self._det_forms[plural][bisect.bisect_right(self._cdf_det, u())])
    if favourites and u() < _P_FAVOURITE:
      n = favourites[int(u() * len(favourites))]
    else:
      if prefs and u() < _P_PREFER:
        cdf, ids = tab.noun_by_class[prefs[int(u() * len(prefs))]]
      else:
        cdf, ids = tab.noun
      n = ids[bisect.bisect_right(cdf, u())]
    semclass = self._semclass[n]
    if u() < tab.p_adj:
      self._adjp_words(u, tab, semclass, out)
      adjectives = 1
      while adjectives < _MAX_ADJ and u() < _P_MORE_ADJ:
        self._adjp_words(u, tab, semclass, out)
        adjectives += 1
    out.append(self._noun_forms[plural][n])
    if level < MAX_NESTING and u() < _P_MODIFIER[level]:
      if u() < _P_PP:
        p = bisect.bisect_right(self._cdf_prep, u())
        out.append(self._prep[p])
        self._np_words(u, tab, favourites, level + 1, self._p_object[p], out)
      else:
        self._relative_words(u, tab, favourites, level, plural, semclass, out)
    return plural

  def _adjp_words(self, u: Callable[[], float], tab: _Tables, semclass: int,
                  out: list[str]) -> None:
    if u() < _P_INTENSIFIER:
      out.append(self._adv[bisect.bisect_right(self._cdf_intensifier, u())])
    cdf, ids = tab.adj_by_class[semclass] if u() < _P_PREFER else tab.adj
    out.append(self._adj[ids[bisect.bisect_right(cdf, u())]])

  def _relative_words(self, u: Callable[[], float], tab: _Tables,
                      favourites: tuple[int, ...], level: int, plural: bool, semclass: int,
                      out: list[str]) -> None:
    out.append(self._rel)
    prefer = u() < _P_PREFER
    if u() < _P_SUBJECT_REL:
      transitive = u() < tab.p_transitive
      if transitive:
        cdf, ids = tab.vt_by_subject[semclass] if prefer else tab.vt
      else:
        cdf, ids = tab.vi_by_subject[semclass] if prefer else tab.vi
      v = ids[bisect.bisect_right(cdf, u())]
      self._vp_words(u, tab, favourites, plural, level + 1, transitive, v, out)
      return
    cdf, ids = tab.vt_by_object[semclass] if prefer else tab.vt
    v = ids[bisect.bisect_right(cdf, u())]
    inner = self._np_words(u, tab, favourites, level + 1, self._vt_subject[v], out)
    out.append(self._vt_forms[inner][v])

  def _vp_words(self, u: Callable[[], float], tab: _Tables, favourites: tuple[int, ...],
                plural: bool, object_level: int, transitive: bool, v: int,
                out: list[str]) -> None:
    negated = u() < tab.p_neg
    if negated:
      out.append(self._neg)
    if transitive:
      out.append(self._vt_forms[plural][v])
      self._np_words(u, tab.negated if negated else tab, favourites, object_level,
                     self._vt_object[v], out)
    else:
      out.append(self._vi_forms[plural][v])
    if u() < _P_ADVERB:
      cdf, ids = tab.manner
      out.append(self._adv[self._num_intensifiers + ids[bisect.bisect_right(cdf, u())]])


def _with_favourites(base: _Tables, favourites: tuple[int, ...]) -> _Tables:
  """`base` with an entity's favourite nouns (in a negated VP's object too)."""
  tab = dataclasses.replace(base, favourites=favourites)
  tab.negated = dataclasses.replace(base.negated, favourites=favourites, negated=tab)
  return tab


def _replace_leaf(tree: Node, old: Node, new: Node) -> Node:
  """A copy of `tree` with the leaf `old` (by identity) replaced by `new`."""
  if tree is old:
    return new
  if tree.word is not None:
    return tree
  return dataclasses.replace(tree, children=[_replace_leaf(c, old, new) for c in tree.children])


def _indexed_stream(example: Callable[[int, str], Any], split: str, start: int) -> Iterator:
  """example(start, split), example(start + 1, split), ...; bad arguments fail at the call."""
  _check_pair_split(split)
  index = _check_index("start", start)

  def stream() -> Iterator:
    i = index
    while True:
      yield example(i, split)
      i += 1
  return stream()
