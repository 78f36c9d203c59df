"""Shared pytest set-up: GPU tests skip (visibly) where CUDA is absent."""

import os
import tempfile

import pytest

# Each test session judges with an empty compile cache and verdict memo of its own, so no
# verdict from an earlier run (or the user's own cache) can make a test pass.
os.environ["TRITON_EVOLVE_CACHE"] = tempfile.mkdtemp(prefix="triton-evolve-test-cache-")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu); none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
