"""Every command on bad input: configs, data files, tokenizers, checkpoints of another model
size, meshes that do not fit. Each must exit 2 with one `tl-jax: error:` sentence naming the
cause and the fix, print no traceback, and leave every workdir it was pointed at as it was.

The commands run in this process (`tl_jax.cli.main`, as the `tl-jax` entry point calls it),
on the suite's 8 simulated devices: an uncaught exception fails the test with its traceback.
tests/test_cli_errors.py runs more pretraining cases as subprocesses; the data sources,
finetuning, compression, import-hf, sweep and report tests have their own narrower ones.
"""

import json
import pathlib
import shutil

import pytest

from faults.harness import REPO, assert_sentence, snapshot

pytestmark = pytest.mark.slow
PRESET = "configs/mlm.py:tiny"


class Inputs:
  """Bad inputs made in a temporary directory, around the finished SMALL run (which is only
  read: cases that change a run change a copy)."""

  def __init__(self, root: pathlib.Path, finished: pathlib.Path):
    self.root, self.finished = root, finished

  def file(self, name: str, content: str | bytes) -> pathlib.Path:
    path = self.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
      path.write_bytes(content)
    else:
      path.write_text(content)
    return path

  def new(self) -> pathlib.Path:
    """A workdir that does not exist yet (and must not hold a config.json afterwards)."""
    return self.root / "new"

  def run_copy(self, **changes) -> pathlib.Path:
    """A copy of the finished run whose config.json has `section__field=value` changed."""
    path = self.root / "copy"
    shutil.copytree(self.finished, path)
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
      section, field = key.split("__")
      config[section][field] = value
    (path / "config.json").write_text(json.dumps(config))
    return path

  def translation_workdir(self) -> pathlib.Path:
    """A translation workdir holding only its config.json."""
    from tl_jax import config as config_lib
    path = self.root / "translation"
    path.mkdir()
    config_lib.save(config_lib.load_preset("configs/translate.py:tiny"), str(path / "config.json"))
    return path


# Each case: (area, fault) -> a function of Inputs returning (argv, fragments the sentence must
# hold, paths that must not change).


def preset_syntax_error(i):
  bad = i.file("bad.py", "def get_config(name):\n  return (\n")
  return ["pretrain", f"--workdir={i.new()}", f"--config={bad}:tiny"], ["SyntaxError at line 2", "fix"], []


def preset_raises(i):
  bad = i.file("raises.py", "def get_config(name):\n  return {}[name]\n")
  return ["pretrain", f"--workdir={i.new()}", f"--config={bad}:tiny"], ["KeyError at line 2"], []


def wrong_type(i):
  return (["translate", f"--workdir={i.new()}", "--config=configs/translate.py:tiny",
           "--config.train.learning_rate=fast"], ["train.learning_rate=fast", "float"], [])


def unknown_choice(i):
  return (["translate", f"--workdir={i.new()}", "--config=configs/translate.py:tiny",
           "--config.train.on_nonfinite=sometimes"], ["train.on_nonfinite", "stop, skip"], [])


def seconds_horizon_without_budget(i):
  return (["pretrain", f"--workdir={i.new()}", "--config=configs/mlm.py:tiny",
           "--config.train.schedule_horizon=seconds"],
          ["train.schedule_horizon=seconds", "train.max_train_seconds"], [])


def hugging_face_folder_as_init(i):
  folder = i.file("hf/config.json", '{"model_type": "roberta", "architectures": ["RobertaForMaskedLM"]}').parent
  return (["finetune", f"--workdir={i.new()}", "--config=configs/glue.py:synthetic", f"--init={folder}"],
          ["Hugging Face model folder", f"tl-jax import-hf --source={folder}"], [])


def finetune_without_init(i):
  return ["finetune", f"--workdir={i.new()}", "--config=configs/glue.py:synthetic"], ["--init"], []


def unknown_quantizer(i):
  return (["compress", f"--workdir={i.finished}", "--config=configs/compress.py:quick",
           "--config.quant_methods=uniform,awq"], ["awq", "gptq"], [i.finished])


def sweep_syntax_error(i):
  bad = i.file("sweep.py", "def get_sweep(variant:\n")
  return ["sweep", f"--config={bad}", f"--root={i.root / 'root'}"], ["sweep file", "SyntaxError"], []


