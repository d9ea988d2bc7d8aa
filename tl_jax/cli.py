"""The `tl-jax` command line.

    tl-jax pretrain --config=configs/mlm.py:tiny --workdir=DIR [--config.a.b=VALUE ...] [--override]
    tl-jax finetune --config=configs/glue.py:sst2 --init=PRETRAIN_WORKDIR --workdir=DIR
    tl-jax import-hf --source=HF_DIR --workdir=DIR
    tl-jax compress --config=configs/compress.py:GRID --workdir=WORKDIR
    tl-jax sweep --config=configs/sweeps/NAME.py[:VARIANT] --root=DIR [--print-only] [--only=STAGE]
    tl-jax report DIR... --out=OUT
    tl-jax demo --workdir=DIR

Re-running a command on an existing workdir resumes it. A workdir remembers its
resolved config in `config.json`; a command asking for a different one is refused
unless `--override` is given (the old file is kept as `config.json.N`). Problems
the user can fix end with one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import shlex
import sys
import threading
import traceback
import warnings

from tl_jax import config as config_lib
from tl_jax.errors import UserError, io_error

USAGE = """tl-jax COMMAND [flags]

commands:
  pretrain   masked-LM pretraining: --config=FILE:PRESET --workdir=DIR [--config.a.b=V ...] [--override]
  translate  translation training:  --config=FILE:PRESET --workdir=DIR [--config.a.b=V ...] [--override]
  translate-file  --workdir=DIR --input=FILE --output=FILE  (the best-BLEU parameters)
  finetune   classification:        --config=FILE:PRESET --init=PRETRAIN_WORKDIR --workdir=DIR [--config.a.b=V ...]
  import-hf  a Hugging Face RoBERTa/BERT checkpoint as a workdir `finetune --init` accepts:
             --source=DIR (config.json, model.safetensors, tokenizer files) --workdir=DIR
  compress   a grid of quantized / pruned versions of a trained model (finetuned, translation or
             pretraining), appended to WORKDIR/compress.jsonl: --config=configs/compress.py:GRID
             --workdir=WORKDIR
  sweep      a grid of runs, one workdir each under --root, finished ones skipped, interrupted
             ones resumed: --config=configs/sweeps/NAME.py[:VARIANT] --root=DIR [--print-only]
  report     figures and tables from workdirs: DIR... --out=OUT (writes OUT/report.md)
  demo       the whole study small, on a CPU in under 10 minutes: --workdir=DIR
