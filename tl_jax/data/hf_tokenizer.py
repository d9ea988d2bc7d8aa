"""A Hugging Face tokenizer (RoBERTa byte-level BPE or BERT WordPiece) behind tl_jax's interface.

Imported checkpoints (`tl-jax import-hf`) keep their own tokenizer: the files
`transformers` saved (`tokenizer.json`, or the older `vocab.json` + `merges.txt`
and `vocab.txt`) are copied to `WORKDIR/tokenizer/` together with
`special_ids.json`, which names the ids of `<s> </s> <pad> <unk> <mask>` (or
`[CLS] [SEP] [PAD] [UNK] [MASK]`). Encoding goes through the `tokenizers`
library and gives exactly the ids of `transformers`' tokenizer called with
`add_special_tokens=False`.
"""

from __future__ import annotations

import hashlib
import json
import os

from tl_jax.errors import UserError

SPECIAL_IDS_FILE = "special_ids.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json",
                   "tokenizer_config.json", "special_tokens_map.json")
# tl_jax's name -> (tokenizer_config.json keys, first one set wins; the tokens to look for otherwise)
_SPECIALS = {
    "pad_id": (("pad_token",), ("<pad>", "[PAD]")),
    "bos_id": (("cls_token", "bos_token"), ("<s>", "[CLS]")),
    "eos_id": (("sep_token", "eos_token"), ("</s>", "[SEP]")),
    "unk_id": (("unk_token",), ("<unk>", "[UNK]")),
    "mask_id": (("mask_token",), ("<mask>", "[MASK]")),
}


def has_tokenizer_files(directory: str) -> bool:
  """Whether `directory` holds a tokenizer this module can read."""
  exists = lambda name: os.path.isfile(os.path.join(directory, name))
  return exists("tokenizer.json") or (exists("vocab.json") and exists("merges.txt")) or exists("vocab.txt")


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); restore it from the "
                    "checkpoint's source.") from None


