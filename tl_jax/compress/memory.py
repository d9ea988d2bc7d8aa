"""How many bytes a compressed model takes: a pure function of shapes and counts.

`TensorStorage` describes how one tensor is stored; `account` adds up the bytes
of every part. The numbers are exactly the array payload `export.py` writes
(the sum of the saved arrays' `nbytes`), so a reported compression ratio is the
size of a file one can actually load, less a few KB of container overhead.

Byte layout of one compressed tensor, whose matrix view is [S, I, O]:

  - Entries are taken in *row order*: the view transposed to [S, O, I], C order.
    A row is one output feature's I input weights (rows = S*O, row_length = I),
    the axis along which N:M blocks and quantization groups run, so per-row
    index encoding stores each kept entry's input position.
  - values: the kept entries back to back in row order, `bits` bits each
    (ceil(nnz * bits / 8) bytes, see `export.pack_bits`), or float32 (4 bytes
    each) when bits == 0.
  - sparse encoding, only when some entry is pruned (nnz < count); the cheaper of
      bitmask: one bit per entry in row order, ceil(count / 8) bytes;
      indices: each kept entry's position within its row, ceil(log2(row_length))
        bits each, packed (ceil(nnz * index_bits / 8) bytes), plus int32 row
        pointers (rows + 1 of them, 4 bytes each: CSR's cumulative counts).
    A tie goes to the bitmask.
  - scales: float32, `num_scales` of them; zero points (asymmetric uniform
    quantization only): one uint8 per scale; k-means codebook: float32,
    `codebook_size` entries over all S slices.

An uncompressed tensor (bits == 0, dense, no scales or codebook) is float32 as it
is: 4 bytes an element.
"""

from __future__ import annotations

import dataclasses
import math

BITMASK = "bitmask"
INDICES = "indices"
DENSE = "dense"


def index_bits(row_length: int) -> int:
  """Bits for a position in a row: ceil(log2(row_length)), 0 for a row of one."""
  return max(int(row_length) - 1, 0).bit_length()


