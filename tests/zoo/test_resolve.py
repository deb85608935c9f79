"""Naming a model: a preset, a config.json, the directory save_pretrained writes, a [model] table
in a scenario, a hub id in the local cache (and one that is not: a one-line error, no network);
the record that crosses to the case process rebuilds the same model."""
import json

import pytest

from ngl_profile.schema.presets import ScenarioError, default_scenario, load_scenario
from ngl_profile.schema.scenario import CaseSpec, OptimizerCase, Scenario
from ngl_profile.zoo.configs import ModelSpec, spec_from_table
from ngl_profile.zoo.models import MODELS, parameter_count, resolve_model

H, I, L, V = 64, 128, 2, 1000
MISTRAL = dict(model_type="mistral", hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=V, sliding_window=16)
MISTRAL_PARAMS = 2 * V * H + L * (2 * H * H + 2 * H * 32 + 3 * H * I + 2 * H) + H  # 32: 2 KV heads × head_dim 16


def test_published_parameter_counts():
    # the counts the model cards and safetensors indexes publish, against a meta-device build of
    # the embedded config: a wrong width, depth, KV-head count or vocabulary would move them
    published = {"llama-2-7b": 6_738_415_616, "llama-7b": 6_738_415_616, "mistral-7b": 7_241_732_096,
                 "llama-3.1-8b": 8_030_261_248, "llama-3.1-405b": 405_853_388_800, "mixtral-8x7b": 46_702_792_704,
                 "gemma-2-9b": 9_241_705_984}
    assert {k: parameter_count(k) for k in published} == published


def test_every_preset_passes_the_key_check():
    # the embedded configs go through the same check as a user's table: no key transformers ignores
    for spec in MODELS.values():
        table = {"architecture": spec.architecture, "task": spec.task, **spec.config}
        assert spec_from_table(table).config == spec.config


def test_config_file_and_directory(tmp_path):
    from transformers import AutoConfig

    folder = tmp_path / "my-mistral"
    AutoConfig.for_model(**MISTRAL).save_pretrained(folder)  # what save_pretrained writes: config.json
    by_dir, by_file = resolve_model(str(folder)), resolve_model(str(folder / "config.json"))
    for spec in (by_dir, by_file):
        assert spec.name == "my-mistral" and spec.architecture == "mistral"
        assert spec.source == str((folder / "config.json").resolve())
        assert spec.config["sliding_window"] == 16 and "transformers_version" not in spec.config
        assert parameter_count(spec) == MISTRAL_PARAMS
    # hidden 64 / 4 = 16, the nearest power of two
    assert by_dir.default_rank == 16 and by_dir.max_seq_len is None  # rotary: no table to run past


def test_record_round_trip_through_a_case_spec(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(MISTRAL))
    scn = Scenario(name="s", model=str(path), optimizers=[OptimizerCase(name="galore")])
    assert scn.model == "m" and scn.model_config["architecture"] == "mistral"
    spec = CaseSpec(scenario=scn, case=scn.optimizers[0], mode="estimated", device="cpu", target_bytes=1 << 30)
    wire = json.loads(json.dumps(spec.to_dict()))
    record = wire["scenario"]["model_config"]
    assert record["parameters"] == MISTRAL_PARAMS  # what results.json records beside name and architecture
    assert record["low_rank_matrices"]["model.layers.*.mlp.down_proj.weight"] == L * H * I
    path.unlink()  # the case process never reads the file: the record is enough
    back = CaseSpec.from_dict(wire)
    assert back.scenario == scn and back.scenario.model_spec == scn.model_spec
    assert back.hparams["rank"] == 16


def test_old_results_and_case_specs_name_a_preset_only():
    scn = Scenario.from_dict({"name": "s", "model": "tiny"})
    assert scn.model_spec == MODELS["tiny"]
    with pytest.raises(ValueError, match="disagree"):
        Scenario(name="s", model="tiny", model_config=MODELS["llama-60m"].to_record())


def test_a_model_table_in_a_scenario(tmp_path):
    (tmp_path / "s.toml").write_text(
        '[scenario]\nname = "s"\n[model]\nname = "wide"\narchitecture = "llama"\nhidden_size = 128\n'
        'intermediate_size = 256\nnum_hidden_layers = 1\nnum_attention_heads = 2\nvocab_size = 500\n'
        '[[optimizers]]\nname = "adamw"\n')
    scn = load_scenario(str(tmp_path / "s.toml"))
    assert scn.model == "wide" and scn.model_spec.architecture == "llama"
    assert parameter_count(scn.model_spec) == 2 * 500 * 128 + (4 * 128 * 128 + 3 * 128 * 256 + 2 * 128) + 128
    # `config` names a base, the other keys change it; relative paths are the file's
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps(MISTRAL))
    (tmp_path / "t.toml").write_text('[scenario]\nname = "t"\n[model]\nconfig = "base"\nnum_hidden_layers = 1\n'
                                     '[[optimizers]]\nname = "adamw"\n')
    t = load_scenario(str(tmp_path / "t.toml"))
    assert t.model == "base-custom" and t.model_spec.config["num_hidden_layers"] == 1
    assert parameter_count(t.model_spec) == MISTRAL_PARAMS - (2 * H * H + 2 * H * 32 + 3 * H * I + 2 * H)


