"""Tests for the synthetic language corpus."""

import collections
import copy
import itertools
import os
import re
import time
import zlib
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
  assert a.target_vocabulary != b.target_vocabulary
  assert a.pair(0) != b.pair(0)
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


# -- translation: the "French-like" target language ----------------------------

_CONTENT = ("N", "Vt", "Vi", "Adj", "Adv", "P")


def _forms_index(lexicon: dict[str, synthetic.Category]) -> dict[str, tuple[str, str, int]]:
  """Surface form -> (category, inflection key, lexeme)."""
  index = {}
  for name, cat in lexicon.items():
    for key, forms in cat.forms.items():
      for i, w in enumerate(forms):
        assert w not in index, (w, name)  # every form names one lexeme
        index[w] = (name, key, i)
  return index


@pytest.fixture(scope="module")
def target_index(lang: SyntheticLanguage) -> dict[str, tuple[str, str, int]]:
  return _forms_index(lang.target_lexicon)


def _phrases(node: Node, label: str) -> Iterator[Node]:
  if node.label == label:
    yield node
  for child in node.children:
    yield from _phrases(child, label)


def test_pairs_are_deterministic(lang: SyntheticLanguage):
  other = SyntheticLanguage(seed=0)
  assert other.target_vocabulary == lang.target_vocabulary
  for split in synthetic.PAIR_SPLITS:
    assert [other.pair(i, split) for i in range(20)] == [lang.pair(i, split) for i in range(20)]
  assert lang.render_target(lang.pair_tree(3, "test")) == lang.pair(3, "test")[1].split(" ")


def test_pair_splits_differ(lang: SyntheticLanguage):
  # Splits own disjoint sets of sentences (by a hash of the source text), so
  # even short frequent sentences never recur across them.
  by_split = {split: [lang.pair(i, split)[0] for i in range(200)]
              for split in synthetic.PAIR_SPLITS}
  for split, sources in by_split.items():
    assert len(set(sources)) > 185, split
  for a, b in itertools.combinations(synthetic.PAIR_SPLITS, 2):
    assert not set(by_split[a]) & set(by_split[b]), (a, b)
  # Pairs do not replay documents' streams: document i's first sentence is
  # not pair i (chance agreement of a short sentence aside).
  firsts = [lang.document(i).split(" . ")[0] + " ." for i in range(50)]
  assert sum(f == s for f, s in zip(firsts, by_split["train"])) <= 2


def test_pairs_stream_from_start(lang: SyntheticLanguage):
  for split in synthetic.PAIR_SPLITS:
    got = list(itertools.islice(lang.pairs(split, start=7), 4))
    assert got == [lang.pair(i, split) for i in range(7, 11)]


def test_pair_format(lang: SyntheticLanguage):
  source_vocab, target_vocab = set(lang.vocabulary), set(lang.target_vocabulary)
  for source, target in itertools.islice(lang.pairs("train"), 500):
    for text, vocab in ((source, source_vocab), (target, target_vocab)):
      assert text == text.strip() and "  " not in text and "\n" not in text
      words = text.split(" ")
      assert words[-1] == synthetic.STOP and words.count(synthetic.STOP) == 1
      assert set(words) <= vocab
    assert len(source.split(" ")) <= synthetic.MAX_PAIR_WORDS


def test_bad_pair_arguments_raise(lang: SyntheticLanguage):
  with pytest.raises(ValueError, match="split"):
    lang.pair(0, "validation")
  with pytest.raises(ValueError, match="split"):
    lang.pairs("dev")  # at the call, not at the first next()
  with pytest.raises(ValueError, match="index"):
    lang.pair(-1)
  with pytest.raises(ValueError, match="start"):
    lang.pairs(start=-2)


def test_target_lexicon_is_one_to_one(lang: SyntheticLanguage,
                                      target_index: dict[str, tuple[str, str, int]]):
  # Each source lexeme has exactly one target lexeme (and all target forms
  # are distinct, which _forms_index checked).
  assert lang.target_lexicon.keys() == lang.lexicon.keys()
  for name, cat in lang.target_lexicon.items():
    assert len(cat) == len(lang.lexicon[name]), name
  assert set(lang.target_lexicon["Det"].forms) == set(synthetic.AGREEMENT_CELLS)
  assert set(lang.target_lexicon["Adj"].forms) == set(synthetic.AGREEMENT_CELLS)
  vocab = lang.target_vocabulary
  assert len(set(vocab)) == len(vocab) == len(target_index) + 1
  assert all(re.fullmatch(r"[a-z]+|\.", w) for w in vocab)


