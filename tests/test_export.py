"""Packed export: bit packing, the sparse encoding choice, exact decoding, and that the
memory accounting is the size of the files written."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.compress import export
from tl_jax.compress import memory


def _reference_pack(values, bits):
  """Bit by bit, the slow obvious way: value k's bit j is stream bit k*bits + j."""
  v = np.asarray(values, np.uint64)
  planes = (v[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
  return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


@pytest.mark.parametrize("bits", list(range(1, 9)) + [10, 13, 17])
def test_pack_unpack_round_trip(bits):
  rng = np.random.default_rng(bits)
  for count in (0, 1, 7, 13, 1001):
    values = rng.integers(0, 2 ** bits, count).astype(np.uint32)
    packed = export.pack_bits(values, bits)
    assert packed.dtype == np.uint8 and packed.size == memory.packed_bytes(count, bits)
    np.testing.assert_array_equal(packed, _reference_pack(values, bits))
    unpacked = export.unpack_bits(packed, bits, count)
    np.testing.assert_array_equal(unpacked.astype(np.uint32), values)
    if bits <= 8:
      assert unpacked.dtype == np.uint8


def test_pack_rejects_out_of_range():
  with pytest.raises(ValueError):
    export.pack_bits(np.array([0, 4]), 2)
  with pytest.raises(ValueError):
    export.pack_bits(np.array([-1, 1]), 3)


def _mask(rng, shape, keep):
  return rng.random(shape) < keep


def _two_of_four(rng, shape):
  """Keeps 2 of every 4 consecutive inputs (along I) per output feature."""
  s, i, o = shape
  scores = rng.random((s, i // 4, 4, o))
  rank = scores.argsort(axis=2).argsort(axis=2)
  return (rank >= 2).reshape(shape)


def test_cheaper_encoding_is_chosen():
  rng = np.random.default_rng(0)
  shape = (2, 1024, 96)
  codes = rng.integers(0, 16, shape)
  scale = rng.random((2, 1, 96)).astype(np.float32)
  for keep, expected in ((0.5, memory.BITMASK), (0.05, memory.INDICES), (0.01, memory.INDICES)):
    mask = _mask(rng, shape, keep)
    arrays, meta = export.encode_tensor(codes=codes, scale=scale, mask=mask, bits=4)
    assert meta["encoding"] == expected, keep
    options = memory.sparse_encodings(mask.size, int(mask.sum()), 2 * 96, 1024)
    assert options[expected] == min(options.values())
    stored = arrays["mask"].nbytes if expected == memory.BITMASK else (
        arrays["indices"].nbytes + arrays["row_ptr"].nbytes)
    assert stored == options[expected]
  _, meta = export.encode_tensor(codes=codes, scale=scale, mask=np.ones(shape, bool), bits=4)
  assert meta["encoding"] == memory.DENSE and meta["nnz"] == codes.size


def _uniform(rng, shape, bits, group=None, per_channel=True, symmetric=True):
  s, i, o = shape
  codes = rng.integers(0, 2 ** bits, shape).astype(np.uint8)
  scale_shape = (s, i // group if group else 1, o if per_channel else 1)
  scale = (rng.random(scale_shape) * 0.1 + 1e-3).astype(np.float32)
  zero = None if symmetric else rng.integers(0, 2 ** bits, scale_shape).astype(np.uint8)
  return dict(codes=codes, scale=scale, zero=zero, bits=bits, symmetric=symmetric)


def _kmeans(rng, shape, bits):
  codes = rng.integers(0, 2 ** bits, shape).astype(np.uint8)
  codebook = rng.normal(size=(shape[0], 2 ** bits)).astype(np.float32)
  return dict(codes=codes, codebook=codebook, bits=bits)


def _jnp_dequantized(kw, mask):
  """The formula computed directly in jax: (code - zero) * scale or codebook[s, code]."""
  codes = jnp.asarray(kw["codes"])
  s, i, o = codes.shape
  if kw.get("codebook") is not None:
    w = jnp.asarray(kw["codebook"])[jnp.arange(s)[:, None, None], codes]
  else:
    scale = jnp.asarray(kw["scale"])
    g = scale.shape[1]
    if kw["symmetric"]:
      zero = jnp.float32(0.5 if kw["bits"] == 1 else 2 ** (kw["bits"] - 1))
    else:
      zero = jnp.asarray(kw["zero"]).astype(jnp.float32)[:, :, None, :]
    w = (codes.reshape(s, g, i // g, o).astype(jnp.float32) - zero) * scale[:, :, None, :]
    w = w.reshape(s, i, o)
  if mask is not None:
    w = jnp.where(mask, w, jnp.float32(0))
  return np.asarray(jax.device_get(w))


def _bitwise_equal(a, b):
  assert a.shape == b.shape and a.dtype == b.dtype == np.float32
  np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("sparsity", [None, "half", "sparse", "2:4"])
def test_decode_is_bitwise_exact(sparsity):
  rng = np.random.default_rng(1)
  shape = (2, 256, 24)
  cases = [_uniform(rng, shape, 8), _uniform(rng, shape, 1),
           _uniform(rng, shape, 3, per_channel=False),
           _uniform(rng, shape, 4, group=64, symmetric=False),
           _uniform(rng, shape, 2, group=32, per_channel=True, symmetric=True),
           _kmeans(rng, shape, 2), _kmeans(rng, shape, 5)]
  mask = {None: None, "half": _mask(rng, shape, 0.5), "sparse": _mask(rng, shape, 0.03),
          "2:4": _two_of_four(rng, shape)}[sparsity]
  for kw in cases:
    arrays, meta = export.encode_tensor(mask=mask, **kw)
    decoded = export.decode_tensor(arrays, meta)
    _bitwise_equal(decoded, _jnp_dequantized(kw, mask))
    direct = export.dequantize(kw["codes"], bits=kw["bits"], scale=kw.get("scale"),
                               zero=kw.get("zero"), codebook=kw.get("codebook"),
                               symmetric=kw.get("symmetric", True))
    if mask is not None:
      direct = np.where(mask, direct, np.float32(0))
    _bitwise_equal(decoded, direct)
  values = rng.normal(size=shape).astype(np.float32)
  arrays, meta = export.encode_tensor(values=values, mask=mask)
  _bitwise_equal(export.decode_tensor(arrays, meta),
                 values if mask is None else np.where(mask, values, np.float32(0)))


def _model(rng):
  """A realistic mix of compressed and float tensors: (name -> encode_tensor kwargs)."""
  tensors = {
      "encoder/layers/attention/query/kernel": _uniform(rng, (4, 256, 256), 8),
      "encoder/layers/mlp/wi/kernel": _uniform(rng, (2, 256, 1024), 4, group=64, symmetric=False),
      "encoder/layers/mlp/wo/kernel": _kmeans(rng, (2, 1024, 256), 2),
      "embed/embedding": dict(values=rng.normal(size=(1, 128, 2000)).astype(np.float32),
                              mask=_mask(rng, (1, 128, 2000), 0.5)),
      "encoder/layers/attention/out/kernel": dict(
          **_uniform(rng, (4, 1024, 128), 8), mask=_mask(rng, (4, 1024, 128), 0.04)),
      "encoder/layers/attention/key/kernel": dict(
          **_uniform(rng, (4, 256, 256), 4), mask=_two_of_four(rng, (4, 256, 256))),
      "encoder/layers/ln/scale": dict(values=rng.normal(size=(4, 256)).astype(np.float32)),
      "encoder/layers/mlp/wi/bias": dict(values=rng.normal(size=(4, 1024)).astype(np.float32)),
      "head/bias": dict(values=np.float32(0.25)),
  }
  return tensors


def test_accounting_is_the_export_size(tmp_path):
  rng = np.random.default_rng(2)
  model = _model(rng)
  arrays_tree, metas, storages = {}, {}, []
  for name, kw in model.items():
    arrays, meta = export.encode_tensor(**kw)
    arrays_tree[name] = arrays
    metas[name] = meta
    storages.append(export.storage(name, meta))
  assert metas["embed/embedding"]["encoding"] == memory.BITMASK
  assert metas["encoder/layers/attention/out/kernel"]["encoding"] == memory.INDICES
  assert metas["encoder/layers/attention/key/kernel"]["encoding"] == memory.BITMASK
  report = memory.account(storages)

  for name, arrays in arrays_tree.items():
    assert sum(a.nbytes for a in arrays.values()) == report["tensors"][name]["total_bytes"], name
  payload = sum(a.nbytes for arrays in arrays_tree.values() for a in arrays.values())
  assert payload == report["total_bytes"]
  assert report["float32_bytes"] == 4 * sum(
      np.size(kw.get("codes", kw.get("values"))) for kw in model.values())
  parts = ("values", "sparse", "scales", "zero_points", "codebooks", "uncompressed")
  assert sum(report[f"{p}_bytes"] for p in parts) == report["total_bytes"]
  assert report["uncompressed_bytes"] == 4 * (4 * 256 + 4 * 1024 + 1)
  assert report["zero_points_bytes"] == 2 * 4 * 1024
  assert report["codebooks_bytes"] == 4 * 2 * 4
  assert 0.1 < report["ratio"] < 0.3

  directory = tmp_path / "export"
  export.save(str(directory), arrays_tree, {"tensors": metas})
  on_disk = export.file_bytes(str(directory))
  assert abs(on_disk - report["total_bytes"]) <= 0.02 * report["total_bytes"], (
      on_disk, report["total_bytes"])

  # Saving again replaces the export; then everything reads back and decodes exactly.
  export.save(str(directory), arrays_tree, {"tensors": metas})
  assert not (tmp_path / "export.tmp").exists() and not (tmp_path / "export.old").exists()
  loaded, meta = export.load(str(directory))
  assert meta == {"tensors": metas}
  assert loaded.keys() == arrays_tree.keys()
  for name, arrays in arrays_tree.items():
    assert loaded[name].keys() == arrays.keys()
    for key, a in arrays.items():
      assert loaded[name][key].dtype == a.dtype and loaded[name][key].shape == a.shape
      np.testing.assert_array_equal(loaded[name][key], a)
    kw = model[name]
    decoded = export.decode_tensor(loaded[name], meta["tensors"][name])
    if "codes" in kw:
      _bitwise_equal(decoded, _jnp_dequantized(kw, kw.get("mask")))
    else:
      expected = np.asarray(kw["values"], np.float32)
      if kw.get("mask") is not None:
        expected = np.where(kw["mask"], expected, np.float32(0))
      _bitwise_equal(decoded, expected)


def test_empty_and_fully_pruned_tensors_round_trip(tmp_path):
  rng = np.random.default_rng(3)
  kw = _uniform(rng, (1, 16, 8), 4)
  arrays, meta = export.encode_tensor(mask=np.zeros((1, 16, 8), bool), **kw)
  assert meta["nnz"] == 0 and arrays["codes"].size == 0
  report = memory.account([export.storage("w", meta)])
  assert report["total_bytes"] == sum(a.nbytes for a in arrays.values())
  one_row, one_meta = export.encode_tensor(values=rng.normal(size=(1, 1, 64)).astype(np.float32),
                                           mask=_mask(rng, (1, 1, 64), 0.02))
  export.save(str(tmp_path / "e"), {"w": arrays, "v": one_row}, {"w": meta, "v": one_meta})
  loaded, metas = export.load(str(tmp_path / "e"))
  np.testing.assert_array_equal(export.decode_tensor(loaded["w"], metas["w"]),
                                np.zeros((1, 16, 8), np.float32))
  np.testing.assert_array_equal(export.decode_tensor(loaded["v"], metas["v"]),
                                export.decode_tensor(one_row, one_meta))
