"""Every optimizer state key has a declared memory category; an undeclared one fails loudly."""
import pytest
import torch

from ngl_profile.measure.memory import MemoryTracker, optimizer_states, state_key_category
from ngl_profile.zoo.models import build_model, make_batch
from ngl_profile.zoo.optimizers import build, optimizer_names, state_category_lookup


@pytest.mark.parametrize("name", optimizer_names())
def test_every_state_key_of_every_optimizer_is_declared(name):
    torch.manual_seed(0)
    model = build_model("tiny")
    hp = {"rank": 8} if name.startswith(("galore", "natural", "lora")) else {}
    if name.startswith("natural"):
        hp["history_size"] = 2
    opt = build(name, model, **hp)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        model(**make_batch("tiny", 2, 16, generator=gen)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    lookup = state_category_lookup(name, opt)
    keys = {k for st in optimizer_states(opt) for k in st}
    assert keys, "the optimizer kept no state: nothing was checked"
    for key in keys:
        assert state_key_category(lookup, key) in ("moments", "quant_stats", "projectors", "history"), key


def test_an_undeclared_state_key_fails_the_attribution():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.state[p]["my_new_buffer"] = torch.zeros(3)
    tracker = MemoryTracker(state_category=state_category_lookup("adamw", opt))
    with pytest.raises(ValueError, match="state key 'my_new_buffer' has no declared memory category"):
        tracker.tag_optimizer(opt)
