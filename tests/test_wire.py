import json
import os
import struct

import pytest
import torch

from evaluators.wire import WireError, read_frame, write_frame


def _pipe_roundtrip(header, tensors=None):
    r, w = os.pipe()
    try:
        write_frame(w, header, tensors)
        os.close(w)
        return read_frame(r)
    finally:
        os.close(r)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_tensors_roundtrip_exactly(dtype):
    x = torch.randn(7, 5).to(dtype).t()  # non-contiguous on purpose
    header, tensors = _pipe_roundtrip({"event": "result", "n": 1}, {"out": x})
    assert header == {"event": "result", "n": 1}
    assert tensors["out"].dtype == dtype and torch.equal(tensors["out"], x)


def _raw(header: dict, payload: bytes = b"") -> tuple[dict, dict]:
    r, w = os.pipe()
    head = json.dumps(header).encode()
    os.write(w, struct.pack("<Q", len(head)) + head + payload)
    os.close(w)
    try:
        return read_frame(r)
    finally:
        os.close(r)


def test_lies_are_rejected_not_trusted():
    with pytest.raises(WireError, match="claims"):
        _raw({"blobs": [{"key": "out", "dtype": "fp32", "shape": [4, 4], "nbytes": 8}]}, b"\0" * 8)
    with pytest.raises(WireError, match="invalid dtype"):
        _raw({"blobs": [{"key": "out", "dtype": "object", "shape": [1], "nbytes": 8}]}, b"\0" * 8)
    with pytest.raises(EOFError):
        _raw({"blobs": [{"key": "out", "dtype": "fp32", "shape": [4], "nbytes": 16}]}, b"\0" * 4)