def packed_bytes(count: int, bits: int) -> int:
  """Bytes of `count` values packed at `bits` bits each, rounded up to a whole byte."""
  return -(-int(count) * int(bits) // 8)


def sparse_encodings(count: int, nnz: int, rows: int, row_length: int) -> dict[str, int]:
  """Bytes of each way to say which entries are kept (empty when none is pruned)."""
  if nnz >= count:
    return {}
  return {BITMASK: packed_bytes(count, 1),
          INDICES: packed_bytes(nnz, index_bits(row_length)) + 4 * (rows + 1)}


def choose_encoding(count: int, nnz: int, rows: int, row_length: int) -> tuple[str, int]:
  """(encoding, bytes) of the cheaper sparse encoding; ("dense", 0) when nothing is pruned."""
  options = sparse_encodings(count, nnz, rows, row_length)
  if not options:
    return DENSE, 0
  # min keeps the first of equal costs: the bitmask, which is also simpler to decode.
  name = min(options, key=options.get)
  return name, options[name]


@dataclasses.dataclass(frozen=True)
class TensorStorage:
  """How one tensor is stored.

  name: the parameter path, for the per-tensor report.
  shape: the tensor's own shape (not its matrix view).
  count: its number of elements.
  nnz: entries kept after pruning; == count when dense.
  rows, row_length: the matrix view as rows for the index encoding, S*O rows of
    I entries each (row_length * rows == count); 0, 0 for uncompressed tensors.
  bits: bits per stored value code, 1..8; 0 for float32 values.
  num_scales: float32 quantization scales (0 without uniform quantization).
  zero_points: whether each scale has a stored uint8 zero point (asymmetric).
  codebook_size: float32 k-means codebook entries over all slices (S * 2**bits).
  """
  name: str
  shape: tuple[int, ...]
  count: int
  nnz: int
  rows: int = 0
  row_length: int = 0
  bits: int = 0
  num_scales: int = 0
  zero_points: bool = False
  codebook_size: int = 0

  def __post_init__(self):
    object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
    if self.count != math.prod(self.shape):
      raise ValueError(f"{self.name}: count {self.count} is not the size of shape {self.shape}")
    if not 0 <= self.nnz <= self.count:
      raise ValueError(f"{self.name}: nnz {self.nnz} is outside [0, {self.count}]")
    if not 0 <= self.bits <= 8:
      raise ValueError(f"{self.name}: bits {self.bits} is outside 0..8")
    if self.nnz < self.count and self.rows * self.row_length != self.count:
      raise ValueError(f"{self.name}: a sparse tensor needs rows * row_length == count, got "
                       f"{self.rows} * {self.row_length} != {self.count}")
    if self.zero_points and not self.num_scales:
      raise ValueError(f"{self.name}: zero points need scales")

  @classmethod
  def uncompressed(cls, name: str, shape) -> TensorStorage:
    count = math.prod(int(d) for d in shape)
    return cls(name, tuple(shape), count, count)

  @classmethod
  def from_meta(cls, name: str, meta: dict) -> TensorStorage:
    """The storage an `export.encode_tensor` metadata dict describes; its original shape is
    `meta["shape"]` when the caller recorded one, else the shape encoded."""
    if meta["method"] == "none" and meta["encoding"] == DENSE:
      return cls.uncompressed(name, meta.get("shape", meta["view"]))
    s, i, o = meta["view"]
    shape = tuple(meta.get("shape", meta["view"]))
    return cls(name, shape, s * i * o, meta["nnz"], rows=s * o, row_length=i, bits=meta["bits"],
               num_scales=math.prod(meta["scale_shape"]) if meta.get("scale_shape") else 0,
               zero_points=bool(meta.get("zero_shape")),
               codebook_size=math.prod(meta["codebook_shape"]) if meta.get("codebook_shape") else 0)

  @property
  def is_uncompressed(self) -> bool:
    return (self.bits == 0 and self.nnz == self.count and not self.num_scales
            and not self.codebook_size)


_PARTS = ("values", "sparse", "scales", "zero_points", "codebooks", "uncompressed")


def tensor_bytes(t: TensorStorage) -> dict:
  """The byte count of each part of one tensor, its total, float32 size and ratio."""
  out = {f"{part}_bytes": 0 for part in _PARTS}
  if t.is_uncompressed:
    out["uncompressed_bytes"] = 4 * t.count
    encoding = DENSE
  else:
    out["values_bytes"] = packed_bytes(t.nnz, t.bits) if t.bits else 4 * t.nnz
    encoding, out["sparse_bytes"] = choose_encoding(t.count, t.nnz, t.rows, t.row_length)
    out["scales_bytes"] = 4 * t.num_scales
    out["zero_points_bytes"] = t.num_scales if t.zero_points else 0
    out["codebooks_bytes"] = 4 * t.codebook_size
  out["sparse_encoding"] = encoding
  out["total_bytes"] = sum(out[f"{part}_bytes"] for part in _PARTS)
  out["float32_bytes"] = 4 * t.count
  out["ratio"] = out["total_bytes"] / out["float32_bytes"] if t.count else 1.0
  return out


def account(storages) -> dict:
  """Bytes of a whole model: per tensor (`tensors`, by name) and summed.

  Every `*_bytes` key is an exact byte count: values, sparse (the encoding
  chosen per tensor in `tensors[name]["sparse_encoding"]`; `encodings` counts
  tensors per encoding), scales, zero_points, codebooks, uncompressed, and
  total_bytes, their sum; float32_bytes is 4 bytes per element of every tensor
  and ratio is total_bytes / float32_bytes.
  """
  tensors = {}
  for t in storages:
    if t.name in tensors:
      raise ValueError(f"tensor {t.name!r} is listed twice")
    tensors[t.name] = tensor_bytes(t)
  out = {f"{part}_bytes": sum(v[f"{part}_bytes"] for v in tensors.values()) for part in _PARTS}
  out["total_bytes"] = sum(v["total_bytes"] for v in tensors.values())
  out["float32_bytes"] = sum(v["float32_bytes"] for v in tensors.values())
  out["ratio"] = out["total_bytes"] / out["float32_bytes"] if out["float32_bytes"] else 1.0
  out["encodings"] = {e: sum(v["sparse_encoding"] == e for v in tensors.values())
                      for e in (DENSE, BITMASK, INDICES)}
  out["tensors"] = tensors
  return out
