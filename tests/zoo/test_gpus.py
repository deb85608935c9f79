"""The GPU catalog, memory sizes given as the GPU, and what a card without figures does downstream."""
import subprocess
import sys
from types import SimpleNamespace

import pytest

from ngl_profile.engine.throughput import roofline_projection
from ngl_profile.schema.results import RunResult, load_results, write_json_atomic
from ngl_profile.schema.scenario import Scenario
from ngl_profile.zoo.gpus import GPUS, get_gpu, gpu_names, match_device_name


def test_every_card_has_its_figures_and_a_source():
    for name in gpu_names():
        g = GPUS[name]
        assert g.source and g.memory_bytes >= 8 << 30 and g.bf16_tflops > 0 and g.bandwidth_gbs > 0, g
        assert get_gpu(g.name) is g and all(get_gpu(a) is g for a in g.aliases)


@pytest.mark.parametrize("alias,name", [("3060", "rtx-3060"), ("4080", "rtx-4080"), ("4070", "rtx-4070"),
                                        ("4060-ti-16gb", "rtx-4060-ti-16gb"), ("4070-ti-super", "rtx-4070-ti-super"),
                                        ("mi300x", "mi300x"), ("MI300X", "mi300x"), ("b200", "b200"),
                                        ("6000-ada", "rtx-6000-ada"), ("v100", "v100-32gb"),
                                        ("a100-pcie", "a100-pcie")])
def test_aliases(alias, name):
    assert get_gpu(alias).name == name


def test_derived_geforce_figures_follow_the_whitepaper_columns_rate():
    """The derived GeForce entries use 128 FLOP/clock per tensor core (fp16/bf16 with fp32 accumulate);
    the whitepaper columns that NVIDIA does print agree with that rate: cores × boost GHz × 128."""
    printed = {"rtx-3090": (328, 1.695), "rtx-3080": (272, 1.71), "rtx-4090": (512, 2.52), "rtx-4080": (304, 2.505)}
    for name, (cores, ghz) in printed.items():
        assert GPUS[name].bf16_tflops == pytest.approx(cores * ghz * 128 / 1e3, rel=5e-3), name


@pytest.mark.parametrize("text,name,nbytes", [
    ("20GiB", "custom-20GiB", 20 * 2**30), ("20 GiB", "custom-20GiB", 20 * 2**30),
    ("24GB", "custom-24GB", 24 * 10**9), ("16gb", "custom-16GB", 16 * 10**9),
    ("12.5GiB", "custom-12.5GiB", 13_421_772_800), ("12.50 gib", "custom-12.5GiB", 13_421_772_800),
    ("1e3GB", "custom-1000GB", 10**12), ("custom-20GiB", "custom-20GiB", 20 * 2**30)])
def test_a_memory_size_is_a_custom_card(text, name, nbytes):
    g = get_gpu(text)
    assert (g.name, g.memory_bytes, g.bf16_tflops, g.bandwidth_gbs) == (name, nbytes, None, None)
    assert get_gpu(g.name) == g  # results files store the name: it must come back as the same card


@pytest.mark.parametrize("text,message", [
    ("0GB", "'0GB': must be more than 0"), ("-3GiB", "'-3GiB': must be more than 0"),
    ("1e99GB", "'1e99GB': more than 64 TiB"), ("20 parsecs", "unit 'parsecs' is not GB or GiB"),
    ("0.0000001GB", "less than 1 MiB"), ("24", "a memory size needs its unit: 24GB or 24GiB"),
    ("custom-big", "expected a number and GB or GiB"), ("gtx-480", "unknown GPU 'gtx-480'")])
def test_bad_sizes_are_one_line_errors(text, message):
    with pytest.raises(ValueError) as e:
        get_gpu(text)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("device,name", [
    ("NVIDIA GeForce RTX 4070 Ti SUPER", "rtx-4070-ti-super"), ("NVIDIA GeForce RTX 4070", "rtx-4070"),
    ("NVIDIA L40S", "l40s"), ("NVIDIA L4", "l4"), ("NVIDIA A10", "a10"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie"), ("NVIDIA RTX A6000", "a6000"),
    ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"), ("NVIDIA GeForce RTX 4080 SUPER", "rtx-4080-super"),
    ("AMD Instinct MI300X", "mi300x"), ("Tesla V100-SXM2-32GB", "v100-32gb"), ("NVIDIA B200", "b200"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA GeForce GTX 1080", None)])
def test_device_names_find_the_most_specific_card(device, name):
    g = match_device_name(device)
    assert (g and g.name) == name


def test_a_scenario_keeps_a_size_that_round_trips():
    scn = Scenario(name="s", model="tiny", gpu="20 GiB")
    assert scn.gpu == "custom-20GiB"
    assert Scenario.from_dict(scn.to_dict()).gpu == "custom-20GiB"
    assert scn.with_overrides(gpu="16gb").gpu == "custom-16GB"
    with pytest.raises(ValueError, match="must be more than 0"):
        scn.with_overrides(gpu="0GB")


def test_no_figures_no_projection():
    """The roofline needs TFLOP/s and bandwidth: without them tokens/s is n/a, not a number."""
    mem = dict.fromkeys(("weights", "grads", "moments", "quant_stats", "projectors", "history"), 10**9)
    result = SimpleNamespace(step_flops=6e12, memory_bytes=mem, projected={"stale": 1})
    roofline_projection(result, get_gpu("24GB"), tokens=2048)
    assert result.projected is None
    roofline_projection(result, get_gpu("4090"), tokens=2048)
    t = 6e12 / 165.2e12 + 2 * 6e9 / 1008e9  # FLOPs at peak, plus state read and written at full bandwidth
    assert result.projected["tokens_per_s_upper_bound"] == pytest.approx(2048 / t)


def test_a_results_file_with_a_custom_card_loads(tmp_path):
    g = get_gpu("12.5GiB")
    run = RunResult(scenario={"name": "s", "model": "tiny", "seq_len": 8, "batch_size": 1, "dtype": "bfloat16"},
                    gpu={"name": g.name, "memory_bytes": g.memory_bytes, "bf16_tflops": None, "bandwidth_gbs": None,
                         "source": g.source}, mode="estimated", device="cpu", environment={})
    write_json_atomic(tmp_path / "results.json", run.to_dict())
    loaded = load_results(tmp_path)
    assert loaded.gpu["bf16_tflops"] is None and get_gpu(loaded.gpu["name"]) == g


def test_list_gpus_says_a_size_works():
    r = subprocess.run([sys.executable, "-m", "ngl_profile.cli", "list", "gpus"], capture_output=True, text=True,
                       timeout=120, env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "rtx-3060" in text and "mi300x" in text and "a memory size also works: 20GiB, 24GB" in text
