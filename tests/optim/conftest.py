"""Every random draw in tests/optim comes from a local torch.Generator seeded in the test (or, for
library code that takes no generator — a model's own init — from `rng.local_rng`): a test never
draws from or seeds torch's global RNG, so its result cannot depend on which tests ran before it.
This fixture enforces that, and it also checks that the optimizer itself never touches the global
RNG (the randomized SVD runs in a forked one)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def global_rng_untouched():
    before = torch.random.get_rng_state()
    yield
    assert torch.equal(torch.random.get_rng_state(), before), (
        "this test drew from or seeded torch's global RNG: use a local torch.Generator "
        "(or tests/optim/rng.local_rng around library code that takes none)")