def test_vocabularies_nearly_disjoint(lang: SyntheticLanguage):
  source, target = set(lang.vocabulary), set(lang.target_vocabulary)
  assert len(source & target) < 0.05 * len(target), source & target
  emitted = {w for _, t in itertools.islice(lang.pairs("train"), 2000) for w in t.split(" ")}
  assert len(emitted) > len(target) / 4


def test_target_is_a_function_of_the_tree(lang: SyntheticLanguage, trees: list[Node]):
  for tree in trees[:200]:
    twin = copy.deepcopy(tree)
    for leaf in twin.leaves():
      leaf.word = "?"  # the target reads features, never source words
    assert lang.render_target(twin) == lang.render_target(tree)
  # Nor is it ambiguous given the source words alone: equal sources (short
  # sentences recur) always have equal targets.
  seen: dict[str, str] = {}
  for tree in trees:
    source, target = " ".join(lang.render(tree)), " ".join(lang.render_target(tree))
    assert seen.setdefault(source, target) == target, source


def test_target_agreement(lang: SyntheticLanguage, trees: list[Node],
                          target_index: dict[str, tuple[str, str, int]]):
  gender = lang.target_lexicon["N"].features["gender"]
  cells = collections.Counter()
  for tree in trees[:1500]:
    for np_node in _phrases(tree, "NP"):
      # Read gender and number off the target words alone: Det N (Adv? Adj)*.
      det, noun, *rest = [target_index.get(w) for w in lang.render_target(np_node)]
      assert det[0] == "Det" and noun[0] == "N"
      assert noun[2] == _child(np_node, "N").features["lex"]
      cell = f"{gender[noun[2]]}.{noun[1]}"
      assert det[1] == cell
      adjectives = list(itertools.takewhile(lambda x: x and x[0] in ("Adj", "Adv"), rest))
      adjectives = [x for x in adjectives if x[0] == "Adj"]
      assert len(adjectives) == sum(c.label == "AdjP" for c in np_node.children)
      assert all(x[1] == cell for x in adjectives), lang.render_target(np_node)
      cells[cell] += 1
    for subject, vp in _subject_verb_pairs(tree):
      subject_words = lang.render_target(subject)
      number = target_index[subject_words[1]][1]
      verbs = [target_index[w] for w in lang.render_target(vp)[:3]
               if target_index[w][0] in ("Vt", "Vi")]
      assert verbs[0][1] == number, lang.render_target(tree)
  assert min(cells.values()) > 200, cells


def test_target_reordering(lang: SyntheticLanguage, trees: list[Node],
                           target_index: dict[str, tuple[str, str, int]]):
  adjectival = negated = 0
  neg = lang.target_lexicon["Neg"].forms
  pre, post = neg["pre"][0], neg["post"][0]
  rel = lang.target_lexicon["Rel"].forms
  for tree in trees:
    words = lang.render_target(tree)
    # Adjectives follow their noun, nearest first (mirror order).
    for np_node in _phrases(tree, "NP"):
      adjps = [c for c in np_node.children if c.label == "AdjP"]
      if not adjps:
        continue
      sub = [target_index[w] for w in lang.render_target(np_node)]
      assert sub[1][0] == "N"
      # Right after the noun: its adjectives, each with its intensifier.
      after = itertools.takewhile(lambda x: x[0] in ("Adj", "Adv"), sub[2:])
      got = [x[2] for x in after if x[0] == "Adj"]
      assert got == [_child(a, "Adj").features["lex"] for a in reversed(adjps)]
      adjectival += 1
    # Negation: "pre V post" around the verb, once per negated VP.
    num_neg = sum(vp.features["negated"] for vp in _phrases(tree, "VP"))
    assert words.count(pre) == words.count(post) == num_neg
    for i, w in enumerate(words):
      if w == pre:
        assert target_index[words[i + 1]][0] in ("Vt", "Vi") and words[i + 2] == post
        negated += 1
    # The relative pronoun marks its gap.
    for relc in _phrases(tree, "RelC"):
      assert lang.render_target(relc)[0] == rel[relc.features["kind"]][0]
  assert adjectival > 500 and negated > 200


