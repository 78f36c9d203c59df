import pytest

from evolve.config import ConfigError, RunConfig, UsageError, load_run_config


def test_demo_run_file_loads_and_roundtrips():
    config = load_run_config("runs/demo.toml")
    assert config.task == "runs/demo_cpu.toml" and config.proposers[0].kind == "mutator"
    assert RunConfig.from_dict(config.to_dict()) == config
    assert config.replace(max_evals=5, workers=None).max_evals == 5


GOOD = """
[run]
name = "r"
task = "runs/demo_cpu.toml"
[[proposers]]
kind = "mutator"
[population]
islands = 2
"""


@pytest.mark.parametrize(
    "edit, words",
    [
        (('kind = "mutator"', 'kind = "gpt"'), ["proposers[0].kind", "'gpt'", "allowed: mutator"]),
        (('name = "r"', 'name = "r"\nmax_evals = -1'), ["run.max_evals", "non-negative"]),
        (('name = "r"', 'name = "r"\ndevice = "tpu"'), ["run.device", "auto, cpu, cuda"]),
        (('name = "r"', 'name = "r"\nverify_programs = 1.5'), ["run.verify_programs", "non-negative int"]),
        (('name = "r"', 'name = "r"\nfoo = 1'), ["unknown field", "foo"]),
        (("islands = 2", "islands = 2\nbar = 3"), ["population", "bar"]),
        (("islands = 2", "islands = 0"), ["[population]"]),
        (('task = "runs/demo_cpu.toml"', ""), ["run.task"]),
        (("[population]", "[populations]"), ["unknown table"]),
        (('name = "r"', 'name = "r'), ["not valid TOML"]),
    ],
)
def test_bad_run_files_name_the_field(tmp_path, edit, words):
    path = tmp_path / "run.toml"
    path.write_text(GOOD.replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    for word in words:
        assert word in str(info.value)
    assert str(path) in str(info.value)


def test_verification_budgets_reach_the_judge(tmp_path):
    from evolve.runner import eval_options

    path = tmp_path / "run.toml"
    path.write_text(GOOD.replace('name = "r"', 'name = "r"\nverify_programs = 256\nverify_sample_s = 4'))
    options = eval_options(load_run_config(path), "cpu")
    assert (options.verify_programs, options.verify_sample_s) == (256, 4.0)


def test_auto_device_counts_a_joined_clusters_gpus():
    """`device = "auto"` on a driver without a GPU: cuda when the joined Ray cluster has GPUs."""
    import torch

    from evolve.runner import gpu_backend, resolve_device

    assert resolve_device("cpu", cluster_gpus=8) == "cpu" and resolve_device("cuda") == "cuda"
    assert resolve_device("auto", cluster_gpus=2) == "cuda"
    assert resolve_device("auto", cluster_gpus=0) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert gpu_backend(["cuda:NVIDIA H200"] * 3) == "cuda:NVIDIA H200"
    with pytest.raises(
        UsageError, match=r"more than one kind: cuda:NVIDIA H100 \(1 worker\(s\)\), cuda:NVIDIA H200 \(2"
    ):
        gpu_backend(["cuda:NVIDIA H200", "cuda:NVIDIA H100", "cuda:NVIDIA H200"])
