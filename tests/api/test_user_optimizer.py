"""What the API reads off an optimizer it did not build agrees with the zoo that builds it."""
import pytest
import torch

from ngl_profile.measure.memory import optimizer_states
from ngl_profile.user_optimizer import optimizer_hparams, optimizer_name, state_lookup
from ngl_profile.zoo.models import build_model, make_batch
from ngl_profile.zoo.optimizers import build, state_category_lookup

NAMES = ["adamw", "adamw-layerwise", "adamw8bit", "adafactor", "galore", "natural-galore",
         "natural-galore-8bit", "natural-galore-adafactor-layerwise", "lora"]


@pytest.mark.parametrize("name", NAMES)
def test_name_and_state_categories_match_the_zoo(name):
    model = build_model("tiny", torch.float32)
    hp = {"rank": 4} if "galore" in name or name == "lora" else {}
    if name.startswith("natural"):
        hp["history_size"] = 2
    opt = build(name, model, **hp)
    g = torch.Generator().manual_seed(0)
    model(**make_batch("tiny", 1, 8, generator=g)).loss.backward()
    opt.step()
    assert optimizer_name(opt) == ("adamw" if name == "lora" else name)  # LoRA's optimizer is AdamW
    ours, zoo = state_lookup(opt), state_category_lookup(name, opt)
    keys = {k for st in optimizer_states(opt) for k in st}
    assert keys
    assert {k: ours(k) for k in keys} == {k: zoo(k) for k in keys}
    if hp.get("rank") and name != "lora":
        assert optimizer_hparams(opt)["rank"] == 4


def test_hparams_hold_only_what_a_results_file_can():
    p = torch.nn.Parameter(torch.zeros(3))
    hp = optimizer_hparams(torch.optim.AdamW([p], lr=torch.tensor(0.01), betas=(0.8, 0.9)))
    assert "lr" not in hp and hp["betas"] == [0.8, 0.9] and "foreach" not in hp  # a tensor; None
