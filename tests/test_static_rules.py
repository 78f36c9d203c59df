"""Static rules: the seed and honest variants pass; each rule and known cheat is caught on its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from evaluators.static_rules import Violation, check_source, feedback

SEED = (Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py").read_text()

DOC = '"""An honest split-K / persistent variant."""\n'
HEADER = "import torch\nimport triton\nimport triton.language as tl\n\n\n"
ENTRY = "\n\ndef matmul(a, b):\n    return a\n"


def module(body: str, header: str = HEADER, entry: str = ENTRY) -> str:
    return header + textwrap.dedent(body).strip("\n") + "\n" + entry


def line_of(source: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    return next(i for i, text in enumerate(source.splitlines(), 1) if needle in text)


def only(source: str, rule: str, needle: str, **kw) -> Violation:
    """Exactly one violation, of `rule`, on the line holding `needle`."""
    found = check_source(source, **kw)
    assert len(found) == 1, found
    v = found[0]
    assert v.rule == rule and v.line == line_of(source, needle), v
    assert v.message.startswith(f"line {v.line}: ")
    return v


HONEST = module(
    """
import functools
import math
import typing
from typing import Optional
from triton import language as tl2

BLOCK = 64
CONFIGS = [dict(BLOCK_M=128, BLOCK_N=128, num_warps=8), dict(BLOCK_M=64, BLOCK_N=64, num_warps=4)]
AUTOTUNE = [triton.Config({"BLOCK_M": m}, num_warps=w) for m in (64, 128) for w in (4, 8)]
DTYPE = torch.float16


@triton.autotune(configs=AUTOTUNE, key=["M", "N", "K"], reset_to_zero=["c_ptr"])
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def splitk_kernel(a_ptr, b_ptr, c_ptr, M, N, K, BLOCK_M: tl.constexpr, EVEN_K: tl.constexpr):
    pid = tl.program_id(0)
    offs = tl.max_contiguous(tl.multiple_of(pid * BLOCK_M + tl.arange(0, BLOCK_M), BLOCK_M), BLOCK_M)
    a = tl.load(a_ptr + offs)
    b = tl.load(b_ptr + offs)
    acc = tl.dot(a, b) + a @ b + tl2.dot(a, b) + tl.math.exp(a)
    tl.atomic_add(c_ptr + offs, acc.to(tl.float16))


@functools.lru_cache(maxsize=None)
def num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def pick(M: int, N: int) -> Optional[typing.Dict[str, int]]:
    return CONFIGS[0] if M * N > BLOCK * BLOCK else None


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    M, K = a.shape
    _, N = b.shape
    assert a.is_contiguous() and a.dtype == b.dtype
    assert a.device == b.device
    partial = torch.zeros((4, M, N), device=a.device, dtype=torch.float32)
    c = torch.zeros((M, N), device=a.device, dtype=torch.float32)
    grid = lambda META: (min(num_sms(torch.cuda.current_device()), triton.cdiv(M, META["BLOCK_M"])),)
    splits = math.ceil(K / 256)
    splitk_kernel[grid](a, b.t(), c, M, N, K, a.stride(0), b.stride(1), triton.next_power_of_2(splits))
    c = c + partial.sum(0)
    return c.view(M, N).to(torch.float16).to(a.dtype)