def test_target_sentence_word_order(lang: SyntheticLanguage,
                                    target_index: dict[str, tuple[str, str, int]]):
  # On the texts of whole pairs with one noun: its adjectives precede it in
  # the source and follow it in the target.
  source_index = _forms_index(lang.lexicon)
  checked = 0
  for source, target in itertools.islice(lang.pairs("train"), 400):
    s = [source_index.get(w, (w,))[0] for w in source.split(" ")]
    t = [target_index.get(w, (w,))[0] for w in target.split(" ")]
    if s.count("N") != 1 or "Adj" not in s:
      continue
    assert max(k for k, c in enumerate(s) if c == "Adj") < s.index("N")
    assert min(k for k, c in enumerate(t) if c == "Adj") > t.index("N")
    checked += 1
  assert checked > 20


def test_content_lexemes_preserved(lang: SyntheticLanguage,
                                   target_index: dict[str, tuple[str, str, int]]):
  # A word-alignment sanity check on the texts alone: mapping words back to
  # lexemes gives the same multiset on both sides.
  source_index = _forms_index(lang.lexicon)
  for source, target in itertools.islice(lang.pairs("eval"), 300):
    s = [source_index[w] for w in source.split(" ")[:-1]]
    t = [target_index[w] for w in target.split(" ")[:-1]]
    for name in _CONTENT + ("Det", "Rel", "Conj"):
      assert (collections.Counter(x[2] for x in s if x[0] == name)
              == collections.Counter(x[2] for x in t if x[0] == name)), (name, source, target)
    num_neg = sum(x[0] == "Neg" for x in s)
    assert sum(x[0] == "Neg" for x in t) == 2 * num_neg
    assert len(t) == len(s) + num_neg


def test_small_lexicon_pairs():
  small = SyntheticLanguage(seed=3, num_words=synthetic.MIN_WORDS)
  source_vocab, target_vocab = set(small.vocabulary), set(small.target_vocabulary)
  assert len(source_vocab & target_vocab) < 0.05 * len(target_vocab)
  for source, target in itertools.islice(small.pairs("test"), 50):
    assert set(source.split(" ")) <= source_vocab
    assert set(target.split(" ")) <= target_vocab


def test_pair_speed(lang: SyntheticLanguage):
  # ~2 MB/s of paired text on one core; the bound leaves room for loaded CI.
  lang.pair(0)
  start, size = time.perf_counter(), 0
  for source, target in lang.pairs("train", start=5000):
    size += len(source) + len(target) + 2
    if size >= 400_000:
      break
  assert time.perf_counter() - start < 2.0


# -- sentiment and document tone -----------------------------------------------

def _adjp(polarity: int, intensified: bool = False) -> Node:
  children = [Node("Adv", [], "very", {"lex": 0, "intensifier": True})] if intensified else []
  children.append(Node("Adj", [], "adj", {"lex": 0, "polarity": polarity}))
  return Node("AdjP", children)


def _np(*adjps: Node, modifier: Node | None = None) -> Node:
  children = [Node("Det", [], "the"), *adjps, Node("N", [], "n")]
  return Node("NP", children + ([modifier] if modifier else []))


def _vp(negated: bool, obj: Node | None = None) -> Node:
  children = [Node("Neg", [], "not")] if negated else []
  children.append(Node("Vt" if obj else "Vi", [], "v"))
  return Node("VP", children + ([obj] if obj else []),
              features={"negated": negated, "transitive": obj is not None, "gap": False})


def _sentence(subject: Node, vp: Node) -> Node:
  return Node("S", [Node("Clause", [subject, vp]), Node("Stop", [], ".")])


def _reference_sum(node: Node, sign: int = 1, weight: int = 1) -> int:
  """The polarity sum, written independently of the module's."""
  if node.label == "VP" and node.features["negated"]:
    sign = -sign
  if node.label == "AdjP" and any(c.label == "Adv" for c in node.children):
    weight = 2
  if node.label == "Adj":
    return sign * weight * node.features["polarity"]
  return sum(_reference_sum(c, sign, weight) for c in node.children)


@pytest.fixture(scope="module")
def sentiment_trees(lang: SyntheticLanguage) -> list[Node]:
  return [lang.sentiment_tree(i) for i in range(400)]


