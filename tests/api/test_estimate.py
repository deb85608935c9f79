"""ngl_profile.estimate: the user's callables under the estimator, giving what a CLI case gives."""
import json

import pytest
import torch

import ngl_profile
from ngl_profile.engine.case import run_case
from ngl_profile.schema.results import load_results
from ngl_profile.zoo.models import build_model, make_batch
from tests.api.models import BATCH, adamw, batches, mlp, mse, param_bytes
from tests.helpers import case_spec, scenario_dict


def test_same_result_as_a_cli_case():
    # the CLI's own tiny case and the same model, optimizer and batch handed in as callables
    scn = scenario_dict(seq_len=32, batch_size=2, dtype="float32")
    cli = run_case(case_spec("adamw", mode="estimated", scenario=scn))
    g = torch.Generator().manual_seed(0)
    api = ngl_profile.estimate(lambda: build_model("tiny", torch.float32), "adamw",
                               lambda step: make_batch("tiny", 2, 32, generator=g))
    assert cli.status == api.status == "ok"
    assert api.provenance == "estimated"
    assert api.memory_bytes == cli.memory_bytes
    assert (api.peak_bytes, api.peak_phase, api.fits, api.headroom_bytes) == \
        (cli.peak_bytes, cli.peak_phase, cli.fits, cli.headroom_bytes)
    assert api.params == cli.params
    assert api.step_flops == cli.step_flops and api.flops_per_token == cli.flops_per_token


def test_hand_counts_of_a_plain_module():
    model = mlp()
    w = param_bytes(model)
    n = len(list(model.parameters()))
    r = ngl_profile.estimate(mlp, adamw, batches(), loss_fn=mse, flops=False)
    assert r.optimizer["name"] == "adamw" and r.optimizer["hparams"]["lr"] == 1e-3
    assert r.memory_bytes["weights"] == w
    # exp_avg and exp_avg_sq per parameter, plus torch's float32 step counter (4 bytes) each: step 1
    # holds them from its start, so its peak (the larger) has them all
    assert r.memory_bytes["moments"] == 2 * w + 4 * n
    assert r.memory_bytes["history"] == r.memory_bytes["projectors"] == 0
    assert sum(r.memory_bytes.values()) == r.peak_bytes
    assert len(r.step_peaks_bytes) == 2 and r.step_peaks_bytes[1] > r.step_peaks_bytes[0]
    assert "for-loop" in r.code_path and r.params["total"] == w // 4


def test_unknown_state_key_is_an_error_unless_declared():
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)  # noqa: E731
    with pytest.raises(ValueError, match="'momentum_buffer'.*state_categories"):
        ngl_profile.estimate(mlp, sgd, batches(), loss_fn=mse, flops=False)
    w = param_bytes(mlp())
    for declared in ({"momentum_buffer": "moments"}, "moments"):
        r = ngl_profile.estimate(mlp, sgd, batches(), loss_fn=mse, flops=False, state_categories=declared)
        assert r.optimizer["name"] == "SGD"
        assert r.memory_bytes["moments"] == w  # one buffer the size of each parameter
    with pytest.raises(ValueError, match="'momentum_buffer'.*unknown category 'momentum'"):
        ngl_profile.estimate(mlp, sgd, batches(), loss_fn=mse, state_categories={"momentum_buffer": "momentum"})


def test_zoo_optimizer_by_name_declares_its_own_state():
    g = torch.Generator().manual_seed(0)
    r = ngl_profile.estimate(lambda: build_model("tiny", torch.float32), "natural-galore",
                             lambda step: make_batch("tiny", 1, 16, generator=g),
                             optimizer_hparams={"rank": 8, "history_size": 2}, flops=False)
    assert r.optimizer == {"name": "natural-galore", "label": "natural-galore",
                           "hparams": {"rank": 8, "history_size": 2}}
    assert r.memory_bytes["projectors"] > 0 and r.memory_bytes["history"] > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"gpu": "nope"}, "unknown GPU 'nope'"),
    ({"steps": 0}, r"steps must be an integer in \[1, 100\]"),
    ({"name": "../x"}, "name must be"),
    ({"optimizer_hparams": {"rank": 4}}, "optimizer_hparams applies to a zoo optimizer"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        ngl_profile.estimate(mlp, adamw, batches(), loss_fn=mse, **kwargs)
    assert "\n" not in str(e.value)


def test_what_the_callables_return_is_checked():
    with pytest.raises(ValueError, match="build_model\\(\\) must return a torch.nn.Module; got int"):
        ngl_profile.estimate(lambda: 3, adamw, batches(), loss_fn=mse)
    with pytest.raises(ValueError, match="one-element tensor; got a tensor of shape \\(32, 8\\)"):
        ngl_profile.estimate(mlp, adamw, lambda step: {"input": torch.randn(BATCH, 16)})
    with pytest.raises(ValueError, match="returned list: return a dict"):
        ngl_profile.estimate(mlp, adamw, lambda step: [torch.randn(BATCH, 16)])


def test_out_writes_a_results_file_with_the_batch_shape(tmp_path):
    g = torch.Generator().manual_seed(0)
    r = ngl_profile.estimate(lambda: build_model("tiny", torch.float32), adamw,
                             lambda step: make_batch("tiny", 3, 20, generator=g), out=tmp_path, name="mine")
    run = load_results(tmp_path)
    assert run.mode == "estimated" and run.cases[0].memory_bytes == r.memory_bytes
    s = run.scenario
    assert (s["name"], s["model"], s["batch_size"], s["seq_len"], s["dtype"]) == \
        ("mine", "LlamaForCausalLM", 3, 20, "float32")
    assert s["optimizers"] == [r.optimizer]
    # the projection used the batch's 60 tokens
    assert r.projected["tokens_per_s_upper_bound"] > 0 and r.flops_per_token * 60 > 0
    assert json.loads((tmp_path / "results.json").read_text())["cases"][0]["status"] == "ok"