def _token_text(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


class HFTokenizer:
  """tl_jax's tokenizer interface over a Hugging Face tokenizer directory.

  Attributes `pad_id bos_id eos_id unk_id mask_id` are the checkpoint's ids
  (`bos_id` is `<s>`/`[CLS]`, `eos_id` is `</s>`/`[SEP]`); `encode` adds no
  special tokens; `path` is the directory.
  """

  def __init__(self, directory: str):
    try:
      import tokenizers  # noqa: F401
    except ImportError:
      raise UserError(f"the Hugging Face tokenizer in {directory} needs the tokenizers package; "
                      "install it with pip install 'tl_jax[hf]'.") from None
    self.path = directory
    self.config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    self._files, self.tk = self._load(directory)
    self.tk.no_truncation()  # transformers turns off truncation and padding saved in tokenizer.json
    self.tk.no_padding()
    ids_path = os.path.join(directory, SPECIAL_IDS_FILE)
    ids = _read_json(ids_path) if os.path.isfile(ids_path) else self._find_special_ids()
    for name in _SPECIALS:
      setattr(self, name, int(ids[name]))
    self._special = {self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id}
    self._vocab_size = max(self.tk.get_vocab(with_added_tokens=True).values()) + 1

  def _load(self, directory: str):
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, WordPiece

    path = lambda name: os.path.join(directory, name)
    if os.path.isfile(path("tokenizer.json")):
      try:
        return ["tokenizer.json"], Tokenizer.from_file(path("tokenizer.json"))
      except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise UserError(f"{path('tokenizer.json')} cannot be read by the tokenizers library "
                        f"({str(e).splitlines()[0]}); upgrade tokenizers or re-save the tokenizer "
                        "with transformers.") from None
    cfg = self.config
    if os.path.isfile(path("vocab.json")) and os.path.isfile(path("merges.txt")):
      # transformers' RobertaTokenizer pipeline (byte-level BPE).
      vocab, merges = BPE.read_file(path("vocab.json"), path("merges.txt"))
      tk = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                         end_of_word_suffix="", fuse_unk=False))
      tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(cfg.get("add_prefix_space", False)))
      tk.decoder = decoders.ByteLevel()
      files = ["vocab.json", "merges.txt"]
    elif os.path.isfile(path("vocab.txt")):
      # transformers' BertTokenizer pipeline (WordPiece).
      vocab = WordPiece.read_file(path("vocab.txt"))
      unk = _token_text(cfg.get("unk_token")) or "[UNK]"
      tk = Tokenizer(WordPiece(vocab, unk_token=unk))
      tk.normalizer = normalizers.BertNormalizer(
          clean_text=True, handle_chinese_chars=bool(cfg.get("tokenize_chinese_chars", True)),
          strip_accents=cfg.get("strip_accents"), lowercase=bool(cfg.get("do_lower_case", True)))
      tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
      tk.decoder = decoders.WordPiece(prefix="##")
      files = ["vocab.txt"]
    else:
      raise UserError(f"{directory} holds no tokenizer (tokenizer.json, vocab.json + merges.txt, or "
                      "vocab.txt); save it there with the checkpoint's tokenizer.save_pretrained().")
    added = _read_json(path("added_tokens.json"))
    for token, token_id in sorted(added.items(), key=lambda item: item[1]):
      tk.add_tokens([token])
      if tk.token_to_id(token) != token_id:
        raise UserError(f"added token {token!r} in {path('added_tokens.json')} has id {token_id} but "
                        f"lands on {tk.token_to_id(token)}; re-save the tokenizer as tokenizer.json "
                        "with transformers.")
    # transformers matches its special tokens in the raw text, before normalization.
    specials = [_token_text(cfg.get(key)) for keys, _ in _SPECIALS.values() for key in keys]
    specials += [t for _, candidates in _SPECIALS.values() for t in candidates]
    known = dict.fromkeys(s for s in specials if s and tk.token_to_id(s) is not None)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in known])
    return files + [f for f in ("added_tokens.json",) if added], tk

  def _find_special_ids(self) -> dict[str, int]:
    """The ids of the checkpoint's special tokens: those tokenizer_config.json names, else the usual ones."""
    extra = _read_json(os.path.join(self.path, "special_tokens_map.json"))
    ids = {}
    for name, (keys, candidates) in _SPECIALS.items():
      named = [_token_text(self.config.get(k)) or _token_text(extra.get(k)) for k in keys]
      tokens = [t for t in named if t] or list(candidates)
      found = [self.tk.token_to_id(t) for t in tokens if self.tk.token_to_id(t) is not None]
      if not found:
        raise UserError(f"the tokenizer in {self.path} has no {' or '.join(tokens)} token; tl_jax needs "
                        "the pad, start, separator, unknown and mask tokens of a RoBERTa or BERT tokenizer.")
      ids[name] = found[0]
    return ids

  def special_ids(self) -> dict[str, int]:
    """What `special_ids.json` records."""
    return {name: getattr(self, name) for name in _SPECIALS}

  def files(self) -> list[str]:
    """The files of `path` this tokenizer was built from, and the config files beside them."""
    present = [f for f in ("tokenizer_config.json", "special_tokens_map.json")
               if os.path.isfile(os.path.join(self.path, f))]
    return self._files + present

  @property
  def vocab_size(self) -> int:
    """One more than the largest id, added tokens included."""
    return self._vocab_size

  def encode(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    return self.tk.decode([i for i in ids if i not in self._special and 0 <= i < self.vocab_size],
                          skip_special_tokens=True)

  def sha256(self) -> str:
    digest = hashlib.sha256()
    for name in sorted(self.files()):
      digest.update(name.encode() + b"\0")
      with open(os.path.join(self.path, name), "rb") as f:
        digest.update(f.read())
    digest.update(json.dumps(self.special_ids(), sort_keys=True).encode())
    return digest.hexdigest()
