"""Static rules that keep calls independent of where and how often they run
(evaluators/independence_rules.py): placement, state across calls, caches. Each rule has
rejecting examples (caught on their line, with the reason) and accepting ones."""

from __future__ import annotations

import textwrap

import pytest

from evaluators.static_rules import Violation, check_source

HEADER = "import functools\nimport torch\nimport triton\nimport triton.language as tl\n\n\n"
ENTRY = "\n\ndef matmul(a, b):\n    return a\n"
ONLY_SHAPES = "launches may depend only on shapes, strides, dtypes and the target's properties"


def module(body: str) -> str:
    return HEADER + textwrap.dedent(body).strip("\n") + "\n" + ENTRY


def line_of(source: str, needle: str) -> int:
    return next(i for i, text in enumerate(source.splitlines(), 1) if needle in text)


def rule_hits(source: str, rule: str) -> list[Violation]:
    return [v for v in check_source(source) if v.rule == rule]


def one(source: str, rule: str, needle: str) -> Violation:
    """Exactly one violation in all, of `rule`, on the line holding `needle`."""
    found = check_source(source)
    assert len(found) == 1, found
    assert found[0].rule == rule and found[0].line == line_of(source, needle), found[0]
    return found[0]


# -- placement ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "a.is_cuda",
        "a.is_meta",
        "a.is_cpu",
        "a.is_xpu",
        "a.is_mps",
        "a.data_ptr() == 0",
        "a.get_device()",
        "a.is_pinned()",
        "a.requires_grad",
        "a.grad_fn is None",
        "torch.cuda.is_available()",
        "torch.Tensor.data_ptr(a)",
    ],
)
def test_placement_attributes_are_rejected(expr):
    src = module(f"def f(a):\n    if {expr}:\n        return 1\n    return 2")
    v = one(src, "placement", expr)
    assert "tells where or how the call runs" in v.message and ONLY_SHAPES in v.message


@pytest.mark.parametrize(
    "expr",
    [
        "a.device.type == 'meta'",
        "a.device.index",
        "a.device == torch.device('meta')",
        "str(a.device)",
        "torch.device(a.device)",
        "g(device=a.device)",
        "dict(device=a.device)",
    ],
)
def test_device_read_outside_allocation_is_rejected(expr):
    src = module(f"def g(device):\n    return device\n\n\ndef f(a):\n    return {expr}")
    found = rule_hits(src, "placement")
    assert found and all(v.line == line_of(src, expr) for v in found), found
    assert any(
        "reads the device" in v.message and "must not depend on the device" in v.message for v in found
    )


def test_device_passed_to_allocations_and_queries_is_allowed():
    src = module("""
    def f(a, b):
        assert a.device == b.device
        c = torch.empty((2, 2), device=a.device, dtype=a.dtype)
        z = torch.zeros_like(c, device=b.device)
        props = torch.cuda.get_device_properties(a.device)
        major, minor = torch.cuda.get_device_capability(a.device)
        return c, z, props.multi_processor_count, a.storage_offset(), a.stride(0), a.is_contiguous()
    """)
    assert check_source(src) == []


@pytest.mark.parametrize(
    "expr",
    ["str(a)", "repr(a)", "f'{a}'", "'%s' % (a,)", "'{}'.format(a)", "a.type()", "''.join(map(str, [a]))"],
)
def test_text_of_a_value_is_rejected_outside_messages(expr):
    src = module(f"def f(a):\n    s = {expr}\n    return 'meta' in s")
    v = one(src, "placement", expr)
    assert ONLY_SHAPES in v.message


def test_text_in_assert_and_raise_messages_and_jit_type_are_allowed():
    src = module("""
    def f(a, b):
        assert a.shape[1] == b.shape[0], f"inner dimensions differ: {a.shape} {b}"
        if str(a.dtype) != "torch.float16" or repr(a.shape) == "":
            return b
        if a.dim() != 2:
            raise ValueError(f"expected a matrix, got {a}")
        return a


    @triton.jit
    def k(c_ptr):
        tl.store(c_ptr, tl.zeros((16,), dtype=c_ptr.type.element_ty))
    """)
    assert check_source(src) == []


