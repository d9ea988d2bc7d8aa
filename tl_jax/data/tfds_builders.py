"""Opening a prepared tensorflow-datasets builder, for every tfds-backed source.

Sources read array_record files through `tfds.data_source`, without TensorFlow; they
need a builder that is known (or prepared on disk) and prepared. Every way that fails
becomes one sentence naming the dataset, the directory and the fix.
"""

from __future__ import annotations

import importlib
import re

from tl_jax.errors import UserError


def import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("data.source=tfds needs tensorflow-datasets, which is not installed; install "
                    "it with pip install 'tl_jax[data]'.") from None
  return tfds


def where(data_dir: str) -> str:
  return data_dir or "the default TFDS data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"


def not_prepared(name: str, data_dir: str) -> UserError:
  return UserError(
      f"TFDS dataset {name!r} is not prepared in {where(data_dir)}; prepare it with "
      f"`tfds build {name} --data_dir={data_dir or 'DIR'} --file_format=array_record` on a machine "
      "with network, or point data.tfds_data_dir at a directory that holds a prepared copy.")


def open_builder(name: str, data_dir: str, family: str, example: str):
  """The prepared builder of `name` in `data_dir` ('' = tfds's default).

  `family` is the tfds package whose import registers the builders of this kind (e.g.
  "text" for GLUE, "translate" for WMT): without it a known but unprepared name looks
  unknown. `example` is a dataset name to suggest when `name` is empty.
  """
  tfds = import_tfds()
  if family:
    try:
      importlib.import_module(f"tensorflow_datasets.{family}")
    except Exception:  # pylint: disable=broad-except
      pass  # prepared datasets are still read from their files
  if not name:
    raise UserError(f"data.tfds_name is empty; set it to a prepared TFDS dataset, e.g. {example}.")
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    # Its message lists every registered dataset: too long to repeat; keep its suggestion.
    guess = re.search(r"Did you mean: \S+ -> (\S+)", str(e))
    hint = f" (did you mean {guess.group(1)!r}?)" if guess else ""
    raise UserError(f"TFDS dataset {name!r} is neither a dataset tensorflow-datasets knows nor "
                    f"prepared in {where(data_dir)}{hint}; fix data.tfds_name or "
                    "data.tfds_data_dir.") from None
  except (AssertionError, ValueError) as e:
    # E.g. a config or version this directory does not hold, or a malformed name.
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    reason = reason.split('": ', 1)[-1]  # drop tfds's "Failed to construct dataset ..." prefix
    raise UserError(f"TFDS dataset {name!r} in {where(data_dir)} cannot be opened ({reason}); "
                    "fix data.tfds_name or data.tfds_data_dir.") from None
  if not builder.is_prepared():
    raise not_prepared(name, data_dir)
  return builder


def require_random_access(builder, name: str, data_dir: str) -> None:
  """Refuses a builder whose files `tfds.data_source` cannot index without TensorFlow."""
  file_format = getattr(builder.info, "file_format", None)
  value = getattr(file_format, "value", file_format)  # an enum in new tfds, a str in old
  if value is not None and value not in ("array_record", "parquet"):
    raise UserError(f"TFDS dataset {name!r} in {where(data_dir)} is stored as {value}, which has no "
                    "random access without TensorFlow; rebuild it with "
                    "`tfds build --file_format=array_record`.")
