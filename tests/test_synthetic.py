"""Tests for the synthetic language corpus."""

import collections
import itertools
import re
import time
from typing import Iterator

import numpy as np
import pytest

from tl_jax.data import synthetic
from tl_jax.data.synthetic import Node, SyntheticLanguage


@pytest.fixture(scope="module")
def lang() -> SyntheticLanguage:
  return SyntheticLanguage(seed=0)


@pytest.fixture(scope="module")
def trees(lang: SyntheticLanguage) -> list[Node]:
  rng = np.random.default_rng(123)
  return [lang.sentence(rng) for _ in range(3000)]


def _words_until(lang: SyntheticLanguage, num_words: int) -> list[str]:
  words: list[str] = []
  for doc in lang.documents("train"):
    words.extend(doc.split(" "))
    if len(words) >= num_words:
      return words
  raise AssertionError("unreachable: the stream is unbounded")


def _subject_verb_pairs(tree: Node) -> Iterator[tuple[Node, Node]]:
  """(subject NP, VP) for every clause, main or relative."""
  def walk(node: Node, parent: Node | None) -> Iterator[tuple[Node, Node]]:
    if node.label == "Clause":
      yield node.children[0], node.children[1]
    elif node.label == "RelC":
      if node.features["kind"] == "subj":
        # The subject gap is filled by the noun the clause modifies.
        yield parent, node.children[1]
      else:
        yield node.children[1], node.children[2]
    for child in node.children:
      yield from walk(child, node)
  return walk(tree, None)


def _child(node: Node, *labels: str) -> Node:
  (found,) = [c for c in node.children if c.label in labels]
  return found


def _number_of(lang: SyntheticLanguage, category: str, word: str) -> str:
  """Number read off the surface form alone, not off tree features."""
  forms = lang.lexicon[category].forms
  in_sg, in_pl = word in forms["sg"], word in forms["pl"]
  assert in_sg != in_pl, (category, word)
  return "sg" if in_sg else "pl"


# -- determinism -------------------------------------------------------------

def test_documents_are_deterministic():
  a, b = SyntheticLanguage(seed=5), SyntheticLanguage(seed=5)
  assert a.vocabulary == b.vocabulary
  assert [a.document(i) for i in range(20)] == [b.document(i) for i in range(20)]
  assert a.document(7, "eval") == b.document(7, "eval")
  tree_a = a.sentence(np.random.default_rng(9))
  tree_b = b.sentence(np.random.default_rng(9))
  assert a.render(tree_a) == b.render(tree_b)


def test_seeds_and_splits_differ():
  a, b = SyntheticLanguage(seed=0), SyntheticLanguage(seed=1)
  assert a.vocabulary != b.vocabulary
  assert a.document(0) != b.document(0)
  train = {a.document(i, "train") for i in range(50)}
  evals = {a.document(i, "eval") for i in range(50)}
  assert len(train) == 50 and len(evals) == 50
  assert not train & evals


def test_documents_stream_from_start(lang: SyntheticLanguage):
  for split in synthetic.SPLITS:
    got = list(itertools.islice(lang.documents(split, start=11), 4))
    assert got == [lang.document(i, split) for i in range(11, 15)]


def test_document_format(lang: SyntheticLanguage):
  for i in range(200):
    doc = lang.document(i)
    assert "\n" not in doc and "  " not in doc
    assert doc == doc.strip()
    words = doc.split(" ")
    assert words[-1] == synthetic.STOP
    assert 2 <= words.count(synthetic.STOP) <= 10
    # No empty sentence: "." never follows "." or starts the document.
    assert words[0] != synthetic.STOP
    assert all(not (x == y == synthetic.STOP) for x, y in zip(words, words[1:]))


# -- structure ---------------------------------------------------------------

def test_render_matches_leaves(lang: SyntheticLanguage, trees: list[Node]):
  for tree in trees[:200]:
    assert lang.render(tree) == [leaf.word for leaf in tree.leaves()]
    assert lang.render(tree)[-1] == synthetic.STOP


def test_verbs_agree_with_subject_head(lang: SyntheticLanguage, trees: list[Node]):
  seen = collections.Counter()
  for tree in trees:
    for subject, vp in _subject_verb_pairs(tree):
      head = _child(subject, "N")
      verb = _child(vp, "Vt", "Vi")
      number = _number_of(lang, "N", head.word)
      assert _number_of(lang, verb.label, verb.word) == number, lang.render(tree)
      seen[number] += 1
  assert seen["sg"] > 500 and seen["pl"] > 300


