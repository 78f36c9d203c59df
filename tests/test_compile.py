import pytest

from evaluators.compile import (
    CompileCache,
    dot_facts,
    loop_float_flops,
    mma_operand_types,
    precision_problems,
    spin_wait,
    truncate,
)
from evaluators.targets import TARGET_LIMITS, limit_violations, peak_tflops

TTIR_TF32 = "%acc = tt.dot %a, %b, %c, inputPrecision = tf32 : tensor<128x64xf32> * tensor<64x128xf32> -> tensor<128x128xf32>"
TTIR_IEEE = "%acc = tt.dot %a, %b, %c : tensor<64x32xf32> * tensor<32x64xf32> -> tensor<64x64xf32>"
TTIR_F16 = "%acc = tt.dot %a, %b, %c : tensor<64x32xf16> * tensor<32x64xf16> -> tensor<64x64xf32>"


def test_dot_facts_and_strict_fp32():
    facts = {"dots": dot_facts(TTIR_TF32)}
    assert facts["dots"][0]["precision"] == "tf32"
    assert "input_precision=tf32" in precision_problems(facts, "fp32", False)[0]
    assert precision_problems(facts, "fp32", True) == []
    assert precision_problems({"dots": dot_facts(TTIR_IEEE)}, "fp32", False) == []
    assert "f16" in precision_problems({"dots": dot_facts(TTIR_F16)}, "fp32", False)[0]
    assert precision_problems({"dots": dot_facts(TTIR_F16)}, "fp16", False) == []


def test_limits_per_target():
    sm90, sm89 = TARGET_LIMITS["sm_90"], TARGET_LIMITS["sm_89"]
    assert limit_violations(sm90, shared=98304, regs=116, num_warps=8) == []
    assert "shared memory" in limit_violations(sm89, shared=196608, regs=116, num_warps=8)[0]
    assert "registers" in limit_violations(sm90, shared=0, regs=255, num_warps=16)[0]
    assert "threads" in limit_violations(sm90, shared=0, regs=32, num_warps=64)[0]


def test_peaks():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4)
    assert peak_tflops("NVIDIA H100 PCIe", "fp16") == pytest.approx(756.0)
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32", allow_tf32=True) == pytest.approx(156.0)
    assert peak_tflops("Some Unknown GPU", "fp16") is None


def test_cache_roundtrip(tmp_path):
    cache = CompileCache(tmp_path)
    assert cache.get("abc", "sm_90") == {}
    cache.put("abc", "sm_90", {"k1": {"shared": 1}})
    cache.put("abc", "sm_90", {"k2": {"shared": 2}})
    assert CompileCache(tmp_path).get("abc", "sm_90") == {"k1": {"shared": 1}, "k2": {"shared": 2}}
    assert CompileCache(tmp_path).get("abc", "sm_80") == {}


def test_truncate_keeps_both_ends():
    text = "start " + "x" * 5000 + " end"
    out = truncate(text, 300)
    assert out.startswith("start") and out.endswith("end") and len(out) < 400


TTIR_F16_TF32 = "%acc = tt.dot %a, %b, %c, inputPrecision = tf32 : tensor<64x32xf16> * tensor<32x64xf16> -> tensor<64x64xf32>"


def test_dot_precision_is_the_operand_type_when_not_fp32():
    # Triton writes inputPrecision = tf32 on every dot by default; it only means something for fp32.
    assert dot_facts(TTIR_F16_TF32)[0]["precision"] == "f16"
    assert dot_facts(TTIR_TF32)[0]["precision"] == "tf32"


def _while(body: str) -> str:
    return (
        "%c0_i32 = arith.constant 0 : i32\n%c1_i32 = arith.constant 1 : i32\n"
        "scf.while : () -> () {\n" + body + "\n  scf.condition(%14)\n} do {\n  scf.yield\n}\n"
    )


@pytest.mark.parametrize(
    "body,spins",
    [
        # polling: reads that change nothing, in a while loop
        ("%13 = tt.atomic_rmw add, acquire, gpu, %12, %c0_i32, %true : (!tt.ptr<i32>, i32, i1) -> i32", True),
        ("%13 = tt.atomic_cas acquire, gpu, %12, %c1_i32, %c1_i32 : (!tt.ptr<i32>, i32, i32) -> i32", True),
        ("%13 = tt.load %12 {isVolatile = true} : !tt.ptr<i32>", True),
        # taking work from a counter, or a lock: progress, not a wait on another program
        (
            "%13 = tt.atomic_rmw add, acq_rel, gpu, %12, %c1_i32, %true : (!tt.ptr<i32>, i32, i1) -> i32",
            False,
        ),
        ("%13 = tt.atomic_cas acquire, gpu, %12, %c0_i32, %c1_i32 : (!tt.ptr<i32>, i32, i32) -> i32", False),
        ("%13 = tt.load %12 : !tt.ptr<i32>", False),
    ],
)
def test_spin_wait_is_a_while_loop_that_polls(body, spins):
    assert spin_wait(_while(body)) is spins
    # The same op outside a while loop is no wait.
    assert spin_wait("%c0_i32 = arith.constant 0 : i32\n" + body) is False


