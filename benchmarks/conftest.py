"""Shared pytest set-up: GPU tests skip (visibly) where CUDA is absent."""

import pytest


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