# -- state across calls ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stmt, needle",
    [
        ("COUNT['n'] = COUNT.get('n', 0) + 1", "COUNT['n'] ="),
        ("COUNT['n'] += 1", "COUNT['n'] +="),
        ("SEEN.append(1)", "SEEN.append"),
        ("SEEN.extend([1])", "SEEN.extend"),
        ("COUNT.update(n=1)", "COUNT.update"),
        ("COUNT.setdefault('n', 0)", "setdefault"),
        ("del COUNT['n']", "del COUNT"),
        ("f.calls = 1", "f.calls"),
        ("cfg = pick(1)\n        cfg['BLOCK_M'] = 16", "cfg['BLOCK_M']"),
        ("row = SEEN[0]\n        row.append(1)", "row.append"),
        ("a.shape_cache = 1", "a.shape_cache"),
        ("push = SEEN.append\n        push(1)", "SEEN.append"),
    ],
)
def test_changing_what_the_function_did_not_create_is_rejected(stmt, needle):
    src = module(f"""
    COUNT = {{"n": 0}}
    SEEN = [[0]]


    def pick(M: int) -> dict:
        return COUNT


    def f(a):
        {stmt}
        return a
    """)
    v = one(src, "state", needle)
    assert "did not create" in v.message and "calls must be independent" in v.message


def test_tables_read_and_own_containers_changed_are_allowed():
    src = module("""
    CONFIGS = [dict(BLOCK_M=64, num_warps=4), {"BLOCK_M": 128, "num_warps": 8}]
    SIZES = (16, 32)


    def f(a, b):
        cfg = dict(CONFIGS[0])
        cfg["BLOCK_M"] = 32
        cfg.update(num_warps=2)
        hoard = []
        hoard.append(cfg)
        hoard += [SIZES]
        seen = {s for s in SIZES}
        seen.add(3)
        c = torch.zeros((4, 4), device=a.device, dtype=a.dtype)
        c[:, :2] = a
        n = a.shape[0]
        n = n + 1
        total = 0
        total += n
        return c, hoard, seen, total, CONFIGS[-1]["num_warps"]
    """)
    assert check_source(src) == []


@pytest.mark.parametrize(
    "body, needle",
    [
        ("def f(a):\n    global CALLS\n    CALLS = CALLS + 1", "global CALLS"),
        (
            "def f(a):\n    n = 0\n\n    def g():\n        nonlocal n\n        n = n + 1\n    g()",
            "nonlocal n",
        ),
        ("def f(a, seen=[]):\n    return seen", "seen=[]"),
        ("def f(a, it=iter(range(9))):\n    return it", "it=iter"),
        ("TICKS = (i for i in range(10**6))", "TICKS ="),
        ("def f(a):\n    x = SIZES\n    x += [1]", "x += [1]"),
        ("def f(a, xs):\n    xs |= {1}", "xs |="),
    ],
)
def test_state_kept_across_calls_is_rejected(body, needle):
    src = module("SIZES = [1]\nCALLS = 0\n\n\n" + body)
    found = rule_hits(src, "state")
    assert len(found) == 1 and found[0].line == line_of(src, needle), check_source(src)
    assert "calls must be independent" in found[0].message


def test_jit_code_and_constant_defaults_are_allowed():
    src = module("""
    @triton.jit
    def k(a_ptr, K, BLOCK: tl.constexpr = 16):
        offs = tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in range(0, K, BLOCK):
            acc += tl.load(a_ptr + offs)
            a_ptr += BLOCK
        tl.store(a_ptr + offs, acc)


    def f(a, scale=1.0, layout="nn", dims=(1, 2)):
        return tuple(d for d in dims), sum(x * x for x in dims)
    """)
    assert check_source(src) == []


# -- caches ---------------------------------------------------------------------------------------


def test_cached_config_function_of_plain_values_is_allowed():
    src = module("""
    @functools.lru_cache(maxsize=None)
    def pick(M: int, N: int, dtype: str, fast: bool = True) -> dict:
        sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
        return dict(BLOCK_M=triton.next_power_of_2(min(M, 128)), SPLIT=max(1, sms // max(1, N)))


    @functools.cache
    def tiles(M: int, block: int) -> int:
        return triton.cdiv(M, block) + len(pick(M, M, "fp16"))
    """)
    assert check_source(src) == []


