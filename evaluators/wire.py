"""Framing between the evaluator and its sandboxed child: JSON headers plus raw tensor bytes.

Never pickle: the child runs untrusted code, and unpickling what it sends would run
whatever it chose in the parent. A frame is an 8-byte length, a JSON header, then the
raw bytes of each tensor the header lists (dtype, shape, nbytes), validated on read.
"""

from __future__ import annotations

import json
import os
import struct

import torch

_DTYPES = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "fp64": torch.float64,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_HEADER = 16 << 20
MAX_FRAME_BYTES = 8 << 30


class WireError(Exception):
    """The peer sent something that is not a valid frame."""


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return _NAMES[dtype]


def write_frame(fd: int, header: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
    tensors = tensors or {}
    blobs, payloads = [], []
    for key, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        data = raw.numpy().tobytes()
        blobs.append({"key": key, "dtype": _NAMES[t.dtype], "shape": list(t.shape), "nbytes": len(data)})
        payloads.append(data)
    head = json.dumps({**header, "blobs": blobs}).encode()
    _write_all(fd, struct.pack("<Q", len(head)) + head)
    for data in payloads:
        _write_all(fd, data)


def read_frame(fd: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read one frame; raises EOFError when the peer closed, WireError when it lies."""
    (size,) = struct.unpack("<Q", _read_exact(fd, 8))
    if size > MAX_HEADER:
        raise WireError(f"header of {size} bytes is larger than {MAX_HEADER}")
    try:
        header = json.loads(_read_exact(fd, size))
    except ValueError as e:
        raise WireError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("blobs", []), list):
        raise WireError("header is not an object with a blob list")
    tensors, total = {}, 0
    for blob in header.pop("blobs", []):
        key, dtype, shape, nbytes = (blob.get(k) for k in ("key", "dtype", "shape", "nbytes"))
        if (
            dtype not in _DTYPES
            or not isinstance(shape, list)
            or not all(isinstance(s, int) and s >= 0 for s in shape)
        ):
            raise WireError(f"blob {key!r} has an invalid dtype or shape")
        expected = _DTYPES[dtype].itemsize
        for s in shape:
            expected *= s
        total += expected
        if nbytes != expected or total > MAX_FRAME_BYTES:
            raise WireError(f"blob {key!r} claims {nbytes} bytes for shape {shape} {dtype}")
        data = bytearray(_read_exact(fd, nbytes))
        torch_dt = _DTYPES[dtype]
        store = torch.int16 if torch_dt == torch.bfloat16 else torch_dt
        t = torch.frombuffer(data, dtype=store) if nbytes else torch.empty(0, dtype=store)
        t = t.view(torch.bfloat16) if torch_dt == torch.bfloat16 else t
        tensors[str(key)] = t.reshape(shape)
    return header, tensors


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            raise EOFError("peer closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
