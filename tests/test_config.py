"""Config tree: presets, typed overrides, validation messages, JSON round trip."""

import pytest

from tl_jax import config as config_lib
from tl_jax.errors import UserError


def preset(name="tiny"):
  return config_lib.load_preset(f"configs/mlm.py:{name}")


def test_overrides_are_typed():
  c = config_lib.apply_overrides(preset(), {
      "model.num_layers": "5", "train.learning_rate": "3e-4", "model.pre_ln": "true",
      "data.source": "text", "data.max_train_tokens": "1_000"})
  assert (c.model.num_layers, c.train.learning_rate, c.model.pre_ln) == (5, 3e-4, True)
  assert c.data.max_train_tokens == 1000 and c.data.source == "text"


@pytest.mark.parametrize("key,value,fragment", [
    ("model.nope", "1", "unknown config field 'model.nope'"),
    ("nope.x", "1", "unknown config field 'nope'"),
    ("model", "3", "is a section"),
    ("train.max_steps", "abc", "not a valid int"),
    ("model.pre_ln", "maybe", "not a boolean"),
])
def test_bad_overrides_name_the_field(key, value, fragment):
  with pytest.raises(UserError, match=fragment):
    config_lib.apply_overrides(preset(), {key: value})


@pytest.mark.parametrize("overrides,fragment", [
    ({"model.d_model": "100", "model.num_heads": "3"}, "not divisible by model.num_heads"),
    ({"data.seq_len": "1024"}, "exceeds model.max_len"),
    ({"model.attention": "flash"}, "model.attention"),
    ({"train.batch_size": "30", "train.grad_accum": "4"}, "grad_accum"),
    ({"parallel.data": "-1", "parallel.fsdp": "-1"}, "only one of"),
    ({"data.source": "text"}, "train_files"),
    ({"train.warmup_fraction": "1.5"}, r"must be in \[0, 1\)"),
    ({"train.warmup_fraction": "0.05", "train.schedule": "inverse_sqrt"}, "needs train.schedule=linear"),
])
def test_validation_names_field_and_fix(overrides, fragment):
  with pytest.raises(UserError, match=fragment):
    config_lib.validate(config_lib.apply_overrides(preset(), overrides))


def test_paper_grid_presets():
  c = preset("d12-w768")
  assert (c.model.num_layers, c.model.d_model, c.model.num_heads, config_lib.d_ff(c.model)) == (12, 768, 12, 3072)
  for depth in (3, 6, 12, 18, 24):
    for width in (256, 512, 768, 1024, 1536):
      c = preset(f"d{depth}-w{width}")
      config_lib.validate(c)
      assert c.model.d_model // c.model.num_heads == 64
  with pytest.raises(UserError, match="off the paper's grid"):
    preset("d7-w512")
  with pytest.raises(UserError, match="unknown preset 'nope'"):
    preset("nope")


def test_json_round_trip_and_differences(tmp_path):
  c = preset()
  path = str(tmp_path / "config.json")
  config_lib.save(c, path)
  back = config_lib.load(path)
  assert back == c and config_lib.differences(c, back) == []
  back.model.num_layers = 7
  assert config_lib.differences(c, back) == ["model.num_layers: 2 -> 7"]
