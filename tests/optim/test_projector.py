"""The projector's SVD options: torch.svd_lowrank against the full SVD, and determinism."""
import pytest
import torch

from ngl_profile.optim import NaturalGaLoreAdamW
from ngl_profile.optim.projector import compute_basis, project


def gradient_like(m, n, seed=0):
    """A decaying spectrum, as LLM gradients have (GaLore's premise)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, m, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, n, generator=g))[0]
    s = torch.tensor([0.9**i for i in range(min(m, n))])
    return (u[:, : len(s)] * s) @ v[: len(s)]


def tensor_like(shape, seed=0):
    """A 3-D tensor whose every mode has a decaying spectrum (randomized SVD needs decay, and has it
    on gradients; on a flat-spectrum random tensor it keeps ~90 % of the exact projection's energy)."""
    g = torch.Generator().manual_seed(seed)
    idx = [torch.arange(d, dtype=torch.float32) for d in shape]
    decay = 0.85 ** (idx[0][:, None, None] + idx[1][None, :, None] + idx[2][None, None, :])
    x = torch.randn(shape, generator=g) * decay
    for mode, d in enumerate(shape):
        q = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
        x = torch.tensordot(q, x, dims=([1], [mode])).movedim(0, mode)
    return x


@pytest.mark.parametrize("shape,side", [((256, 512), "left"), ((512, 256), "right"), ((48, 40, 36), "tucker")])
def test_lowrank_captures_what_the_full_svd_captures(shape, side):
    grad = gradient_like(shape[0], shape[1]) if len(shape) == 2 else tensor_like(shape)
    ranks = (32,) if side != "tucker" else (16, 16, 16)
    full = compute_basis(grad, ranks, side, "full")
    fast = compute_basis(grad, ranks, side, "lowrank", seed=1)
    # energy of the gradient kept by each projection: the randomized one keeps ≥ 99 % of the exact's
    e_full = project(grad, full, side).norm() ** 2
    e_fast = project(grad, fast, side).norm() ** 2
    assert e_fast >= 0.99 * e_full, (e_fast / e_full).item()
    for f in fast:  # orthonormal columns (or rows, for "right")
        q = f if f.shape[0] >= f.shape[1] else f.t()
        torch.testing.assert_close(q.t() @ q, torch.eye(q.shape[1]), atol=1e-5, rtol=0)


def test_lowrank_is_deterministic_and_leaves_the_global_rng_alone():
    grad = gradient_like(128, 256)
    before = torch.random.get_rng_state()
    a = compute_basis(grad, (16,), "left", "lowrank", seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = compute_basis(grad, (16,), "left", "lowrank", seed=7)
    assert torch.equal(a[0], b[0])


def test_bad_svd_method_is_named():
    p = torch.nn.Parameter(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="svd must be one of full, lowrank; got 'qr'"):
        NaturalGaLoreAdamW([{"params": [p], "rank": 4, "svd": "qr"}])