def test_sentiment_of_hand_built_trees(lang: SyntheticLanguage):
  # good N [not] V the very good N: +1 -+ 2.
  tree = _sentence(_np(_adjp(1)), _vp(True, _np(_adjp(1, intensified=True))))
  assert lang.sentiment(tree) == -1
  assert lang.sentiment(tree, negation=False) == 1
  assert lang.sentiment(_sentence(_np(_adjp(1)), _vp(False, _np(_adjp(1, True))))) == 1
  # Nested negation composes: bad N [not] V the N that [not] V the bad N.
  inner = Node("RelC", [Node("Rel", [], "that"), _vp(True, _np(_adjp(-1)))],
               features={"kind": "subj"})
  tree = _sentence(_np(_adjp(-1)), _vp(True, _np(modifier=inner)))
  assert lang.sentiment(tree) == -1  # -1 + (-1)(-1)(-1)
  # Neutral adjectives and a tie count as no sentiment.
  assert lang.sentiment(_sentence(_np(_adjp(0)), _vp(False))) == 0
  assert lang.sentiment(_sentence(_np(_adjp(1), _adjp(-1)), _vp(False))) == 0
  assert lang.sentiment(_np(_adjp(-1, True))) == -1  # any phrase


def test_sentiment_examples_are_deterministic(lang: SyntheticLanguage):
  other = SyntheticLanguage(seed=0)
  for split in synthetic.PAIR_SPLITS:
    got = [other.sentiment_example(i, split) for i in range(8)]
    assert got == [lang.sentiment_example(i, split) for i in range(8)]
    assert list(itertools.islice(lang.sentiment_examples(split, start=3), 5)) == got[3:8]
  assert SyntheticLanguage(seed=1).sentiment_example(0) != lang.sentiment_example(0)


def test_sentiment_labels(lang: SyntheticLanguage, sentiment_trees: list[Node]):
  vocab = set(lang.vocabulary)
  examples = [lang.sentiment_example(i) for i in range(len(sentiment_trees))]
  for (text, label), tree in zip(examples, sentiment_trees):
    assert text == " ".join(lang.render(tree))
    words = text.split(" ")
    assert words[-1] == synthetic.STOP and words.count(synthetic.STOP) == 1
    assert len(words) <= synthetic.MAX_PAIR_WORDS and set(words) <= vocab
    assert label in (0, 1)
    total = _reference_sum(tree)
    assert total != 0 and label == int(total > 0), text
  assert 0.4 < np.mean([label for _, label in examples]) < 0.6
  assert len({text for text, _ in examples}) > 0.97 * len(examples)


def test_sentiment_splits_are_disjoint(lang: SyntheticLanguage):
  by_split = {split: {lang.sentiment_example(i, split)[0] for i in range(150)}
              for split in synthetic.PAIR_SPLITS}
  for a, b in itertools.combinations(synthetic.PAIR_SPLITS, 2):
    assert not by_split[a] & by_split[b], (a, b)


def test_negation_decides_many_labels(lang: SyntheticLanguage,
                                      sentiment_trees: list[Node]):
  flipped = [t for t in sentiment_trees
             if lang.sentiment(t) != lang.sentiment(t, negation=False)]
  assert 0.3 < len(flipped) / len(sentiment_trees) < 0.5
  for tree in flipped:
    assert any(vp.features["negated"] for vp in _phrases(tree, "VP"))
  # With one negated VP, the label is the sum with that VP's part negated.
  checked = 0
  for tree in flipped:
    negated = [vp for vp in _phrases(tree, "VP") if vp.features["negated"]]
    if len(negated) != 1:
      continue
    total, part = _reference_sum(tree), _reference_sum(negated[0])
    assert lang.sentiment(tree) == np.sign(total) != 0
    # Without the negation the VP's part counts with the other sign, and the
    # sum is the naive one, of the other (or no) sign.
    twin = copy.deepcopy(tree)
    for vp in _phrases(twin, "VP"):
      vp.features["negated"] = False
    assert _reference_sum(twin) == total - 2 * part
    assert np.sign(total - 2 * part) == lang.sentiment(tree, negation=False)
    assert np.sign(total - 2 * part) != np.sign(total)
    checked += 1
  assert checked > 50