def config_json_not_json(i):
  broken = i.file("broken/config.json", "{oops").parent
  return ["pretrain", f"--workdir={broken}"], ["config.json is not valid JSON"], [broken]


def config_json_from_another_version(i):
  copy = i.run_copy(train__warmup_ratio=0.1)
  return ["pretrain", f"--workdir={copy}"], ["unknown field 'train.warmup_ratio'"], [copy]


def workdir_is_a_file(i):
  file = i.file("a-file", "x")
  return ["pretrain", f"--workdir={file}", f"--config={PRESET}"], ["is a file, not a directory"], [file]


def demo_workdir_is_a_file(i):
  file = i.file("a-file", "x")
  return ["demo", f"--workdir={file}"], ["a-file", "Not a directory"], [file]


def corpus_too_small(i):
  text = i.file("tiny.txt", "a few words\n")
  return (["pretrain", f"--workdir={i.new()}", f"--config={PRESET}", "--config.data.source=text",
           f"--config.data.train_files={text}", f"--config.data.eval_files={text}"],
          ["data.vocab_size=2000", "too large"], [])


def input_not_utf8(i):
  workdir = i.translation_workdir()
  latin1 = i.file("in.txt", "café\n".encode("latin-1"))
  return (["translate-file", f"--workdir={workdir}", f"--input={latin1}", f"--output={i.root / 'out.txt'}"],
          ["in.txt", "UTF-8"], [workdir])


def tsv_without_header(i):
  tsv = i.file("train.tsv", "good film\t1\nbad film\t0\n")
  return (["finetune", f"--workdir={i.new()}", "--config=configs/glue.py:sst2", f"--init={i.finished}",
           f"--config.data.train_files={tsv}"], ["train.tsv", "header"], [i.finished])


def garbage_tokenizer(i):
  copy = i.run_copy()
  (copy / "tokenizer" / "spm.model").write_bytes(b"\x00 not a model")
  return ["pretrain", f"--workdir={copy}"], ["is not a sentencepiece model", "put back"], [copy]


def other_runs_tokenizer(i):
  from tl_jax.config import DataConfig
  from tl_jax.data.sources import make_source
  from tl_jax.data.tokenizer import cached_tokenizer
  copy = i.run_copy()
  data = DataConfig(vocab_size=500, tokenizer_train_chars=200_000)  # the same corpus, 500 pieces
  other = cached_tokenizer(make_source(data), data, str(i.root / "cache"))
  shutil.copy(other.path, copy / "tokenizer" / "spm.model")
  return ["pretrain", f"--workdir={copy}"], ["500 pieces", "data.vocab_size=2000"], [copy]


def missing_tokenizer(i):
  workdir = i.translation_workdir()
  text = i.file("in.txt", "hello\n")
  return (["translate-file", f"--workdir={workdir}", f"--input={text}", f"--output={i.root / 'out.txt'}"],
          ["tokenizer", "is missing"], [workdir])


def init_garbage_tokenizer(i):
  copy = i.run_copy()
  (copy / "tokenizer" / "spm.model").write_bytes(b"\x00 not a model")
  return (["finetune", f"--workdir={i.new()}", "--config=configs/glue.py:synthetic", f"--init={copy}"],
          ["is not a sentencepiece model"], [copy])


def resume_other_width(i):
  copy = i.run_copy(model__d_model=96, model__d_ff=384)
  return ["pretrain", f"--workdir={copy}"], ["no checkpoint in", "another model size", "--workdir"], [copy]


def init_other_width(i):
  copy = i.run_copy(model__d_model=96, model__d_ff=384)
  return (["finetune", f"--workdir={i.new()}", "--config=configs/glue.py:synthetic", f"--init={copy}"],
          ["no checkpoint in", "another model size"], [copy])


def mesh_too_large(i):
  return (["translate", f"--workdir={i.new()}", "--config=configs/translate.py:tiny",
           "--config.parallel.data=16"], ["needs 16 devices", "8 are present"], [])


def tensor_wider_than_heads(i):
  return (["pretrain", f"--workdir={i.new()}", f"--config={PRESET}", "--config.parallel.data=1",
           "--config.parallel.tensor=8"], ["num_heads=2", "tensor=8"], [])