def test_determiners_agree_with_noun(lang: SyntheticLanguage, trees: list[Node]):
  def nps(node: Node) -> Iterator[Node]:
    if node.label == "NP":
      yield node
    for child in node.children:
      yield from nps(child)
  for tree in trees[:500]:
    for np_node in nps(tree):
      det, head = _child(np_node, "Det"), _child(np_node, "N")
      assert _number_of(lang, "Det", det.word) == _number_of(lang, "N", head.word)


def test_agreement_is_long_range(lang: SyntheticLanguage, trees: list[Node]):
  # A main-clause verb separated from its subject head by a noun of the other
  # number, e.g. "the dogs that the cat chases bark".
  attractors = 0
  for tree in trees:
    for clause in (c for c in tree.children if c.label == "Clause"):
      leaves = list(clause.leaves())
      subject, vp = clause.children
      head = _child(subject, "N")
      verb = _child(vp, "Vt", "Vi")
      start = next(i for i, x in enumerate(leaves) if x is head)
      stop = next(i for i, x in enumerate(leaves) if x is verb)
      number = _number_of(lang, "N", head.word)
      if any(x.label == "N" and _number_of(lang, "N", x.word) != number
             for x in leaves[start + 1:stop]):
        attractors += 1
  assert attractors >= 100


def test_nesting(trees: list[Node]):
  depths = collections.Counter(tree.nesting() for tree in trees)
  assert max(depths) <= synthetic.MAX_NESTING
  assert sum(n for d, n in depths.items() if d >= 3) >= 30
  # Deep sentences are occasional, not the norm.
  assert depths[1] + depths[2] > len(trees) / 2


def test_tree_carries_task_features(lang: SyntheticLanguage, trees: list[Node]):
  leaves = [leaf for tree in trees for leaf in tree.leaves()]
  labels = collections.Counter(leaf.label for leaf in leaves)
  for label in ("Det", "N", "Adj", "Adv", "P", "Rel", "Vt", "Vi", "Neg", "Conj"):
    assert labels[label] > 0, label
  assert {x.features["gender"] for x in leaves if x.label == "N"} == {"m", "f"}
  assert {x.features["polarity"] for x in leaves if x.label == "Adj"} == {-1, 0, 1}
  intensifier = {x.features["intensifier"] for x in leaves if x.label == "Adv"}
  assert intensifier == {True, False}
  for leaf in leaves:
    if "lex" in leaf.features:
      assert leaf.word in lang.lexicon[leaf.label].forms.get(
          leaf.features.get("number", "base"))
  polarity = collections.Counter(lang.lexicon["Adj"].features["polarity"])
  num_adj = len(lang.lexicon["Adj"])
  assert 0.15 < polarity[1] / num_adj < 0.25
  assert 0.15 < polarity[-1] / num_adj < 0.25


# -- lexicon and statistics --------------------------------------------------

def test_zipfian_nouns(lang: SyntheticLanguage):
  words = _words_until(lang, 100_000)
  noun_lexeme = {w: i for forms in lang.lexicon["N"].forms.values()
                 for i, w in enumerate(forms)}
  counts = collections.Counter(noun_lexeme[w] for w in words if w in noun_lexeme)
  ranked = counts.most_common()
  assert ranked[0][0] == 0  # the lexicon's rank 0 really is the most frequent
  assert ranked[0][1] > 5 * ranked[9][1]


def test_vocabulary(lang: SyntheticLanguage):
  vocab = lang.vocabulary
  assert len(set(vocab)) == len(vocab)
  assert all(re.fullmatch(r"[a-z]+|\.", w) for w in vocab)
  num_lexemes = sum(len(c) for c in lang.lexicon.values())
  assert lang.num_words / 2 <= num_lexemes <= 2 * lang.num_words
  assert lang.num_words / 2 <= len(vocab) <= 2 * lang.num_words
  emitted = set(_words_until(lang, 30_000))
  assert emitted <= set(vocab)
  assert len(emitted) > len(vocab) / 4


def test_small_lexicon_still_works():
  small = SyntheticLanguage(seed=3, num_words=synthetic.MIN_WORDS)
  vocab = set(small.vocabulary)
  for i in range(50):
    assert set(small.document(i).split(" ")) <= vocab