def test_bad_sentiment_arguments_raise(lang: SyntheticLanguage):
  with pytest.raises(ValueError, match="split"):
    lang.sentiment_example(0, "validation")
  with pytest.raises(ValueError, match="split"):
    lang.sentiment_examples("dev")  # at the call, not at the first next()
  with pytest.raises(ValueError, match="index"):
    lang.sentiment_example(-1)
  with pytest.raises(ValueError, match="start"):
    lang.sentiment_examples(start=-2)
  for bad in (2, -2, True, 0.5):
    with pytest.raises(ValueError, match="tone"):
      lang.sentence(np.random.default_rng(0), tone=bad)


def test_documents_have_a_tone(lang: SyntheticLanguage):
  # Read polarity off the document text: a positive document has many more
  # positive than negative adjectives, a negative one the reverse, so that
  # pretraining on documents can learn polarity from co-occurrence.
  polarity = dict(zip(lang.lexicon["Adj"].forms["base"],
                      lang.lexicon["Adj"].features["polarity"]))
  counts = {tone: collections.Counter() for tone in (-1, 0, 1)}
  sentiments = {tone: collections.Counter() for tone in (-1, 0, 1)}
  for i in range(200):
    trees = lang.document_trees(i)
    assert lang.document(i) == " ".join(w for t in trees for w in lang.render(t))
    tone = trees[0].features["tone"]
    assert all(t.features["tone"] == tone for t in trees)
    counts[tone]["docs"] += 1
    counts[tone].update(polarity[w] for w in lang.document(i).split(" ") if w in polarity)
    sentiments[tone].update(lang.sentiment(t) for t in trees)
  for tone in (-1, 0, 1):
    assert counts[tone]["docs"] > 20, counts
  assert counts[1][1] > 3 * counts[1][-1], counts[1]
  assert counts[-1][-1] > 3 * counts[-1][1], counts[-1]
  assert 0.7 < counts[0][1] / counts[0][-1] < 1.4, counts[0]
  # Negated objects take the opposite polarity, so whole sentences follow the
  # tone too.
  assert sentiments[1][1] > 4 * sentiments[1][-1], sentiments[1]
  assert sentiments[-1][-1] > 4 * sentiments[-1][1], sentiments[-1]
  # Sentences drawn outside documents have no tone.
  assert lang.sentence(np.random.default_rng(0)).features["tone"] == 0
  assert lang.sentence(np.random.default_rng(0), topic=2, tone=-1).features["tone"] == -1


def test_agreement_examples_flip_only_the_main_verb():
  lang = SyntheticLanguage(0, 3000)
  examples = [lang.agreement_example(i) for i in range(300)]
  assert examples == [lang.agreement_example(i) for i in range(300)]  # deterministic
  assert 0.4 < np.mean([label for _, label in examples]) < 0.6
  for i, (text, label) in enumerate(examples[:100]):
    tree = lang._agreement_example(i, "train")[0]
    subject, vp = tree.children[0].children
    assert any(c.label in ("PP", "RelC") for c in subject.children)  # an attractor phrase
    grammatical = lang.render(tree)
    words = text.split()
    differing = [j for j, (a, b) in enumerate(zip(grammatical, words)) if a != b]
    assert len(words) == len(grammatical)
    assert len(differing) == (0 if label else 1)
    if not label:  # the one changed word is the main verb, now in the other number
      verb = next(c for c in vp.children if c.label in ("Vt", "Vi"))
      assert grammatical[differing[0]] == verb.word
  evals = {text for text, _ in itertools.islice(lang.agreement_examples("eval"), 100)}
  assert not evals & {text for text, _ in examples}


# -- versions: 3 frozen, 4 with entities ----------------------------------------


def test_version_3_is_frozen():
  # Workdirs and caches keyed by version 3 must keep meaning the same text: this checksum is
  # of documents made by the generator before versions existed (commit e9145d5).
  lang = SyntheticLanguage(seed=0, num_words=700)
  text = " ".join(lang.document(i, s) for i in range(20) for s in ("train", "eval"))
  assert zlib.crc32(text.encode()) == 3263119388


@pytest.fixture(scope="module")
def lang4() -> SyntheticLanguage:
  return SyntheticLanguage(seed=0, num_words=700, version=4)


