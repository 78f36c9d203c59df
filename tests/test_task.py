import pytest

from evaluators.task import Task, TaskError, load_task, parse_shapes


def test_shipped_tasks_load():
    demo = load_task("runs/demo_cpu.toml")
    assert demo.dtype == "bf16" and demo.target == "sm_90"
    assert any(all(d > 256 and d % 16 for d in shape) for shape in demo.check)
    llm = load_task("runs/llm_bf16.toml")
    assert {m for m, _, _ in llm.train} == {1, 8, 16, 4096, 8192, 16384}
    assert {(n, k) for _, n, k in llm.train} == {(6144, 4096), (4096, 4096), (14336, 4096), (4096, 14336)}
    assert all(5120 in (n, k) for _, n, k in llm.held_out)
    assert set(llm.layouts) == {"nn", "nt", "tn"}


def _write(tmp_path, text):
    path = tmp_path / "task.toml"
    path.write_text(text)
    return path


GOOD = """
[task]
name = "t"
dtype = "fp32"
layouts = ["nn"]
[shapes]
train = [[64, 64, 64]]
check = [[16, 16, 16]]
"""


@pytest.mark.parametrize(
    "edit, words",
    [
        (('dtype = "fp32"', 'dtype = "fp8"'), ["task.toml", "'dtype'", "fp16, bf16, fp32"]),
        (('layouts = ["nn"]', 'layouts = ["nx"]'), ["'layouts'", "nn, nt, tn"]),
        (("train = [[64, 64, 64]]", "train = [[64, 64]]"), ["'train' entry 0", "[M, N, K]"]),
        (("train = [[64, 64, 64]]", "train = [[64, -1, 64]]"), ["'train'", "positive"]),
        (('name = "t"', 'name = "t"\nfoo = 1'), ["unknown field", "foo"]),
        (('dtype = "fp32"', 'dtype = "bf16"\nallow_tf32 = true'), ["allow_tf32", "fp32 only"]),
        (("[shapes]", "[shapez]"), ["[shapes]"]),
        (('name = "t"', 'name = "t'), ["not valid TOML", "line"]),
        (("check = [[16, 16, 16]]", ""), ["missing field 'check'"]),
        (
            ('name = "t"', 'name = "t"\nfresh = -1'),
            ["task.toml", "'fresh'", "from 0 to 9", "0 turns them off"],
        ),
        (('name = "t"', 'name = "t"\nfresh = true'), ["'fresh' is True", "an integer"]),
    ],
)
def test_bad_task_files_name_file_field_and_fix(tmp_path, edit, words):
    path = _write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(TaskError) as info:
        load_task(path)
    for word in words:
        assert word in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TaskError, match="no such task file"):
        load_task(tmp_path / "absent.toml")


def test_defaults_and_roundtrip(tmp_path):
    task = load_task(_write(tmp_path, GOOD))
    assert task.allow_tf32 is False and task.trials == 3 and task.held_out == ()
    assert Task.from_dict(task.to_dict()) == task


def test_overrides():
    task = load_task("runs/demo_cpu.toml")
    assert task.with_dtype("fp16").dtype == "fp16"
    with pytest.raises(TaskError, match="dtype"):
        task.with_dtype("int8")
    assert parse_shapes("1,2,3; 4,5,6") == ((1, 2, 3), (4, 5, 6))
    with pytest.raises(TaskError, match="M,N,K"):
        parse_shapes("1,2")
    assert task.with_check_shapes(((8, 8, 8),)).check == ((8, 8, 8),)