""",
    header=DOC + HEADER,
    entry="",
)


# -- the contract's honest code ------------------------------------------------------------------


def test_seed_passes():
    # (Its speed is measured in benchmarks/test_evaluator_cost.py, never asserted here: a timing in a
    # test fails on a busy machine, as this one did at 5.3 ms against a 5 ms bound.)
    assert check_source(SEED) == []
    assert check_source(SEED, parent_source=SEED) == []


def test_honest_variant_passes():
    assert check_source(HONEST) == []


def test_jit_kernel_may_use_matmul_operator_and_tl_dot():
    src = module("""
    @triton.jit
    def k(x, y):
        z = x @ y
        z @= y
        return tl.dot(x, y)
    """)
    assert check_source(src) == []


# -- rule by rule ----------------------------------------------------------------------------


def test_syntax_error_names_its_line():
    src = "import torch\n\ndef matmul(a, b):\n    return a\n\nx = = 1\n"
    found = check_source(src)
    assert [v.rule for v in found] == ["syntax"]
    assert found[0].line == 6 and "syntax error" in found[0].message


@pytest.mark.parametrize(
    "stmt",
    [
        "import os",
        "import numpy",
        "import numpy as np",
        "from . import x",
        "import triton.runtime",
        "from torch.nn import functional",
        "from __future__ import braces",
        "from math import *",
    ],
)
def test_disallowed_imports(stmt):
    src = module(stmt)
    assert "import" in only(src, "import", stmt).message


@pytest.mark.parametrize(
    "stmt",
    [
        "from triton import language as tl3",
        "from typing import Optional",
        "from __future__ import annotations",
        "import math",
        "import functools",
        "from torch import empty",
        "from triton.language import math as tlm",
    ],
)
def test_allowed_imports(stmt):
    assert check_source(module(stmt)) == []


@pytest.mark.parametrize(
    "expr",
    [
        'getattr(torch, "mat" + "mul")',
        "eval('1')",
        "f = exec",
        "open('/etc/passwd')",
        "vars(a)",
        "globals()",
        "type(a)",
    ],
)
def test_banned_names(expr):
    src = module(f"def f(a):\n    {expr}")
    found = check_source(src)
    v = next(v for v in found if v.rule == "banned-call")
    assert v.line == line_of(src, expr) and "not available" in v.message
    assert all(v.line == line_of(src, expr) for v in found)


@pytest.mark.parametrize(
    "expr",
    [
        "__builtins__",
        "a.__class__",
        "torch.Tensor.__matmul__",
        "torch._C",
        "torch._scaled_mm",
        "a._foo",
        "__name__",
    ],
)
def test_dunder_and_private(expr):
    src = module(f"def f(a):\n    return {expr}")
    v = only(src, "dunder", expr)
    assert "dunder" in v.message or "private" in v.message


def test_dunder_defs():
    src = module("def __getattr__(name):\n    return name")
    assert only(src, "dunder", "__getattr__").rule == "dunder"


@pytest.mark.parametrize(
    "expr",
    [
        "torch.matmul(a, b)",
        "torch.tensordot(a, b, 1)",
        "a.mm(b)",
        "a.addmm_(a, b)",
        "torch.nn.functional.linear(a, b)",
        "torch.ops.aten.mm(a, b)",
        "torch.Tensor.matmul(a, b)",
        "torch.einsum('ij,jk', a, b)",
        "a @ b",
    ],
)
def test_library_matrix_products(expr):
    src = module(f"def f(a, b):\n    return {expr}")
    v = only(src, "matrix-product", expr)
    assert "matrix product" in v.message and "Triton kernel" in v.message


def test_matrix_product_aliases_and_entry_point():
    src = module("m = torch.matmul")
    assert "torch.matmul" in only(src, "matrix-product", "m = ").message
    src = module("from torch import matmul as mm2")
    assert only(src, "matrix-product", "import matmul").line == 6
    src = HEADER + "def matmul(a, b):\n    c = a\n    c @= b\n    return a @ b\n"
    found = check_source(src)
    assert [(v.rule, v.line) for v in found] == [("matrix-product", 8), ("matrix-product", 9)]


def test_torch_inside_jit_is_still_checked():
    src = module("@triton.jit\ndef k(x, y):\n    return torch.matmul(x, y)")
    assert only(src, "matrix-product", "torch.matmul").rule == "matrix-product"


@pytest.mark.parametrize(
    "expr",
    [
        "torch.cuda.Stream()",
        "torch.cuda.synchronize()",
        "a.record_event()",
        "torch.cuda.CUDAGraph()",
        "s.synchronize()",
    ],
)
def test_streams_and_syncs(expr):
    src = module(f"def f(a, s):\n    {expr}")
    found = check_source(src)
    if expr == "a.record_event()":  # not a stream name: allowed
        assert found == []
        return
    assert "streams" in only(src, "stream", expr).message


@pytest.mark.parametrize(
    "expr, word",
    [
        ("torch.backends", "torch.backends"),
        ("triton.runtime", "triton.runtime"),
        ("triton.knobs.x", "triton.knobs"),
        ("torch.library", "torch.library"),
        ("typing.sys.modules", "sys"),
        ("torch.sum(a)", "torch.sum"),
        ("a.tolist()", "tolist"),
        ("a.numpy()", "numpy"),
        ("a.item()", "item"),
        ("k.fn(a, a)", "fn"),
        ("tl.core", "triton.language.core"),
        ("torch", "module"),
        ("tl", "module"),
        ("f(torch)", "module"),
        ("typing.get_type_hints(f)", "typing.get_type_hints"),
    ],
)
def test_module_attributes(expr, word):
    src = module(f"def f(a, k):\n    return {expr}", header="import typing\n" + HEADER)
    assert word in only(src, "module-attr", f"return {expr}").message


def test_allowed_module_attributes():
    src = module("""
    def f(a):
        n = torch.cuda.get_device_properties(a.device).multi_processor_count
        x = torch.empty_strided((2, 2), (2, 1), device=a.device, dtype=torch.bfloat16)
        return n, x, torch.finfo(torch.float16).max, torch.float16.itemsize, a.storage_offset(), tl.float32
    """)
    assert check_source(src) == []


@pytest.mark.parametrize(
    "stmt",
    [
        "torch.matmul = f",
        "tl.dot = f",
        "triton.language.dot = f",
        "torch.cuda.x += 1",
        "del torch.empty",
        "torch = f",
        "tl = f",
    ],
)
def test_monkeypatching(stmt):
    src = module(f"def g(f):\n    {stmt}")
    v = only(src, "module-assign", stmt)
    assert "monkeypatch" in v.message or "rebinding" in v.message


def test_global_of_module_alias():
    src = module("def g():\n    global torch")
    assert {(v.rule, v.line) for v in check_source(src)} == {("module-assign", 7), ("state", 7)}


@pytest.mark.parametrize(
    "stmt",
    [
        "print(1)",
        "if True:\n    X = 1",
        "for i in range(2):\n    pass",
        "X = make()",
        "X = torch.empty(3)",
        "X += 1",
        "torch.float16",
    ],
)
def test_toplevel_code(stmt):
    src = module(stmt)
    assert "import" in only(src, "toplevel", stmt.splitlines()[0]).message


def test_toplevel_decorator_args_are_restricted():
    src = module("@triton.autotune(configs=get_configs(), key=[])\n@triton.jit\ndef k(x):\n    pass")
    assert "get_configs" in only(src, "toplevel", "get_configs").message


@pytest.mark.parametrize("deco", ["@staticmethod", "@torch.compile", "@functools.wraps(g)"])
def test_other_decorators(deco):
    src = module(f"import functools\n\n\n{deco}\ndef k(x):\n    pass")
    found = check_source(src)
    assert found and all(v.line == line_of(src, deco) for v in found)
    assert "decorator" in [v.rule for v in found]


def test_try_and_async():
    src = module("def f(a):\n    try:\n        return a\n    except Exception:\n        return a")
    assert "exceptions may not be caught" in only(src, "try", "try:").message
    src = module("async def f(a):\n    await a")
    assert [(v.rule, v.line) for v in check_source(src)] == [("async", 6), ("async", 7)]


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "\n\ndef matmul(a, b, c):\n    return a\n",
        "\n\ndef matmul(a, *b):\n    return a\n",
        "\n\n@functools.cache\ndef matmul(a, b):\n    return a\n",
        "\n\ndef matmul(a, b):\n    return a\n\n\nmatmul = 1\n",
    ],
)
def test_entry_point(entry):
    src = module("import functools", entry=entry)
    found = [v for v in check_source(src) if v.rule == "entry-point"]
    assert len(found) == 1 and "matmul" in found[0].message
    assert found[0].line == (1 if not entry else line_of(src, "matmul = 1" if "= 1" in entry else "matmul"))


# -- EVOLVE-BLOCK ------------------------------------------------------------------------------


def test_evolve_block_edit_inside_is_fine():
    child = SEED.replace("BLOCK_M=32, BLOCK_N=64", "BLOCK_M=16, BLOCK_N=128")
    assert child != SEED and check_source(child, parent_source=SEED) == []
    grown = SEED.replace("# EVOLVE-BLOCK-END", "\n\ndef extra():\n    return 1\n# EVOLVE-BLOCK-END")
    assert check_source(grown + "\n\n   \n", parent_source=SEED) == []


def test_evolve_block_edit_outside_is_reported():
    # trailing spaces inside a region are no edit; the module's docstring is outside every region
    child = SEED.replace("    return c\n", "    return c  \n").replace(
        "Seed kernel: a tiled", "Seed kernel: a fast tiled"
    )
    v = only(child, "evolve-block", "a fast tiled", parent_source=SEED)
    assert "outside the EVOLVE-BLOCK" in v.message


def test_evolve_block_markers_removed_or_unbalanced():
    child = SEED.replace("    # EVOLVE-BLOCK-END\n", "")  # the entry point's region is never closed
    v = only(child, "evolve-block", "    # EVOLVE-BLOCK-START")
    assert "no matching" in v.message
    dropped = "".join(line for line in SEED.splitlines(True) if "# EVOLVE-BLOCK-" not in line)
    assert [v.rule for v in check_source(dropped, parent_source=SEED)] == ["evolve-block"]
    double_end = SEED + "# EVOLVE-BLOCK-END\n"
    v = check_source(double_end)[0]
    assert v.rule == "evolve-block" and v.line == len(double_end.splitlines()) and "unbalanced" in v.message


# -- output ------------------------------------------------------------------------------------


def test_all_violations_sorted_and_deduplicated():
    src = (
        "import os\nimport torch\n\n\ndef matmul(a, b):\n    return torch.matmul(a, b) + torch.matmul(a, b)\n"
    )
    found = check_source(src)
    assert [(v.line, v.rule) for v in found] == [(1, "import"), (6, "matrix-product")]


def test_feedback_formatting_and_truncation():
    vs = [Violation(i, "import", f"line {i}: bad {i}") for i in range(1, 9)]
    text = feedback(vs, limit=3)
    assert "line 1: bad 1" in text and "line 3: bad 3" in text and "line 4:" not in text
    assert text.splitlines()[-1] == "+5 more"
    assert "+" not in feedback(vs[:2])
    assert feedback([]) == "static checks passed"


def test_jit_decorator_arguments_are_plain_python():
    """A heuristics lambda sees the real tensors, so `@` there is a host-side matrix product."""
    src = module(
        '@triton.heuristics({"X": lambda args: args["a"] @ args["b"]})\n@triton.jit\ndef k(x):\n    pass'
    )
    assert "@ operator" in only(src, "matrix-product", "heuristics").message
