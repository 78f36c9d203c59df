"""evaluators/autotune.py (parent side) and evaluators/standins.py (child side) of @triton.autotune on CPU."""

import pytest
import torch

from evaluators import autotune, standins
from evaluators.model.constants import GPUS
from evaluators.targets import DEVICE_PROPERTIES, TARGET_LIMITS

H100, SM90 = GPUS["h100"], TARGET_LIMITS["sm_90"]


def _facts(tile, warps=8, stages=3, shared=65536, regs=128):
    return {
        "kernel": "k",
        "shared": shared,
        "num_warps": warps,
        "num_stages": stages,
        "regs": regs,
        "uses_wgmma": True,
        "dots": [{"precision": "bf16", "a": "bf16", "b": "bf16", "tile": tile}],
    }


def _entry(shape, options, kind="train"):
    return {
        "shape": list(shape),
        "layout": "nn",
        "kind": kind,
        "calls": [{"kernel": "k", "autotune": options}],
    }


def test_the_model_picks_the_fastest_launchable_config():
    kernels = {
        "small": _facts([32, 32, 32], warps=4, shared=16384),
        "big": _facts([128, 128, 64]),
        "huge": _facts([256, 256, 64], shared=400 * 1024),  # over sm_90's 227 KiB: never chosen
    }
    shape = (4096, 4096, 4096)
    options = [
        {"config": "small", "key": "small", "grid": [128 * 128]},
        {"config": "huge", "key": "huge", "grid": [16 * 16]},
        {"config": "big", "key": "big", "grid": [32 * 32]},
    ]
    resolved, choices = autotune.resolve([_entry(shape, options)], kernels, SM90, H100, "bf16", False)
    (choice,) = choices[(shape, "nn", "train")]
    assert (choice.index, choice.config) == (2, "big") and choice.modelled_s > 0
    assert resolved[0]["calls"] == [{"key": "big", "grid": [1024]}]
    assert "k[big] on (4096, 4096, 4096) nn" in autotune.summary(choices)


def test_without_a_model_or_a_launchable_config_the_first_is_taken():
    kernels = {"a": _facts([64, 64, 64]), "b": _facts([64, 64, 64], shared=10**9)}
    options = [{"config": "b", "key": "b", "grid": [1]}, {"config": "a", "key": "a", "grid": [1]}]
    _, choices = autotune.resolve([_entry((64, 64, 64), options)], kernels, SM90, None, "bf16", False)
    assert choices[((64, 64, 64), "nn", "train")][0].index == 1  # the first launchable
    _, choices = autotune.resolve([_entry((64, 64, 64), options[:1])], kernels, SM90, H100, "bf16", False)
    assert choices[((64, 64, 64), "nn", "train")][0].index == 0 and not autotune.summary(choices, ("x",))


def test_device_queries_answer_with_the_target(monkeypatch):
    for name in ("get_device_properties", "get_device_capability", "get_device_name", "current_device"):
        monkeypatch.setattr(torch.cuda, name, getattr(torch.cuda, name))  # restored after the test
    standins.answer_device_queries("sm_90")
    props = torch.cuda.get_device_properties("cuda")
    assert props.multi_processor_count == 132 and torch.cuda.get_device_capability() == (9, 0)
    assert props.shared_memory_per_block_optin == DEVICE_PROPERTIES["sm_90"].shared_memory_per_block_optin
    with pytest.raises(KeyError):
        standins.answer_device_queries("sm_1")


def test_check_mode_launches_the_chosen_config_with_the_autotuners_hooks():
    import triton

    def body():
        pass

    class Fn:
        calls = []
        fn = staticmethod(body)  # what the autotuner walks down to for the kernel's name

        def run(self, *args, **kwargs):
            self.calls.append(kwargs)

    zeroed = []
    tuner = standins.compat.autotuner_class()(
        Fn(), ["x", "N"], [triton.Config({"B": 16}), triton.Config({"B": 32}, num_warps=8)], ["N"], None, None,
        pre_hook=lambda nargs, reset_only=False: zeroed.append(reset_only),
    )  # fmt: skip
    stand_in = standins.AutotuneStandIn()
    stand_in.choices = [1, 1]
    x = torch.zeros(4)
    stand_in.run(tuner, (x, 4), {"grid": (1,), "warmup": False})
    stand_in.run(tuner, (x, 4), {"grid": (1,), "warmup": False})
    assert [c["B"] for c in Fn.calls] == [32, 32] and Fn.calls[0]["num_warps"] == 8
    assert zeroed == [True]  # once per tuning key, after "benchmarking", as the real autotuner does
    assert stand_in.chosen == ["B=32, num_warps=8, num_stages=3"] * 2
    with pytest.raises(RuntimeError, match="launched more often"):
        stand_in.run(tuner, (x, 4), {"grid": (1,), "warmup": False})