@pytest.mark.parametrize(
    "deco, sig, body, needle, phrase",
    [
        ("@functools.cache", "(a)", "return 1", "def k", "parameter a must be annotated int"),
        ("@functools.cache", "(a: torch.Tensor)", "return 1", "def k", "parameter a must be annotated"),
        (
            "@functools.lru_cache(maxsize=8)",
            "(M: int) -> torch.Tensor",
            "return 1",
            "-> torch",
            "returns a torch",
        ),
        ("@functools.cache", "(M: int) -> dict", "return torch.empty(M)", "torch.empty", "calls torch.empty"),
        ("@functools.cache", "(M: int) -> dict", "return helper(M)", "return helper", "calls helper"),
        ("@functools.cache", "(M: int) -> int", "return (i for i in range(M))", "return (i", "a generator"),
        ("@functools.cache", "(M: int) -> int", "yield M", "yield M", "a generator"),
        ("@functools.cache", "(M: int) -> int", "return zip(range(M))", "return zip", "calls zip"),
    ],
)
def test_caching_anything_but_a_pure_config_function_is_rejected(deco, sig, body, needle, phrase):
    src = module(f"def helper(M):\n    return M\n\n\n{deco}\ndef k{sig}:\n    {body}")
    found = rule_hits(src, "cache")
    assert len(found) == 1 and found[0].line == line_of(src, needle), check_source(src)
    assert phrase in found[0].message


@pytest.mark.parametrize(
    "expr",
    ["pick.cache_info().hits", "pick.cache_info", "pick.cache_clear()", "pick.cache_parameters()"],
)
def test_cache_statistics_are_rejected(expr):
    src = module(
        f"@functools.cache\ndef pick(M: int) -> int:\n    return M\n\n\ndef f(a):\n    return {expr}"
    )
    v = one(src, "cache", expr)
    assert "counts calls" in v.message


def test_cache_decorators_only_as_decorators():
    src = module("def f(a):\n    g = functools.lru_cache(maxsize=2)(len)\n    return g")
    v = one(src, "cache", "functools.lru_cache")
    assert "only as a decorator" in v.message


@pytest.mark.parametrize(
    "stmt, needle, phrase",
    [
        ("r = k[(1,)](a)\n    return r is None", "r = k", "result of the launch"),
        ("run = k[(1,)]\n    return run(a) is None", "run = k", "keeps a kernel's launcher"),
        ("return len(k.device_caches[0][0])", "device_caches", "runtime state"),
        ("return k.cache", "k.cache", "runtime state"),
        ("return k.best_config", "best_config", "runtime state"),
        ("k.add_pre_run_hook(len)", "add_pre_run_hook", "runtime state"),
    ],
)
def test_launch_results_and_kernel_runtime_state_are_rejected(stmt, needle, phrase):
    src = module(f"@triton.jit\ndef k(x):\n    pass\n\n\ndef f(a):\n    {stmt}")
    found = check_source(src)
    assert len(found) == 1 and found[0].line == line_of(src, needle), found
    assert phrase in found[0].message


def test_launch_as_a_statement_is_allowed():
    src = module("@triton.jit\ndef k(x):\n    pass\n\n\ndef f(a):\n    k[(1,)](a)\n    return a")
    assert check_source(src) == []


def test_cached_functions_are_passed_plain_values():
    src = module("""
    BLOCK = 64


    @functools.cache
    def pick(M: int, N: int, K: int, dtype: str = "fp16") -> int:
        return M * N


    def launch(a, b, M: int):
        K, N = b.shape
        rows = a.size(0)
        tiles = 0
        for i in range(4):
            tiles = tiles + pick(i, N, K)
        return pick(M, N, K + BLOCK, str(a.dtype)) + pick(rows, a.stride(0), b.shape[1] // 2) + tiles
    """)
    assert check_source(src) == []


@pytest.mark.parametrize("arg", ["b", "b * 0", "a[0, 0]", "x", "max(b, b)", "args['M']"])
def test_cached_function_passed_a_possible_tensor_is_rejected(arg):
    src = module(f"""
    @functools.cache
    def keep(M: int, like: int) -> int:
        return like * 0


    def f(a, b, args):
        x = a + b
        return keep(1, {arg})
    """)
    found = check_source(src)
    assert len(found) == 1 and found[0].rule == "cache" and found[0].line == line_of(src, "return keep"), (
        found
    )
    assert "may be a tensor" in found[0].message