def test_version_4_keeps_lexicon_and_tasks(lang4: SyntheticLanguage):
  lang3 = SyntheticLanguage(seed=0, num_words=700)
  assert lang4.lexicon == lang3.lexicon and lang3.entities is None
  for i in range(30):
    assert lang4.pair(i, "eval") == lang3.pair(i, "eval")
    assert lang4.sentiment_example(i) == lang3.sentiment_example(i)
    assert lang4.agreement_example(i) == lang3.agreement_example(i)
  assert set(lang3.vocabulary) < set(lang4.vocabulary)
  with pytest.raises(ValueError, match="version"):
    SyntheticLanguage(seed=0, num_words=700, version=5)


def test_version_4_entity_documents(lang4: SyntheticLanguage):
  ent = lang4.entities
  assert len(ent.names) == synthetic.ENTITIES_PER_WORD * 700
  vocab = set(lang4.vocabulary)
  words = ent.names + ent.relations
  # Names and relation words are new, distinct words: each one names one thing.
  lexicon_forms = set(SyntheticLanguage(seed=0, num_words=700).vocabulary)
  assert len(set(words)) == len(words) and not lexicon_forms.intersection(words)
  entity_docs, facts, nouns, favourite_nouns = 0, 0, 0, 0
  seen = collections.Counter()
  for i in range(400):
    doc = lang4.document_trees(i)
    assert " ".join(w for t in doc for w in lang4.render(t)) == lang4.document(i)
    assert all(w in vocab for t in doc for w in lang4.render(t))
    if not doc[0].features.get("fact"):
      assert not any(t.features.get("fact") for t in doc)
      continue
    entity_docs += 1
    name, relation, np_node, _ = doc[0].children
    e = name.features["entity"]
    seen[e] += 1
    assert all(t.features["topic"] == ent.topics[e] for t in doc)
    for tree in doc:
      if tree.features.get("fact"):
        facts += 1
        name, relation, np_node, _ = tree.children
        assert name.features["entity"] == e and name.word == ent.names[e]
        r = relation.features["lex"]
        value = np_node.children[1].features["lex"]
        # The value is a function of (entity, relation): what a model must memorise.
        assert value == ent.values[e][r]
        assert np_node.features["semclass"] == ent.relation_classes[r] % synthetic.NUM_CLASSES
      else:
        for leaf in tree.leaves():
          if leaf.label == "N":
            nouns += 1
            favourite_nouns += leaf.features["lex"] in ent.favourites[e]
  assert 0.5 < entity_docs / 400 < 0.7  # _P_ENTITY_DOC = 0.6
  assert facts > entity_docs  # a first fact, and more
  # _P_FAVOURITE of the nouns, plus favourites drawn by chance.
  assert 0.25 < favourite_nouns / nouns < 0.45
  # Zipfian entities: the most frequent recur, most appear rarely or never.
  assert seen.most_common(1)[0][1] >= 4 and len(seen) > 100


def test_token_batches_match_tokenizing_documents(tmp_path):
  from tl_jax.config import DataConfig
  from tl_jax.data import cache as token_cache
  from tl_jax.data.sources import SHARD_DOCS, SyntheticSource
  from tl_jax.data.tokenizer import EOS_ID, cached_tokenizer

  data = DataConfig(vocab_size=800, tokenizer_train_chars=200_000)
  source = SyntheticSource(seed=0, num_words=700, version=4, workers=1)
  tokenizer = cached_tokenizer(source, data, str(tmp_path))
  docs = list(itertools.islice(source.documents("train"), 2 * SHARD_DOCS))
  expected = np.concatenate([np.asarray(ids + [EOS_ID]) for ids in tokenizer.encode(docs)])
  # The same stream in-process and from two spawned workers.
  for workers in (1, 2):
    batches = SyntheticSource(seed=0, num_words=700, version=4,
                              workers=workers).token_batches("train", tokenizer, EOS_ID)
    got = np.concatenate(list(itertools.islice(batches, 2)))
    batches.close()
    np.testing.assert_array_equal(got, expected)
  # The cache takes it, cut at its budget.
  cache = token_cache.prepare(source, "train", tokenizer, 1000, str(tmp_path))
  np.testing.assert_array_equal(cache.tokens, expected[:1000])