def mesh_not_dividing(i):
  return (["finetune", f"--workdir={i.new()}", "--config=configs/glue.py:synthetic", f"--init={i.finished}",
           "--config.parallel.fsdp=3"], ["do not divide the 8 devices"], [i.finished])


CASES = {
    ("Bad input: configs", "pretrain --config naming a preset file with a syntax error"): preset_syntax_error,
    ("Bad input: configs", "pretrain --config naming a preset function that raises"): preset_raises,
    ("Bad input: configs", "translate with a value of the wrong type (learning_rate=fast)"): wrong_type,
    ("Bad input: configs", "translate with train.on_nonfinite=sometimes"): unknown_choice,
    ("Bad input: configs", "finetune without --init"): finetune_without_init,
    ("Bad input: configs", "pretrain with train.schedule_horizon=seconds and no seconds budget"):
        seconds_horizon_without_budget,
    ("Bad input: checkpoints of another size", "finetune --init naming a Hugging Face folder "
     "(before import-hf)"): hugging_face_folder_as_init,
    ("Bad input: configs", "compress with an unknown quantizer (awq)"): unknown_quantizer,
    ("Bad input: configs", "sweep --config naming a sweep file with a syntax error"): sweep_syntax_error,
    ("Bad input: configs", "a workdir whose config.json is not valid JSON"): config_json_not_json,
    ("Bad input: configs", "a workdir whose config.json has a field this version lacks"):
        config_json_from_another_version,
    ("Bad input: configs", "pretrain --workdir naming a file"): workdir_is_a_file,
    ("Bad input: configs", "demo --workdir naming a file"): demo_workdir_is_a_file,
    ("Bad input: data files", "pretrain on a text corpus too small for data.vocab_size"): corpus_too_small,
    ("Bad input: data files", "translate-file with an --input that is not UTF-8"): input_not_utf8,
    ("Bad input: data files", "finetune on a TSV file without a header row"): tsv_without_header,
    ("Bad input: tokenizers", "a workdir whose tokenizer file is not a sentencepiece model"):
        garbage_tokenizer,
    ("Bad input: tokenizers", "a workdir holding another run's tokenizer (500 pieces, not 2000)"):
        other_runs_tokenizer,
    ("Bad input: tokenizers", "translate-file on a workdir whose tokenizer is missing"): missing_tokenizer,
    ("Bad input: tokenizers", "finetune --init whose tokenizer is not a sentencepiece model"):
        init_garbage_tokenizer,
    ("Bad input: checkpoints of another size", "pretrain resuming checkpoints of width 64 with a "
     "config.json of width 96"): resume_other_width,
    ("Bad input: checkpoints of another size", "finetune --init whose checkpoints (width 64) do not "
     "match its config.json (width 96)"): init_other_width,
    ("Bad input: meshes", "translate on a mesh of 16 devices where 8 are present"): mesh_too_large,
    ("Bad input: meshes", "pretrain with parallel.tensor=8 over a model of 2 heads"):
        tensor_wider_than_heads,
    ("Bad input: meshes", "finetune with parallel.fsdp=3 on 8 devices"): mesh_not_dividing,
}


def state_of(path: pathlib.Path):
  return snapshot(path) if path.is_dir() else path.read_bytes()


@pytest.mark.parametrize("key", CASES, ids=[fault for _, fault in CASES])
def test_bad_input_is_one_sentence_and_changes_nothing(key, finished, tmp_path, capfd, monkeypatch,
                                                       reliability):
  from tl_jax import cli
  monkeypatch.chdir(REPO)  # presets are named relative to the repository
  inputs = Inputs(tmp_path, finished)
  argv, fragments, keep = CASES[key](inputs)
  before = {path: state_of(path) for path in keep}
  capfd.readouterr()
  code = cli.main([str(a) for a in argv])
  out, err = capfd.readouterr()
  message = assert_sentence(code, out, err, *fragments)
  for path, state in before.items():
    assert state_of(path) == state, path
  assert not (inputs.new() / "config.json").exists()
  area, fault = key
  reliability(area, fault, f"exit 2, nothing changed: `{message}`")