TTIR_F8 = (
    "%a8 = tt.fp_to_fp %a, rounding = rtne : tensor<64x64xbf16> -> tensor<64x64xf8E4M3FN>\n"
    "%acc = tt.dot %a8, %b8, %c, inputPrecision = tf32 {maxNumImpreciseAcc = 1073741824 : i32} : "
    "tensor<64x64xf8E4M3FN> * tensor<64x64xf8E4M3FN> -> tensor<64x64xf32>"
)
TTIR_F16_ACC = "%acc = tt.dot %a, %b, %c : tensor<64x32xf16> * tensor<32x64xf16> -> tensor<64x64xf16>"
TTIR_TF32X3 = "%acc = tt.dot %a, %b, %c, inputPrecision = tf32x3 : tensor<64x32xf32> * tensor<32x64xf32> -> tensor<64x64xf32>"
TTIR_EPILOGUE = "%c = arith.truncf %acc : tensor<64x64xf32> to tensor<64x64xbf16>"


def _facts(ttir: str) -> dict:
    from evaluators.compile import narrowing_facts

    return {"dots": dot_facts(ttir), "narrowed_to": narrowing_facts(ttir)}


@pytest.mark.parametrize(
    "ttir,dtype,phrases",
    [
        (
            TTIR_F8,
            "bf16",
            ["f8E4M3FN x f8E4M3FN operands: narrower than the task's bf16", "rounded to f8E4M3FN"],
        ),
        (TTIR_F16, "bf16", ["f16 x f16 operands: narrower than the task's bf16"]),
        (TTIR_F16_ACC, "fp16", ["accumulating in f16"]),
        (TTIR_EPILOGUE.replace("bf16>", "f16>"), "bf16", ["rounded to f16"]),
        (TTIR_EPILOGUE, "fp16", ["rounded to bf16"]),  # bf16 keeps fp16's range, not its mantissa
    ],
)
def test_precision_below_the_task_is_named(ttir, dtype, phrases):
    problems = " | ".join(precision_problems(_facts(ttir), dtype, False))
    for phrase in phrases:
        assert phrase in problems, problems


@pytest.mark.parametrize(
    "ttir,dtype,allow_tf32",
    [
        (TTIR_F16 + "\n" + TTIR_EPILOGUE.replace("bf16>", "f16>"), "fp16", False),  # the seed on fp16
        (TTIR_EPILOGUE + "\n" + "%d = tt.dot %a, %b, %c : tensor<64x32xbf16> * tensor<32x64xbf16> -> tensor<64x64xf32>",
         "bf16", False),
        (TTIR_TF32X3, "fp32", False),  # 3xTF32 is fp32-accurate
        (TTIR_TF32, "fp32", True),
    ],
)  # fmt: skip
def test_the_tasks_own_precision_passes(ttir, dtype, allow_tf32):
    assert precision_problems(_facts(ttir), dtype, allow_tf32) == []


# TTGIR lines as Triton 3.9 prints them for sm_90 (shortened: the layouts and locations cut).
K_LOOP_TTGIR = """
    %acc:3 = scf.for %k = %c0_i32 to %n step %c1_i32 iter_args(%acc_1 = %cst) -> (tensor<128x64xf32, #mma>) : i32 {
      %a_0 = ttg.async_copy_global_to_local %a_ptrs, %a_buf mask %m other %z {contiguity = 16 : i32} : tensor<128x128x!tt.ptr<f8E4M3FN>, #blocked1> -> <128x128xf8E4M3FN, #shared, #smem, mutable>
      %d = ttng.warp_group_dot %a_1, %b_1, %cst {inputPrecision = 0 : i32, isAsync = true} : !ttg.memdesc<128x128xf8E4M3FN, #shared, #smem, mutable> * !ttg.memdesc<128x64xf8E4M3FN, #shared1, #smem, mutable> -> tensor<128x64xf32, #mma>
      %s1 = arith.mulf %d, %as : tensor<128x64xf32, #mma>
      %s2 = arith.mulf %s1, %bs : tensor<128x64xf32, #mma>
      %s3 = arith.addf %acc_1, %s2 : tensor<128x64xf32, #mma>
      %p = arith.addi %k, %c1_i32 : i32
      %q = scf.if %cond -> (f32) {
        %r = math.fma %x, %y, %z : f32
        scf.yield %r : f32
      } else {
        scf.yield %x : f32
      }
      scf.yield %s3 : tensor<128x64xf32, #mma>
    } loc(#loc1)
    %out = arith.truncf %acc#0 : tensor<128x64xf32, #mma> to tensor<128x64xbf16, #mma>
"""
MMA_SYNC_TTGIR = """
    %r = scf.for %k = %c0 to %n step %c1 iter_args(%acc = %cst) -> (tensor<16x32xf32, #mma>) : i32 {
      %d = tt.dot %a, %b, %acc, inputPrecision = tf32 : tensor<16x128xf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 4}>> * tensor<128x32xf16, #ttg.dot_op<{opIdx = 1, parent = #mma, kWidth = 4}>> -> tensor<16x32xf32, #mma>
      scf.yield %d : tensor<16x32xf32, #mma>
    }
"""


def test_compiled_dot_types_and_the_k_loop_float_work():
    """The rate a dot runs at is its lowered operand type (an fp8 dot on the mma.sync path is f16 in
    the TTGIR); the K loop's float work besides the dot is counted over elements, as compiled."""
    assert mma_operand_types(K_LOOP_TTGIR) == ["f8E4M3FN"]
    assert mma_operand_types(MMA_SYNC_TTGIR) == ["f16"]
    # two multiplies and an add over 128x64 elements, and one scalar fma (2 flops) in a nested if;
    # integer address arithmetic and the truncf after the loop are not the loop's float work
    assert loop_float_flops(K_LOOP_TTGIR) == 3 * 128 * 64 + 2
    assert loop_float_flops(MMA_SYNC_TTGIR) == 0  # acc = tl.dot(a, b, acc): the MMA accumulates
    assert loop_float_flops(K_LOOP_TTGIR.replace("warp_group_dot", "local_load")) == 0  # no dot, no K loop
