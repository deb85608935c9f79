"""Every optimizer `build` knows makes the loss of a tiny LLaMA fall on a fixed batch."""
import pytest
import torch

from ngl_profile.zoo.models import build_model, make_batch
from ngl_profile.zoo.optimizers import build, optimizer_names

from .rng import local_rng

LR = {"adafactor": 1e-2, "lora": 1e-2}


@pytest.mark.parametrize("name", optimizer_names())
def test_loss_falls(name):
    if name.startswith("galore-torch"):
        pytest.importorskip("galore_torch")
    base = name.removesuffix("-layerwise")
    hp = {"lr": LR.get(base, 1e-2 if "galore" in base else 3e-3)}
    if "galore" in base:
        hp.update(rank=8, update_proj_gap=10)
    with local_rng(0):  # transformers' and peft's inits take no generator
        model = build_model("tiny")
        opt = build(name, model, **hp)
    batch = make_batch("tiny", 4, 32, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(25):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_unknown_optimizer_lists_known():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; known: adamw, adamw-layerwise"):
        with local_rng(0):
            build("adam", build_model("tiny"))


def test_unknown_hparam_is_named():
    with pytest.raises(ValueError, match="optimizer 'adamw' takes no history_size"):
        with local_rng(0):
            build("adamw", build_model("tiny"), history_size=3)


def test_low_rank_goes_to_block_linears_only():
    from ngl_profile.optim import low_rank_parameters
    with local_rng(0):
        model = build_model("tiny")
    mats, rest = low_rank_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(mats) == 2 * 7  # q k v o gate up down per layer
    assert all("layers." in names[id(p)] and p.dim() == 2 for p in mats)
    assert any("embed_tokens" in names[id(p)] for p in rest) and any("lm_head" in names[id(p)] for p in rest)


def test_lora_on_roberta_adapts_block_linears_and_trains_the_head():
    with local_rng(0):
        model = build_model("roberta-base", num_layers=2)
        build("lora", model, rank=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("classifier.") for n in trainable)
    adapted = {n.split(".lora_")[0] for n in trainable if "lora_" in n}
    assert adapted and all(".layer." in n for n in adapted)  # never the pooler or the classifier
    assert not any("pooler" in n for n in trainable)
