"""The [quality] table and `ngl-profile train`'s bad input: one line naming the key, exit 2."""
import pytest

from ngl_profile.cli import main
from ngl_profile.quality.config import QualitySpec, load_quality

HEAD = '''[scenario]
name = "q"
seq_len = 32
batch_size = 2
precision = "fp32"

[model]
config = "tiny"
vocab_size = 256

[[optimizers]]
name = "adamw"

[[optimizers]]
name = "natural-galore"
label = "ngl"
rank = 8
history_size = 2
'''


def write(tmp_path, text):
    p = tmp_path / "q.toml"
    p.write_text(text)
    return str(p)


def test_loads_and_overrides(tmp_path):
    scn, spec = load_quality(write(tmp_path, HEAD + '[quality]\nsteps = 7\nlr_grid = [1e-3, 1e-2]\n'
                                              'official_formula = ["ngl"]\n'))
    assert spec.steps == 7 and spec.tune_length == 7 and spec.lr_grid == [1e-3, 1e-2]
    assert scn.model_spec.vocab_size == 256
    assert spec.with_overrides(steps=None, seeds=5).seeds == 5


@pytest.mark.parametrize("table, message", [
    ("", "no [quality] table"),
    ("[quality]\nstep = 3\n", "unknown key(s) step"),
    ("[quality]\nsteps = 0\n", "quality.steps must be an integer in [1, 1000000]"),
    ("[quality]\nlr_grid = [0.1, -1]\n", "quality.lr_grid must be"),
    ("[quality]\nofficial_formula = [\"nope\"]\n", "names 'nope', which is no case's label"),
    ("[quality]\nofficial_formula = [\"adamw\"]\n", "is a natural-galore variant"),
    ('[quality]\nlr_grid = { adamx = [1e-3] }\n', "quality.lr_grid names 'adamx', which is no case's label"),
    ('[quality]\nlr_grid = { adamw = [0] }\n', "quality.lr_grid must be"),
    ('[quality]\nlr_grid = { adamw = 1e-3 }\n', "quality.lr_grid must be"),
])
def test_bad_tables(tmp_path, table, message):
    with pytest.raises(ValueError) as e:
        load_quality(write(tmp_path, HEAD + table))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_refuses_what_it_cannot_train(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be 256, not 1000"):
        load_quality(write(tmp_path, HEAD.replace("vocab_size = 256", "vocab_size = 1000") + "[quality]\n"))
    with pytest.raises(ValueError, match="precision fp32 or bf16, not mixed-bf16"):
        load_quality(write(tmp_path, HEAD.replace('precision = "fp32"', 'precision = "mixed-bf16"') + "[quality]\n"))
    with pytest.raises(ValueError, match="per-layer optimizers and LoRA"):
        load_quality(write(tmp_path, HEAD.replace('name = "adamw"', 'name = "adamw-layerwise"') + "[quality]\n"))


def test_spec_ranges():
    with pytest.raises(ValueError, match="warmup_fraction"):
        QualitySpec(warmup_fraction=1.0)


@pytest.mark.parametrize("argv, message", [
    (["train", "tiny"], "no [quality] table"),
    (["train", "quality-tiny", "--lr-grid", "1e-3,x"], "comma-separated learning rates"),
    (["train", "quality-tiny", "--steps", "0"], "quality.steps must be"),
])
def test_cli_bad_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_grid_per_case_label(tmp_path):
    table = '[quality]\nlr_grid = { adamw = [1e-3, 3e-3], "*" = [1e-2] }\n'
    scn, spec = load_quality(write(tmp_path, HEAD + table))
    assert spec.grid_for("adamw") == [1e-3, 3e-3] and spec.grid_for("ngl") == [1e-2]
    no_default = load_quality(write(tmp_path, HEAD + '[quality]\nlr_grid = { adamw = [1e-3] }\n'))[1]
    assert no_default.grid_for("ngl") == []  # no "*": that case keeps the scenario's lr
    assert QualitySpec(lr_grid=[1e-3]).grid_for("anything") == [1e-3]



def test_cli_selection_drops_the_grids_of_cases_left_out(tmp_path, capsys):
    """--optimizers keeps a table grid's entries for the cases it keeps (and "*"): a grid naming a
    case left out is no error."""
    import torch

    path = write(tmp_path, HEAD + '[quality]\nsteps = 2\nseeds = 1\neval_every = 2\neval_sequences = 2\n'
                                  'tune_steps = 1\nlr_grid = { adamw = [1e-3], ngl = [1e-2, 3e-2] }\n')
    threads = torch.get_num_threads()
    try:
        assert main(["train", path, "--optimizers", "ngl", "--threads", "1", "--out", str(tmp_path / "o")]) == 0
    finally:
        torch.set_num_threads(threads)
    from ngl_profile.schema.results import load_results

    run = load_results(tmp_path / "o")
    assert run.scenario["quality"]["lr_grid"] == {"ngl": [1e-2, 3e-2]}
    assert [s["lr"] for s in run.cases[0].quality["lr_sweep"]] == [1e-2, 3e-2]