def test_bad_arguments_raise(lang: SyntheticLanguage):
  with pytest.raises(ValueError, match="split"):
    lang.document(0, "test")
  with pytest.raises(ValueError, match="split"):
    lang.documents("validation")
  with pytest.raises(ValueError, match="num_words"):
    SyntheticLanguage(num_words=synthetic.MIN_WORDS - 1)
  with pytest.raises(ValueError, match="index"):
    lang.document(-1)


# -- semantics: topics and selectional preferences ---------------------------

_OPEN = ("N", "Vt", "Vi", "Adj", "Adv")


def _lexeme_of(lang: SyntheticLanguage) -> dict[str, tuple[str, int]]:
  """Surface form -> (category, lexeme) for the open classes."""
  return {w: (name, i) for name in _OPEN
          for forms in lang.lexicon[name].forms.values() for i, w in enumerate(forms)}


def _entropy(counts: collections.Counter) -> float:
  p = np.array(list(counts.values()), dtype=np.float64)
  p /= p.sum()
  return float(-(p * np.log2(p)).sum())


def _conditional_entropy(pairs: list[tuple]) -> tuple[float, float]:
  """Plug-in H(Y) and H(Y | X) in bits from (x, y) samples."""
  joint = collections.Counter(pairs)
  xs = collections.Counter(x for x, _ in pairs)
  ys = collections.Counter(y for _, y in pairs)
  return _entropy(ys), _entropy(joint) - _entropy(xs)


def test_lexicon_semantics(lang: SyntheticLanguage):
  k, c = synthetic.NUM_TOPICS, synthetic.NUM_CLASSES
  semclass = lang.lexicon["N"].features["semclass"]
  assert set(semclass) == set(range(c))
  intensifier = lang.lexicon["Adv"].features["intensifier"]
  for name in _OPEN:
    topics = lang.lexicon[name].features["topics"]
    assert len(topics) == len(lang.lexicon[name])
    for i, mine in enumerate(topics):
      if name == "Adv" and intensifier[i]:
        assert mine == ()  # function-like words stay general
      else:
        assert len(set(mine)) == 2 and all(0 <= t < k for t in mine)
    # Every topic owns some lexemes of every open class.
    assert set(itertools.chain(*topics)) == set(range(k))
  for name, key in (("Vt", "subject_classes"), ("Vt", "object_classes"),
                    ("Vi", "subject_classes"), ("Adj", "noun_classes"),
                    ("P", "object_classes")):
    prefs = lang.lexicon[name].features[key]
    assert len(prefs) == len(lang.lexicon[name])
    assert all(1 <= len(set(p)) == len(p) <= 2 and set(p) <= set(range(c)) for p in prefs)
    if name != "P":  # 16 prepositions need not cover every class
      assert set(itertools.chain(*prefs)) == set(range(c)), (name, key)


def test_sentence_topic_argument(lang: SyntheticLanguage, trees: list[Node]):
  assert all(tree.features["topic"] is None for tree in trees[:50])
  a = lang.sentence(np.random.default_rng(4), topic=3)
  b = lang.sentence(np.random.default_rng(4), topic=3)
  assert a.features["topic"] == 3 and lang.render(a) == lang.render(b)
  for bad in (-1, synthetic.NUM_TOPICS, 1.0, True):
    with pytest.raises(ValueError, match="topic"):
      lang.sentence(np.random.default_rng(0), topic=bad)


def test_trees_record_noun_classes(lang: SyntheticLanguage, trees: list[Node]):
  semclass = lang.lexicon["N"].features["semclass"]
  def nps(node: Node) -> Iterator[Node]:
    if node.label == "NP":
      yield node
    for child in node.children:
      yield from nps(child)
  for tree in trees[:300]:
    for np_node in nps(tree):
      head = _child(np_node, "N")
      assert head.features["semclass"] == semclass[head.features["lex"]]
      assert np_node.features["semclass"] == head.features["semclass"]


def test_topic_words_follow_topic(lang: SyntheticLanguage):
  # Beyond the general head of each category, words mostly belong to the
  # sentence's topic; by chance only 2 / NUM_TOPICS would.
  rng = np.random.default_rng(5)
  hits = total = 0
  for i in range(400):
    topic = i % synthetic.NUM_TOPICS
    for leaf in lang.sentence(rng, topic=topic).leaves():
      if leaf.label not in _OPEN or leaf.features["lex"] < 20:
        continue
      mine = lang.lexicon[leaf.label].features["topics"]
      if mine[leaf.features["lex"]]:  # intensifiers have no topic
        hits += topic in mine[leaf.features["lex"]]
        total += 1
  assert total > 500
  assert hits / total > 0.8