@pytest.mark.parametrize("table,match", [
    ('architecture = "llama"\nhidden_szie = 64\n', r"llama has no config key 'hidden_szie' \(did you mean 'hidden_size'\?\)"),
    ('architecture = "lama"\n', r"unknown architecture 'lama' .*did you mean llama.*known: .*mistral"),
    ('architecture = "t5"\n', r"'t5' is not a causal-lm model in transformers .*known: .*llama"),
    ('architecture = "llama"\nhidden_size = "wide"\n', r"transformers refuses its config: .*hidden_size"),
    ('architecture = "llama"\nhidden_size = 63\n', r"transformers refuses its config: .*not a multiple"),
    ('config = "tiny"\narchitecture = "llama"\n', r"model must be a table with exactly one of architecture"),
    ('config = "nosuch"\n', r"unknown model 'nosuch'"),
])
def test_table_errors_are_one_line(tmp_path, table, match):
    (tmp_path / "s.toml").write_text(f'[scenario]\nname = "s"\n[model]\n{table}')
    with pytest.raises(ScenarioError, match=match) as e:
        load_scenario(str(tmp_path / "s.toml"))
    assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path / "s.toml"))


def test_model_given_twice_is_an_error(tmp_path):
    (tmp_path / "s.toml").write_text('[scenario]\nname = "s"\nmodel = "tiny"\n[model]\narchitecture = "llama"\n')
    with pytest.raises(ScenarioError, match="given twice"):
        load_scenario(str(tmp_path / "s.toml"))


def _fake_cache(root, repo, config):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/config.json}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text(json.dumps(config))


def test_hub_id_only_from_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"not in the local Hugging Face cache .*\(no network\)") as e:
        resolve_model("ngl-profile-test/absent")
    assert "\n" not in str(e.value)
    _fake_cache(tmp_path, "ngl-profile-test/tiny-mistral", MISTRAL)
    spec = resolve_model("ngl-profile-test/tiny-mistral")
    assert spec.name == "ngl-profile-test/tiny-mistral" and spec.source == "hf-cache:ngl-profile-test/tiny-mistral"
    assert parameter_count(spec) == MISTRAL_PARAMS


def test_a_model_where_a_scenario_is_expected(tmp_path):
    scn = load_scenario("llama-3.1-8b")  # no such scenario file: the model with the default scenario
    assert scn.model == "llama-3.1-8b" and (scn.seq_len, scn.batch_size, scn.dtype) == (256, 1, "bfloat16")
    assert [c.name for c in scn.optimizers][:2] == ["adamw", "adamw8bit"]
    assert default_scenario("gemma-2-9b").attention == "eager"  # no SDPA path in transformers
    assert load_scenario("7b").source.endswith("llama-7b.toml")  # a scenario preset still wins
    with pytest.raises(ScenarioError, match="unknown scenario 'zzz'; presets: .*nor a model"):
        load_scenario("zzz")
    with pytest.raises(ScenarioError, match="no such file or directory"):
        load_scenario(str(tmp_path / "missing.json"))


def test_overriding_the_model_resolves_it_afresh():
    scn = load_scenario("tiny").with_overrides(model="llama-60m")
    assert scn.model_spec == MODELS["llama-60m"]
    with pytest.raises(ValueError, match="attention sdpa is not available for gemma-2-9b"):
        load_scenario("tiny").with_overrides(model="gemma-2-9b")
    assert load_scenario("tiny").with_overrides(model="gemma-2-9b", attention="eager").model == "gemma-2-9b"


def test_record_checks_its_own_fields():
    rec = MODELS["tiny"].to_record()
    with pytest.raises(ValueError, match="unknown key"):
        ModelSpec.from_record({**rec, "extra": 1})
    with pytest.raises(ValueError, match="default_rank must be an integer"):
        ModelSpec.from_record({**rec, "default_rank": 0})
    assert ModelSpec.from_record({**rec, "parameters": 5, "low_rank_matrices": {}}) == MODELS["tiny"]


def test_a_shallower_preset_keeps_its_rank():
    spec = spec_from_table({"num_hidden_layers": 2}, MODELS["llama-1b"])  # the paper's 1b: rank 512
    assert (spec.default_rank, spec.name) == (512, "llama-1b-custom")
    assert spec.description == "llama-1b with num_hidden_layers changed"
    wider = spec_from_table({"hidden_size": 4096, "num_attention_heads": 32}, MODELS["llama-1b"])
    assert wider.default_rank == 1024 and spec_from_table({"hidden_size": 512}, MODELS["llama-1b"]).default_rank == 128
