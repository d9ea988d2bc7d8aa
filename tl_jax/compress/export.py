"""Packed export of a compressed model, and its loader.

A compressed tensor is given in its matrix view [S, I, O] (see `layout.py`):
b-bit codes with uniform-quantization scales (and zero points when asymmetric)
or a k-means codebook, or float32 values; optionally a pruning mask.
`encode_tensor` turns it into a few flat numpy arrays laid out byte for byte as
`memory.py` counts them, plus a small JSON-able metadata dict; `decode_tensor`
gives back the dequantized float32 [S, I, O] weights, bitwise equal to computing
`(code - zero) * scale` or `codebook[s, code]` directly and zeroing pruned entries.
Going back from the view to the parameter's own shape is the caller's business
(`Layout.from_view`); the caller may record anything else it needs (the
parameter shape under "shape", say) in the metadata dict.

Arrays of one tensor (entries in row order: the view transposed to [S, O, I]):
  codes     uint8 [ceil(nnz*bits/8)]  kept entries' codes, packed (bits >= 1)
  values    float32 [nnz]             kept entries (bits == 0 and pruned);
            float32, the given shape  the whole tensor (uncompressed)
  mask      uint8 [ceil(count/8)]     bitmask encoding: one bit per entry, packed
  indices   uint8 [ceil(nnz*ib/8)]    index encoding: position within the row, ib bits
  row_ptr   int32 [S*O + 1]           index encoding: kept entries before each row
  scale     float32 (S, G, O), (S, 1, O) or (S, 1, 1)
  zero      uint8, scale's shape      asymmetric uniform quantization only
  codebook  float32 (S, K)            k-means, K <= 2**bits

Packed bitstreams are little-endian: value k occupies stream bits
[k*bits, (k+1)*bits), least significant bit first, and stream bit j is bit j % 8
(counting from the least significant) of byte j // 8; the last byte is padded
with zero bits.

`save` writes a tree of such arrays as one uncompressed orbax checkpoint of their
bytes plus `meta.json`; `load` reads it back.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np

from tl_jax.compress import memory

FORMAT = "tl_jax.compress.export"
VERSION = 2  # 2: one payload array
MAX_BITS = 32  # codes use 1..8; indices need ceil(log2(I)) bits


def _uint_dtype(bits: int):
  for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
    if bits <= 8 * np.dtype(dtype).itemsize:
      return dtype
  raise ValueError(f"bits={bits} is more than 64")


def _check_bits(bits: int) -> None:
  if not 1 <= bits <= MAX_BITS:
    raise ValueError(f"bits={bits} must be in 1..{MAX_BITS}")


def pack_bits(values, bits: int) -> np.ndarray:
  """Packs non-negative integers below 2**bits (1 <= bits <= 32) into
  ceil(len * bits / 8) bytes, little-endian (see the module docstring).

  Eight values fill exactly `bits` bytes, so the stream is built eight values at
  a time in ceil(bits/8) 64-bit words: one vectorized shift-and-or per position
  in the group of eight, whatever the number of values.
  """
  _check_bits(bits)
  v = np.asarray(values).reshape(-1)
  n = v.size
  nbytes = memory.packed_bytes(n, bits)
  if n == 0:
    return np.zeros(0, np.uint8)
  if v.dtype != np.bool_:
    if not np.issubdtype(v.dtype, np.integer):
      raise ValueError(f"pack_bits needs integers, got {v.dtype}")
    if (np.issubdtype(v.dtype, np.signedinteger) and v.min() < 0) or int(v.max()) >> bits:
      raise ValueError(f"values must lie in [0, 2**{bits}), got [{v.min()}, {v.max()}]")
  if bits == 8:
    return v.astype(np.uint8)
  if bits == 1:
    return np.packbits(v.astype(bool), bitorder="little")
  if bits in (2, 4):  # whole values per byte: plain uint8 shifts are faster
    per = 8 // bits
    v = v.astype(np.uint8)
    if n % per:
      v = np.concatenate([v, np.zeros(per - n % per, np.uint8)])
    v = v.reshape(-1, per)
    out = v[:, 0].copy()
    for k in range(1, per):
      out |= v[:, k] << np.uint8(k * bits)
    return out
  if n % 8:
    v = np.concatenate([v, np.zeros(8 - n % 8, v.dtype)])
  v = v.reshape(-1, 8)
  words = [np.zeros(v.shape[0], np.uint64) for _ in range(-(-bits // 8))]
  for k in range(8):
    col = v[:, k].astype(np.uint64)
    w, r = divmod(k * bits, 64)
    words[w] |= col << np.uint64(r)
    if r + bits > 64:  # the value straddles two words
      words[w + 1] |= col >> np.uint64(64 - r)
  stream = np.stack(words, axis=1).astype("<u8").view(np.uint8)
  return stream[:, :bits].reshape(-1)[:nbytes]


def unpack_bits(packed, bits: int, count: int) -> np.ndarray:
  """The first `count` values of a `pack_bits` stream, as the smallest unsigned
  integer dtype that holds `bits` bits (uint8 for codes)."""
  _check_bits(bits)
  packed = np.asarray(packed, np.uint8).reshape(-1)
  nbytes = memory.packed_bytes(count, bits)
  if packed.size < nbytes:
    raise ValueError(f"{count} values of {bits} bits need {nbytes} bytes, got {packed.size}")
  dtype = _uint_dtype(bits)
  if count == 0:
    return np.zeros(0, dtype)
  if bits == 8:
    return packed[:count].copy()
  if bits == 1:
    return np.unpackbits(packed[:nbytes], count=count, bitorder="little")
  if bits in (2, 4):
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    return ((packed[:nbytes, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)[:count]
  groups = -(-count // 8)
  nwords = -(-bits // 8)
  buf = np.zeros((groups, 8 * nwords), np.uint8)
  flat = packed[:nbytes]
  if flat.size < groups * bits:
    flat = np.concatenate([flat, np.zeros(groups * bits - flat.size, np.uint8)])
  buf[:, :bits] = flat.reshape(groups, bits)
  words = buf.view("<u8").astype(np.uint64)
  low = np.uint64((1 << bits) - 1)
  out = np.empty((groups, 8), dtype)
  for k in range(8):
    w, r = divmod(k * bits, 64)
    val = words[:, w] >> np.uint64(r)
    if r + bits > 64:
      val |= words[:, w + 1] << np.uint64(64 - r)
    out[:, k] = val & low
  return out.reshape(-1)[:count]


def symmetric_zero(bits: int) -> float:
  """The implied zero point of symmetric b-bit codes: 2**(b-1), or 0.5 for one bit (codes
  0 and 1 then mean -scale/2 and +scale/2)."""
  return 0.5 if bits == 1 else float(2 ** (bits - 1))


def _expand(a: np.ndarray, inputs: int) -> np.ndarray:
  """A per-group array (S, G, X) repeated along I to (S, I, X); (S, 1, X) just broadcasts."""
  return a if a.shape[1] == 1 else np.repeat(a, inputs // a.shape[1], axis=1)


def dequantize(codes: np.ndarray, *, bits: int, scale=None, zero=None, codebook=None,
               symmetric: bool = True) -> np.ndarray:
  """float32 weights [S, I, O] of dense codes [S, I, O]: `(code - zero) * scale` with
  float32 operands in this order (the subtraction is exact), or `codebook[s, code]`."""
  codes = np.asarray(codes)
  if codebook is not None:
    codebook = np.asarray(codebook, np.float32)
    return codebook[np.arange(codes.shape[0])[:, None, None], codes]
  scale = _expand(np.asarray(scale, np.float32), codes.shape[1])
  if symmetric:
    z = np.float32(symmetric_zero(bits))
  else:
    z = _expand(np.asarray(zero), codes.shape[1]).astype(np.float32)
  return (codes.astype(np.float32) - z) * scale


def _rows(x: np.ndarray) -> np.ndarray:
  """[S, I, O] -> [S, O, I]: row order, one row per output feature."""
  return np.transpose(x, (0, 2, 1))


def _check_scale_shape(name: str, shape, view) -> None:
  s, i, o = view
  if len(shape) != 3 or shape[0] != s or shape[2] not in (1, o) or shape[1] < 1 or i % shape[1]:
    raise ValueError(f"{name} shape {tuple(shape)} does not fit the view {tuple(view)}: expected "
                     "(S, G, O), (S, 1, O) or (S, 1, 1) with G dividing I")


def encode_tensor(*, codes=None, scale=None, zero=None, codebook=None, mask=None, values=None,
                  bits: int = 0, symmetric: bool = True) -> tuple[dict[str, np.ndarray], dict]:
  """The packed arrays and metadata of one tensor.

  Quantized ([S, I, O] codes in [0, 2**bits), 1 <= bits <= 8): give `scale`
  (uniform; `zero` too, uint8-valued, when `symmetric` is False) or `codebook`
  (S, K) (k-means). Not quantized (bits == 0): give float `values`, [S, I, O]
  when masked, any shape otherwise (stored as float32 as it is). `mask` (bool
  [S, I, O], True = kept) prunes; codes and values under False are ignored.
  Metadata keys: method (uniform/kmeans/none), bits, symmetric, encoding
  (dense/bitmask/indices), view (the shape encoded), nnz, index_bits,
  scale_shape, zero_shape, codebook_shape (null when absent).
  """
  if codebook is not None:
    method = "kmeans"
  elif scale is not None:
    method = "uniform"
  else:
    method = "none"
  if method == "none":
    if values is None or bits:
      raise ValueError("give codes with a scale or codebook (bits >= 1), or float values (bits=0)")
    main = np.asarray(values, np.float32)
  else:
    if codes is None or not 1 <= bits <= 8:
      raise ValueError(f"{method} quantization needs codes and 1 <= bits <= 8, got bits={bits}")
    if method == "uniform" and symmetric == (zero is not None):
      raise ValueError("pass zero points exactly when symmetric=False")
    main = np.asarray(codes)
  meta = {"method": method, "bits": int(bits), "symmetric": bool(symmetric),
          "view": [int(d) for d in main.shape], "index_bits": None,
          "scale_shape": None, "zero_shape": None, "codebook_shape": None}
  if mask is not None:
    mask = np.asarray(mask, bool)
    if mask.shape != main.shape:
      raise ValueError(f"mask shape {mask.shape} differs from {main.shape}")
    if mask.all():  # nothing pruned: no encoding to pay for
      mask = None
  if (mask is not None or method != "none") and main.ndim != 3:
    raise ValueError(f"compressed tensors come as [S, I, O], got shape {main.shape}")
  view = main.shape
  arrays = {}

  if mask is None:
    # Uncompressed tensors keep their own layout; codes go in row order like the sparse ones.
    kept = main if method == "none" else _rows(main).reshape(-1)
    meta["encoding"] = memory.DENSE
    meta["nnz"] = int(main.size)
  else:
    mask_r = _rows(mask)
    kept = _rows(main)[mask_r]
    s, i, o = view
    nnz = int(kept.size)
    meta["nnz"] = nnz
    meta["encoding"], _ = memory.choose_encoding(mask.size, nnz, s * o, i)
    if meta["encoding"] == memory.BITMASK:
      arrays["mask"] = pack_bits(mask_r.reshape(-1), 1)
    else:
      if nnz >= 2 ** 31:
        raise ValueError(f"{nnz} kept entries overflow the int32 row pointers")
      ib = memory.index_bits(i)
      meta["index_bits"] = ib
      row_counts = mask_r.reshape(s * o, i).sum(axis=1)
      arrays["row_ptr"] = np.concatenate([[0], np.cumsum(row_counts)]).astype(np.int32)
      positions = np.flatnonzero(mask_r) % i
      arrays["indices"] = pack_bits(positions, ib) if ib else np.zeros(0, np.uint8)

  if method == "none":
    arrays["values"] = np.ascontiguousarray(kept, np.float32)
    return arrays, meta
  arrays["codes"] = pack_bits(kept, bits)
  if method == "kmeans":
    codebook = np.asarray(codebook, np.float32)
    k = codebook.shape[-1] if codebook.ndim else 0
    if codebook.ndim != 2 or codebook.shape[0] != view[0] or not 1 <= k <= 2 ** bits:
      raise ValueError(f"codebook shape {codebook.shape} should be (S={view[0]}, K <= {2 ** bits})")
    if kept.size and int(kept.max()) >= codebook.shape[1]:
      raise ValueError(f"code {int(kept.max())} is past the {codebook.shape[1]}-entry codebook")
    arrays["codebook"] = codebook
    meta["codebook_shape"] = list(codebook.shape)
  else:
    scale = np.asarray(scale, np.float32)
    _check_scale_shape("scale", scale.shape, view)
    arrays["scale"] = scale
    meta["scale_shape"] = list(scale.shape)
    if not symmetric:
      zero = np.asarray(zero)
      if zero.shape != scale.shape:
        raise ValueError(f"zero point shape {zero.shape} differs from the scale's {scale.shape}")
      if zero.size and (zero.min() < 0 or int(zero.max()) >> bits):
        raise ValueError(f"zero points must lie in [0, 2**{bits})")
      arrays["zero"] = zero.astype(np.uint8)
      meta["zero_shape"] = list(zero.shape)
  return arrays, meta


def _expect(arrays: dict, name: str, dtype, size: int) -> np.ndarray:
  a = np.asarray(arrays[name])
  if a.dtype != dtype or a.size != size:
    raise ValueError(f"array {name!r} is {a.dtype}[{a.size}], expected {np.dtype(dtype)}[{size}]")
  return a.reshape(-1)


def decode_tensor(arrays: dict, meta: dict) -> np.ndarray:
  """float32 weights of one encoded tensor: [S, I, O] for compressed tensors (pruned
  entries +0.0), the given shape for uncompressed ones."""
  view = tuple(meta["view"])
  method, bits, encoding = meta["method"], meta["bits"], meta["encoding"]
  if method == "none" and encoding == memory.DENSE:
    return np.asarray(arrays["values"], np.float32).reshape(view)
  s, i, o = view
  count, nnz = s * i * o, meta["nnz"]
  if encoding == memory.DENSE:
    mask_r = None
  elif encoding == memory.BITMASK:
    mask_r = unpack_bits(_expect(arrays, "mask", np.uint8, memory.packed_bytes(count, 1)),
                         1, count).astype(bool).reshape(s, o, i)
  elif encoding == memory.INDICES:
    row_ptr = _expect(arrays, "row_ptr", np.int32, s * o + 1).astype(np.int64)
    if row_ptr[0] != 0 or row_ptr[-1] != nnz or np.any(np.diff(row_ptr) < 0):
      raise ValueError("row pointers are not a cumulative count of the kept entries")
    ib = meta["index_bits"]
    if ib:
      positions = unpack_bits(_expect(arrays, "indices", np.uint8, memory.packed_bytes(nnz, ib)),
                              ib, nnz).astype(np.int64)
    else:
      positions = np.zeros(nnz, np.int64)
    rows = np.repeat(np.arange(s * o), np.diff(row_ptr))
    flat = np.zeros(count, bool)
    flat[rows * i + positions] = True
    mask_r = flat.reshape(s, o, i)
  else:
    raise ValueError(f"unknown sparse encoding {encoding!r}")
  if mask_r is not None and int(mask_r.sum()) != nnz:
    raise ValueError(f"the mask keeps {int(mask_r.sum())} entries, the metadata says {nnz}")

  def scatter(kept: np.ndarray, dtype) -> np.ndarray:
    if mask_r is None:
      full = kept.astype(dtype, copy=False).reshape(s, o, i)
    else:
      full = np.zeros((s, o, i), dtype)
      full[mask_r] = kept
    return np.ascontiguousarray(np.transpose(full, (0, 2, 1)))

  if method == "none":
    return scatter(_expect(arrays, "values", np.float32, nnz), np.float32)
  codes = scatter(unpack_bits(_expect(arrays, "codes", np.uint8, memory.packed_bytes(nnz, bits)),
                              bits, nnz), np.uint8)
  if method == "kmeans":
    out = dequantize(codes, bits=bits, codebook=np.asarray(arrays["codebook"], np.float32))
  elif method == "uniform":
    zero = None if meta["symmetric"] else np.asarray(arrays["zero"], np.uint8)
    out = dequantize(codes, bits=bits, scale=np.asarray(arrays["scale"], np.float32), zero=zero,
                     symmetric=meta["symmetric"])
  else:
    raise ValueError(f"unknown method {method!r}")
  if mask_r is not None:
    out = np.where(np.transpose(mask_r, (0, 2, 1)), out, np.float32(0))
  return out


def storage(name: str, meta: dict) -> memory.TensorStorage:
  """The `memory.TensorStorage` of an encoded tensor (see `TensorStorage.from_meta`)."""
  return memory.TensorStorage.from_meta(name, meta)


def _flatten(tree, prefix=()):
  """(path, array) of every leaf of a tree of nested dicts with string keys."""
  if isinstance(tree, dict):
    for key in sorted(tree):
      if not isinstance(key, str):
        raise ValueError(f"tree keys must be strings, got {key!r} under {'/'.join(prefix)}")
      yield from _flatten(tree[key], prefix + (key,))
  else:
    yield prefix, np.asarray(tree)


def _checkpointer():
  import orbax.checkpoint as ocp
  # No compression: the payload is already packed, and its size on disk should be what
  # `memory.account` says.
  return ocp, ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))


def save(directory: str, arrays_tree: dict, meta: dict) -> None:
  """Writes `arrays_tree` (nested dicts of numpy arrays, any string keys) and `meta`
  (JSON-able) to `directory`: the arrays' bytes back to back as one uint8 array in an
  orbax checkpoint (`directory/arrays`), and where each array lies in `directory/meta.json`.

  One array rather than one per tensor: orbax keeps a few hundred bytes of metadata per
  array, which for a small model at 2 bits would be a tenth of the file. An existing export
  is replaced only once the new one is complete (written to `directory.tmp`, then renamed).
  """
  directory = os.path.abspath(directory).rstrip(os.sep)
  tmp, old = directory + ".tmp", directory + ".old"
  for stale in (tmp, old):
    if os.path.exists(stale):
      shutil.rmtree(stale)
  os.makedirs(tmp)
  listing, chunks, offset = [], [], 0
  for path, a in _flatten(arrays_tree):
    raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    listing.append([list(path), a.dtype.str, list(a.shape), offset])
    chunks.append(raw)
    offset += raw.size
  if offset:
    ocp, checkpointer = _checkpointer()
    with checkpointer:
      checkpointer.save(os.path.join(tmp, "arrays"),
                        args=ocp.args.PyTreeSave({"payload": np.concatenate(chunks)}))
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump({"format": FORMAT, "version": VERSION, "arrays": listing, "meta": meta}, f,
              separators=(",", ":"))
  if os.path.exists(directory):
    os.rename(directory, old)
  os.rename(tmp, directory)
  if os.path.exists(old):
    shutil.rmtree(old)


def load(directory: str) -> tuple[dict, dict]:
  """(arrays_tree, meta) of an export `save` wrote; the arrays are numpy."""
  directory = os.path.abspath(directory)
  with open(os.path.join(directory, "meta.json")) as f:
    info = json.load(f)
  if info.get("format") != FORMAT or info.get("version") != VERSION:
    raise ValueError(f"{directory} is not a {FORMAT} export of version {VERSION}")
  payload = np.zeros(0, np.uint8)
  if any(math.prod(shape) for _, _, shape, _ in info["arrays"]):
    ocp, checkpointer = _checkpointer()
    with checkpointer:
      restored = checkpointer.restore(
          os.path.join(directory, "arrays"),
          args=ocp.args.PyTreeRestore(restore_args={"payload": ocp.RestoreArgs(restore_type=np.ndarray)}))
    payload = np.asarray(restored["payload"])
  tree = {}
  for path, dtype, shape, offset in info["arrays"]:
    dtype, shape = np.dtype(dtype), tuple(shape)
    size = math.prod(shape) * dtype.itemsize
    if offset + size > payload.size:
      raise ValueError(f"{directory}: array {'/'.join(path)} lies past the end of the stored bytes "
                       f"({offset + size} > {payload.size}); the export is truncated.")
    a = payload[offset:offset + size].view(dtype).reshape(shape)
    keys = path
    if not keys:  # the whole tree was one array
      return a, info["meta"]
    node = tree
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = a
  return tree, info["meta"]


def file_bytes(directory: str) -> int:
  """Bytes of all files under `directory` (links not followed)."""
  total = 0
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      if not os.path.islink(path):
        total += os.path.getsize(path)
  return total