def test_documents_stay_on_topic(lang: SyntheticLanguage):
  # Sentences of one document share topical (non-head) open-class lexemes
  # far more often than sentences of neighbouring documents, whose topics
  # are independent: context across sentences predicts words.
  lexeme = _lexeme_of(lang)
  docs = []
  for i in range(500):
    sentences, current = [], set()
    for w in lang.document(i).split(" "):
      if w == synthetic.STOP:
        sentences.append(current)
        current = set()
      elif w in lexeme and lexeme[w][1] >= 20:
        current.add(lexeme[w])
    docs.append(sentences)
  same = np.mean([len(a & b) for d in docs for a, b in itertools.combinations(d, 2)])
  other = np.mean([len(a & b) for d, e in zip(docs, docs[1:]) for a in d for b in e])
  assert same > 4 * other, (same, other)


def test_selectional_preferences_reduce_entropy(lang: SyntheticLanguage):
  # H(object class | verb) and H(subject class | verb) on ~50k main clauses
  # are far below the classes' own entropy: the verb predicts its arguments.
  rng = np.random.default_rng(11)
  objects, subjects = [], []
  while len(subjects) < 50_000:
    for clause in lang.sentence(rng).children:
      if clause.label != "Clause":
        continue
      subject, vp = clause.children
      verb = _child(vp, "Vt", "Vi")
      key = (verb.label, verb.features["lex"])
      subjects.append((key, subject.features["semclass"]))
      if verb.label == "Vt":
        objects.append((key, _child(vp, "NP").features["semclass"]))
  for pairs in (objects, subjects):
    h_class, h_given_verb = _conditional_entropy(pairs)
    assert h_class > 2.9  # ten classes, unequal only through the top nouns
    assert h_class - h_given_verb > 1.0, (h_class, h_given_verb)


def test_slots_follow_governor_preferences(lang: SyntheticLanguage, trees: list[Node]):
  # Every governed noun slot, including relative clauses (whose verb is drawn
  # for the noun they modify) and adjectives (drawn for their noun), obeys the
  # governor's preference most of the time.
  feats = {name: cat.features for name, cat in lang.lexicon.items()}
  hits: dict[str, list[bool]] = collections.defaultdict(list)

  def check(relation: str, prefs: tuple[int, ...], np_node: Node) -> None:
    hits[relation].append(np_node.features["semclass"] in prefs)

  def verb_of(vp: Node) -> Node:
    return _child(vp, "Vt", "Vi")

  def subject_prefs(verb: Node) -> tuple[int, ...]:
    return feats[verb.label]["subject_classes"][verb.features["lex"]]

  def walk(node: Node, parent: Node | None) -> None:
    if node.label == "Clause":
      subject, vp = node.children
      check("subject", subject_prefs(verb_of(vp)), subject)
    elif node.label == "VP" and node.features["transitive"] and not node.features["gap"]:
      verb = verb_of(node)
      check("object", feats["Vt"]["object_classes"][verb.features["lex"]],
            _child(node, "NP"))
    elif node.label == "PP":
      p, obj = node.children
      check("pp", feats["P"]["object_classes"][p.features["lex"]], obj)
    elif node.label == "AdjP":
      adj = _child(node, "Adj")
      check("adj", feats["Adj"]["noun_classes"][adj.features["lex"]], parent)
    elif node.label == "RelC":
      if node.features["kind"] == "subj":
        check("rel-subject", subject_prefs(verb_of(node.children[1])), parent)
      else:
        _, subject, vp = node.children
        verb = verb_of(vp)
        check("rel-object", feats["Vt"]["object_classes"][verb.features["lex"]], parent)
        check("rel-subject", subject_prefs(verb), subject)
    for child in node.children:
      walk(child, node)

  for tree in trees:
    walk(tree, None)
  for relation, seen in hits.items():
    assert len(seen) > 200, relation
    assert np.mean(seen) > 0.75, (relation, np.mean(seen))


def test_generation_speed(lang: SyntheticLanguage):
  lang.document(0)  # warm caches
  start, size = time.perf_counter(), 0
  for doc in lang.documents("train", start=1000):
    size += len(doc) + 1
    if size >= 200_000:
      break
  assert time.perf_counter() - start < 2.0
