"""Scenario files: presets, precedence, and validation errors that name file, key and range."""
import pytest

from ngl_profile.schema.presets import ScenarioError, load_scenario, preset_names


def write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return str(p)


HEAD = '[scenario]\nname = "x"\nmodel = "tiny"\n'


def test_presets_resolve():
    assert {"tiny", "llama-7b", "llama-1b", "llama-60m"} <= set(preset_names())
    s = load_scenario("7b")
    assert s.model == "llama-7b" and s.gpu == "rtx-4090"
    names = [c.name for c in s.optimizers]
    for required in ("adamw", "adamw8bit", "galore-8bit-layerwise", "natural-galore", "lora"):
        assert required in names
    assert load_scenario("tiny").model == "tiny"


@pytest.mark.parametrize("text,match", [
    (HEAD.replace("tiny", "gpt5"), r"unknown model 'gpt5'; known: tiny, llama-60m"),
    (HEAD + 'gpu = "rtx-9999"\n', r"unknown GPU 'rtx-9999'; known: .*rtx-3090.*; a memory size also works"),
    (HEAD + "seq_len = 0\n", r"\[scenario\] seq_len must be an integer in \[1, 1048576\]; got 0"),
    (HEAD + 'batch_size = "two"\n', r"batch_size must be an integer in \[1, 65536\]; got 'two'"),
    (HEAD + 'dtype = "float16"\n', r"dtype must be one of bfloat16, float32"),
    (HEAD + "colour = 3\n", r"\[scenario\] has unknown key\(s\) colour; allowed:"),
    (HEAD + '[[optimizers]]\nname = "sgd"\n', r"entry 1: name: unknown optimizer 'sgd'; known: adamw"),
    (HEAD + '[[optimizers]]\nname = "adamw"\nrank = 3\n', r"optimizer 'adamw' takes no rank"),
    (HEAD + '[[optimizers]]\nname = "natural-galore"\nhistory_size = -1\n', r"history_size must be an integer in \[0, 4096\]"),
    (HEAD + '[[optimizers]]\nname = "natural-galore"\nhistory_dtype = "fp4"\n', r"history_dtype must be one of"),
    (HEAD + '[[optimizers]]\nname = "adamw"\n[[optimizers]]\nname = "adamw"\n', r"label 'adamw' appears twice"),
    ("[scenario\nname=", r"not valid TOML"),
    ('[scenario]\nname = "x"\n', r"\[scenario\] needs 'model'"),
    (HEAD + "[extra]\n", r"unknown table\(s\) extra"),
])
def test_validation_errors_name_the_problem(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=match) as e:
        load_scenario(path)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(str(tmp_path / "nope.toml"))
    with pytest.raises(ScenarioError, match="unknown scenario 'zzz'; presets:"):
        load_scenario("zzz")


def test_cli_overrides_beat_the_file(tmp_path):
    s = load_scenario(write(tmp_path, HEAD + 'gpu = "a100"\n[[optimizers]]\nname = "adamw"\n'))
    assert s.gpu == "a100-80gb"
    assert s.with_overrides(gpu="4090").gpu == "rtx-4090"
    assert [c.name for c in s.select(["adamw", "lora"]).optimizers] == ["adamw", "lora"]


def test_precision_and_dtype_name_one_thing_and_must_agree():
    from ngl_profile.schema.scenario import Scenario

    assert Scenario(name="a", model="tiny", precision="mixed-bf16").dtype == "float32"
    assert Scenario(name="a", model="tiny", precision="bf16-fp32-state").dtype == "bfloat16"
    assert Scenario(name="a", model="tiny", dtype="float32").precision == "fp32"
    assert (Scenario(name="a", model="tiny").precision, Scenario(name="a", model="tiny").dtype) == ("bf16", "bfloat16")
    with pytest.raises(ValueError, match="dtype bfloat16 contradicts precision mixed-bf16"):
        Scenario(name="a", model="tiny", dtype="bfloat16", precision="mixed-bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        Scenario(name="a", model="tiny", precision="fp8")


def test_an_override_of_one_half_replaces_the_files_other_half():
    from ngl_profile.schema.scenario import Scenario

    file = Scenario(name="a", model="tiny", dtype="bfloat16")
    mixed = file.with_overrides(precision="mixed-bf16")
    assert (mixed.precision, mixed.dtype) == ("mixed-bf16", "float32")
    fp32 = Scenario(name="a", model="tiny", precision="bf16").with_overrides(dtype="float32")
    assert (fp32.precision, fp32.dtype) == ("fp32", "float32")
    assert Scenario.from_dict(mixed.to_dict()) == mixed


def test_attention_choices_and_flash_needs_bf16_compute():
    from ngl_profile.schema.scenario import Scenario

    assert Scenario(name="a", model="tiny", attention="eager").attention == "eager"
    with pytest.raises(ValueError, match="attention must be one of sdpa, eager, flash_attention_2"):
        Scenario(name="a", model="tiny", attention="flash3")
    with pytest.raises(ValueError, match="flash_attention_2 needs bf16 compute"):
        Scenario(name="a", model="tiny", attention="flash_attention_2", precision="fp32")
    assert Scenario(name="a", model="tiny", attention="flash_attention_2", precision="mixed-bf16")
    with pytest.raises(ValueError, match="code_paths must be gpu or cpu"):
        Scenario(name="a", model="tiny", code_paths="tpu")