def test_version_selects_cache_and_is_validated():
  from tl_jax import config as config_lib
  from tl_jax.data.sources import SyntheticSource, make_source
  from tl_jax.errors import UserError

  old = SyntheticSource(seed=0, num_words=3000).fingerprint()
  # Version 3's fingerprint (so its caches' keys) is the one from before versions existed.
  assert old == {"kind": "synthetic", "version": 3, "seed": 0, "num_words": 3000}
  data = config_lib.DataConfig(synthetic_version=4)
  assert make_source(data).fingerprint() == dict(old, version=4)
  assert config_lib.SYNTHETIC_VERSIONS == synthetic.VERSIONS
  assert config_lib.DataConfig().synthetic_version == synthetic.DEFAULT_VERSION == 3
  c = config_lib.Config()
  c.data.synthetic_version = 5
  with pytest.raises(UserError, match="data.synthetic_version=5"):
    config_lib.validate(c)


def test_version_4_is_frozen():
  # Caches keyed by version 4 must keep meaning the same text, however the generator is sped
  # up: this checksum is of version 4 as first committed (5fbbdf1); 29 of these 40 documents
  # are entity documents, so facts and favourites are pinned too.
  lang = SyntheticLanguage(seed=0, num_words=700, version=4)
  text = " ".join(lang.document(i, s) for i in range(20) for s in ("train", "eval"))
  assert zlib.crc32(text.encode()) == 4262915044


@pytest.mark.parametrize("version", synthetic.VERSIONS)
@pytest.mark.parametrize("num_words", [synthetic.MIN_WORDS, 3000])
def test_document_words_match_trees(version: int, num_words: int):
  # document() draws words without building trees (for speed); it must make exactly the draws
  # of document_trees(), in both versions, with the tiny lexicon's fallback tables too.
  lang = SyntheticLanguage(seed=4, num_words=num_words, version=version)
  for split in synthetic.SPLITS:
    for i in range(150):
      words = [w for tree in lang.document_trees(i, split) for w in lang.render(tree)]
      assert lang.document(i, split) == " ".join(words), (split, i)


class _DyingTokenizer:
  """Kills the worker process that encodes with it, as the kernel's OOM killer would."""

  def encode(self, docs):
    os._exit(1)


def test_a_dead_generator_worker_is_an_error_not_a_hang():
  from tl_jax.data.sources import SyntheticSource
  from tl_jax.errors import UserError

  batches = SyntheticSource(seed=0, num_words=700, version=4, workers=2).token_batches(
      "train", _DyingTokenizer(), 2)
  with pytest.raises(UserError, match="worker process generating the synthetic corpus died"):
    next(batches)


def test_default_workers_follow_the_cgroup_quota(tmp_path, monkeypatch):
  from tl_jax.data import sources

  path = tmp_path / "cpu.max"
  for text, cpus in (("max 100000\n", None), ("1600000 100000\n", 16), ("150000 100000", 2)):
    path.write_text(text)
    assert sources._cgroup_cpus(str(path)) == cpus
  assert sources._cgroup_cpus(str(tmp_path / "absent")) is None
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(192)))
  monkeypatch.setattr(sources, "_cgroup_cpus", lambda: 16)
  assert sources._default_workers() == 16
  monkeypatch.setattr(sources, "_cgroup_cpus", lambda: None)
  assert sources._default_workers() == 192


def test_a_cache_build_reports_its_progress(tmp_path, monkeypatch):
  """Both ways a cache is filled (a source's own token batches, and documents tokenized here)
  say how many tokens they have written, so a slow build shows in the log."""
  from tl_jax.config import DataConfig
  from tl_jax.data import cache as token_cache
  from tl_jax.data.sources import SyntheticSource
  from tl_jax.data.tokenizer import cached_tokenizer

  monkeypatch.setattr(token_cache, "PROGRESS_SECONDS", 0.0)
  source = SyntheticSource(seed=0, num_words=700, version=4, workers=1)
  tokenizer = cached_tokenizer(source, DataConfig(vocab_size=800, tokenizer_train_chars=200_000),
                               str(tmp_path))

  class Documents:  # the same documents, without the synthetic source's token batches
    def documents(self, split):
      return source.documents(split)

    def fingerprint(self):
      return {"kind": "documents-only"}

  for src in (source, Documents()):
    lines = []
    cache = token_cache.prepare(src, "train", tokenizer, 50_000, str(tmp_path), lines.append)
    assert len(cache) == 50_000 and lines, lines
    counts = [int(re.match(r"data: ([\d,]+) of 50,000 \(\d+%\) train tokens written after \d+s$",
                           line)[1].replace(",", "")) for line in lines]
    assert counts == sorted(counts) and 0 < counts[0] and counts[-1] <= 50_000