"""

PRESET_FILES = {"pretrain": "mlm", "translate": "translate", "finetune": "glue", "compress": "compress"}


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one sentence, like every other input error
    raise UserError(f"{message}; see tl-jax --help.")


def _parse(argv: list[str]):
  parser = _Parser(prog="tl-jax", usage=USAGE, add_help=True)
  parser.add_argument("command", choices=["pretrain", "translate", "translate-file", "finetune",
                                          "import-hf", "compress"])
  parser.add_argument("--config", default=None, help="FILE:PRESET, e.g. configs/mlm.py:tiny")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--input", help="translate-file: text to translate, one sentence a line")
  parser.add_argument("--output", help="translate-file: where the translations go")
  parser.add_argument("--init", help="finetune: the pretraining (or import-hf) workdir to start from")
  parser.add_argument("--source", help="import-hf: a directory with a Hugging Face checkpoint")
  parser.add_argument("--override", action="store_true",
                      help="continue a workdir with a config that differs from its config.json")
  args, rest = parser.parse_known_args(argv)
  return args, config_lib.parse_overrides(rest, "overrides look like --config.model.num_layers=4")


def resolve_config(args, overrides: dict) -> tuple[config_lib.Config, bool]:
  """(the config this command runs with, whether it replaces the workdir's config.json).

  Writes nothing: the workdir changes only once the run is known to start.
  """
  saved_path = os.path.join(args.workdir, "config.json")
  saved = config_lib.load(saved_path) if os.path.exists(saved_path) else None
  if args.config is None and saved is None:
    raise UserError(f"{args.workdir} holds no config.json, so a new run needs "
                    f"--config=configs/{PRESET_FILES[args.command]}.py:PRESET.")
  # A copy: overrides must not edit `saved`, which the differences check compares against.
  config = config_lib.load_preset(args.config) if args.config else copy.deepcopy(saved)
  if config.task != args.command:
    raise UserError(f"the config is for `tl-jax {config.task}`, not `tl-jax {args.command}`; use "
                    f"configs/{PRESET_FILES[config.task]}.py presets with `{config.task}` or pick the "
                    "matching command.")
  if saved is not None and saved.task != config.task:
    raise UserError(f"workdir {args.workdir} holds a `tl-jax {saved.task}` run; give "
                    f"`tl-jax {config.task}` a new --workdir.")
  if args.init and config.task != "finetune":
    raise UserError("--init is for `tl-jax finetune`; pretraining and translation start from scratch.")
  if config.task == "finetune":
    config.init.workdir = args.init or (saved.init.workdir if saved else "")
    config = config_lib.inherit_init_model(config, overrides)
  config = config_lib.apply_overrides(config, overrides)
  config_lib.validate(config)
  if saved is not None:
    changed = config_lib.differences(saved, config)
    if changed and not args.override:
      shown = "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")
      raise UserError(f"workdir {args.workdir} was made with another config ({shown}); use a new "
                      "--workdir, or pass --override to continue it with the new config.")
    return config, bool(changed)
  return config, True


def commit_config(config: config_lib.Config, workdir: str, replaces: bool) -> None:
  """Writes config.json, keeping a replaced one as config.json.N."""
  path = os.path.join(workdir, "config.json")
  if not replaces:
    return
  if os.path.exists(path):
    n = 1
    while os.path.exists(f"{path}.{n}"):
      n += 1
    os.replace(path, f"{path}.{n}")
  config_lib.save(config, path)


def _compress(args, overrides: dict, command: str) -> int:
  """The grid's config is not the workdir's (that stays the finetuning run's config.json)."""
  if not args.config:
    raise UserError("compress needs --config=configs/compress.py:GRID (quick, paper, bits, sparsity).")
  config = config_lib.load_preset(args.config)
  if config.task != "compress":
    raise UserError(f"the config is for `tl-jax {config.task}`, not `tl-jax compress`; use a "
                    "configs/compress.py grid.")
  config = config_lib.apply_overrides(config, overrides)
  config_lib.validate(config)
  _quiet_libraries()
  _compilation_cache()
  from tl_jax import lock
  from tl_jax.tasks import compression
  # One job writes compress.jsonl and compressed/; a missing workdir is Workdir.open's to name
  # (taking the lock would create it).
  held = lock.hold(args.workdir, command) if os.path.isdir(args.workdir) else contextlib.nullcontext()
  with held:
    return compression.run(config, args.workdir)


def _compilation_cache() -> None:
  """jax's persistent compilation cache in `$TL_JAX_CACHE/xla` (default ~/.cache/tl_jax/xla): a
  process that compiles a program some earlier run compiled (a second seed, a resumed run, the
  next compression grid) loads it instead. JAX_COMPILATION_CACHE_DIR, where set, names another
  place, and set empty turns the cache off."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return  # jax reads it itself
  import jax
  from tl_jax.data.cache import default_cache_dir
  jax.config.update("jax_compilation_cache_dir", os.path.join(default_cache_dir(""), "xla"))


def _quiet_libraries() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import absl.logging
    absl.logging.set_verbosity(absl.logging.WARNING)
    # Orbax logs a failed background write with its traceback, then raises it in the caller,
    # where tl_jax turns it into one sentence (train/checkpoint.py): the log is a duplicate.
    absl.logging.get_absl_logger().addFilter(_not_orbax_error)
  except ImportError:
    pass
  sys.unraisablehook = _quiet_unraisable
  # The reads an unreadable checkpoint left unfinished (tl_jax has already said which one); the
  # warning comes whenever they are collected, from whatever code runs then. tl_jax has no
  # coroutines of its own.
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
  # Likewise the futures of those reads: asyncio logs each failed one as "never retrieved" when it
  # is collected, a duplicate of the warning tl_jax printed (seen on CI, depending on GC timing).
  logging.getLogger("asyncio").addFilter(
      lambda record: "exception was never retrieved" not in record.getMessage())


def _not_orbax_error(record) -> bool:
  return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _quiet_unraisable(unraisable) -> None:
  """A failed checkpoint read or write leaves orbax's other reads and writes to end with no one
  to hear them; each would print a traceback after tl_jax has reported the failure in one
  sentence. Those are dropped; anything else is printed as usual."""
  text = str(unraisable.exc_value)
  frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
  if not (text == "Event loop is closed" or text.startswith("sys.meta_path is None")
          or any(f"{os.sep}orbax{os.sep}" in f.filename for f in frames)):
    sys.__unraisablehook__(unraisable)


def _report(error: UserError) -> int:
  print(f"tl-jax: error: {error}", file=sys.stderr)
  # A checkpoint save that failed before it began leaves orbax threads waiting out a 300 s
  # timeout for it, which would hold the process open long after the error is reported.
  if any(t.is_alive() and not t.daemon and type(t).__module__.startswith("orbax")
         for t in threading.enumerate()):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(error.exit_code)
  return error.exit_code


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE)
    return 0
  try:
    if argv[0] in ("sweep", "report", "demo"):  # flags of their own
      _quiet_libraries()
      if argv[0] == "sweep":
        from tl_jax import sweep
        return sweep.main(argv[1:])
      if argv[0] == "report":
        from tl_jax import report
        return report.main(argv[1:])
      from tl_jax import demo
      return demo.main(argv[1:])
    args, overrides = _parse(argv)
    if args.command == "translate-file":
      if not (args.input and args.output):
        raise UserError("translate-file needs --input=FILE and --output=FILE.")
      _quiet_libraries()
      _compilation_cache()
      from tl_jax.tasks.translation import translate_file
      return translate_file(args.workdir, args.input, args.output)
    if args.command == "import-hf":
      if not args.source:
        raise UserError("import-hf needs --source=DIR, a directory with config.json and model.safetensors.")
      _quiet_libraries()
      from tl_jax.convert.hf import import_hf
      print(import_hf(args.source, args.workdir))
      return 0
    if args.command == "compress":
      return _compress(args, overrides, shlex.join(["tl-jax", *argv]))
    config, replaces = resolve_config(args, overrides)
    if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
      raise UserError(f"--workdir={args.workdir} is a file, not a directory; choose another --workdir.")
    os.makedirs(args.workdir, exist_ok=True)
    _quiet_libraries()
    _compilation_cache()
    # Before any other jax call: a multi-host job (SLURM, Cloud TPU, TL_JAX_* variables) is joined
    # here; every process then runs the same command on its own devices.
    from tl_jax.parallel import distributed
    distributed.initialize()
    from tl_jax import lock, tasks  # the task's module, and jax, only now: they make --help slow
    with lock.hold(args.workdir, shlex.join(["tl-jax", *argv])):
      return tasks.run(config, args.workdir,
                       on_ready=lambda: commit_config(config, args.workdir, replaces))
  except UserError as e:
    return _report(e)
  except Exception as e:  # a full disk or a read-only place, met anywhere: one sentence too
    directory = next((a.split("=", 1)[1] for a in argv if a.startswith(("--workdir=", "--root="))),
                     None)
    error = io_error(e, directory)
    if error is None:
      raise
    return _report(error)
  except KeyboardInterrupt:
    print("tl-jax: interrupted; re-run the same command to resume from the last checkpoint.",
          file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
