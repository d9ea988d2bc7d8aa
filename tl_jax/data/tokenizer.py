"""SentencePiece tokenizer trained on the run's source, with fixed special ids.

Ids 0..4 are `<pad> <s> </s> <unk> <mask>` for every tokenizer tl_jax trains,
so model code and masking never look them up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import sentencepiece as spm

from tl_jax.data.atomic import publish_dir
from tl_jax.errors import UserError

PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIAL = 5
MODEL_FILE = "spm.model"


class Tokenizer:
  """A loaded sentencepiece model.

  Every tokenizer a task uses has this interface: the special ids as attributes,
  `vocab_size`, `encode` (no special tokens added), `decode`, `sha256`. tl_jax's
  own always have the fixed ids above; an imported one (data/hf_tokenizer.py)
  carries its checkpoint's.
  """
  pad_id, bos_id, eos_id, unk_id, mask_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID

  def __init__(self, model_path: str):
    self.path = model_path
    try:
      self.sp = spm.SentencePieceProcessor(model_file=model_path)
    except (OSError, RuntimeError):  # missing, truncated or not a sentencepiece model
      problem = "is not a sentencepiece model" if os.path.exists(model_path) else "is missing"
      raise UserError(f"tokenizer {model_path} {problem}; put back the tokenizer the run was "
                      "trained with, or start a new --workdir.") from None
    if self.sp.piece_to_id("<mask>") != MASK_ID or self.sp.pad_id() != PAD_ID:
      raise UserError(f"tokenizer {model_path} does not use tl_jax's special ids "
                      "(<pad>=0 <s>=1 </s>=2 <unk>=3 <mask>=4); retrain it with tl-jax.")

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def encode(self, texts: list[str]) -> list[list[int]]:
    return self.sp.encode(texts)

  def decode(self, ids) -> str:
    return self.sp.decode([int(i) for i in ids if int(i) >= NUM_SPECIAL])

  def sha256(self) -> str:
    with open(self.path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()


def _train(texts, out_dir: str, vocab_size: int, model_type: str, max_chars: int) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    chars = 0
    with open(corpus, "w", encoding="utf-8") as f:
      for text in texts:
        f.write(text.replace("\n", " ") + "\n")
        chars += len(text)
        if chars >= max_chars:
          break
    if chars == 0:
      raise UserError("the data source yielded no text to train the tokenizer on; check the data files.")
    try:
      spm.SentencePieceTrainer.train(
          input=corpus, model_prefix=os.path.join(tmp, "spm"), vocab_size=vocab_size,
          model_type=model_type, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
          user_defined_symbols=["<mask>"], character_coverage=0.9995, num_threads=os.cpu_count() or 1,
          max_sentence_length=1 << 16, minloglevel=2)
    except RuntimeError as e:
      if "Vocabulary size" in str(e):
        raise UserError(f"data.vocab_size={vocab_size} is too large for this corpus ({chars} "
                        "characters); lower --config.data.vocab_size.") from None
      raise
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(os.path.join(tmp, "spm.model"), os.path.join(out_dir, MODEL_FILE))


def cached_tokenizer(source, data, cache_dir: str) -> Tokenizer:
  """Trains a tokenizer on `source`'s train split once per (source, settings) and reuses it."""
  key = json.dumps({"source": source.fingerprint(), "vocab_size": data.vocab_size,
                    "type": data.tokenizer_type, "chars": data.tokenizer_train_chars}, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  out_dir = os.path.join(cache_dir, "tokenizers", digest)

  def fill(tmp_dir: str):
    _train(source.documents("train"), tmp_dir, data.vocab_size, data.tokenizer_type,
           data.tokenizer_train_chars)
    with open(os.path.join(tmp_dir, "key.json"), "w") as f:
      f.write(key)

  publish_dir(out_dir, fill)
  return Tokenizer(os.path.join(out_dir, MODEL_FILE))


def load_tokenizer(directory: str):
  """The tokenizer a workdir's `tokenizer/` holds: tl_jax's sentencepiece model or an imported one."""
  model_path = os.path.join(directory, MODEL_FILE)
  if os.path.exists(model_path):
    return Tokenizer(model_path)
  from tl_jax.data.hf_tokenizer import HFTokenizer, has_tokenizer_files
  if has_tokenizer_files(directory):
    return HFTokenizer(directory)
  raise UserError(f"{directory} holds no tokenizer: {MODEL_FILE} is missing and there is no Hugging "
                  "Face tokenizer; put back the tokenizer the run was trained with (tl-jax pretrain, "
                  "translate and import-hf write one), or start a new --workdir.")
