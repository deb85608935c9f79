"""history_size = 0 must reproduce galore-torch's GaLoreAdamW step for step."""
import pytest
import torch

from ngl_profile.optim import NaturalGaLoreAdamW

galore_torch = pytest.importorskip("galore_torch")


@pytest.mark.parametrize("proj_type", ["std", "left", "right"])
@pytest.mark.parametrize("shape", [(32, 48), (48, 32)])
def test_history_zero_equals_galore_torch(proj_type, shape):
    gen = torch.Generator().manual_seed(0)
    w0, b0 = torch.randn(shape, generator=gen), torch.randn(shape[1], generator=gen)
    ours_p = [torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())]
    theirs_p = [torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())]
    low = dict(rank=8, update_proj_gap=4, scale=0.25, proj_type=proj_type)
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.05)
    ours = NaturalGaLoreAdamW([{"params": [ours_p[0]], **low, "history_size": 0}, {"params": [ours_p[1]]}], **hp)
    theirs = galore_torch.GaLoreAdamW([{"params": [theirs_p[0]], **low}, {"params": [theirs_p[1]]}],
                                      no_deprecation_warning=True, **hp)
    for _ in range(10):  # crosses two projector refreshes
        grads = [torch.randn(shape, generator=gen), torch.randn(shape[1], generator=gen)]
        for p, q, g in zip(ours_p, theirs_p, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        for p, q in zip(ours_p, theirs_p):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
