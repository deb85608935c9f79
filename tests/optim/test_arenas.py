"""Windows packed into arenas (natural.init_windows): one batched pass per arena, the same results
as one pass per window, a bounded g̃ buffer, and arenas rebuilt after a checkpoint load."""
import io
import warnings

import pytest
import torch

from ngl_profile.optim import NaturalGaLoreAdamW, kernels, natural, projector

# (40, 24) projects on the right (40×6), (24, 40) on the left (6×40): both k = 240, one arena;
# (30, 20) gives k = 120, an arena of its own
SHAPES = [(40, 24), (40, 24), (24, 40), (40, 24), (30, 20)]


def params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def build(ps, storage="float32"):
    return NaturalGaLoreAdamW([{"params": ps, "rank": 6, "history_size": 4, "history_dtype": storage}],
                              lr=1e-2, weight_decay=0.01)


def run(steps, storage, packed, monkeypatch, skip=None, seed=3):
    """Weights after `steps` steps (gradients from one seeded generator). skip: "none" (parameter 1
    has no gradient on odd steps) or "nan" (its gradient is NaN on step 2, an update skipped): its
    window then falls behind the others of its arena, whose newest slots differ from there on."""
    monkeypatch.setattr(natural, "_PACK_WINDOW_BYTES", natural._PACK_WINDOW_BYTES if packed else -1)
    ps = params()
    opt = build(ps, storage)
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for i, p in enumerate(ps):
            g = torch.randn(p.shape, generator=gen)
            if i == 1 and skip == "none" and t % 2:
                g = None
            elif i == 1 and skip == "nan" and t == 2:
                g = torch.full(p.shape, float("nan"))
            p.grad = g
        opt.step()
    return ps, opt


def storages(opt, key="history"):
    return {opt.state[p][key].untyped_storage().data_ptr() for p in opt.state}


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("skip", [None, "none", "nan"])
def test_arena_passes_equal_one_pass_per_window(storage, skip, monkeypatch):
    monkeypatch.setenv("NGL_PROFILE_KERNELS", "compiled")
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)  # the compiled kernels on these small windows
    packed, p_opt = run(7, storage, True, monkeypatch, skip)
    alone, a_opt = run(7, storage, False, monkeypatch, skip)
    assert len(storages(p_opt)) == 2 and len(storages(a_opt)) == len(SHAPES)
    assert len(storages(p_opt, "gram")) == 2
    if skip is not None:  # the arena's windows really are out of step: the gathered-slot path ran
        heads = {p_opt.state[p]["history_head"] for p in packed[:4]}
        assert len(heads) == 2
    for x, y in zip(packed, alone):
        # the float64 sums of the batched and the one-window kernel differ only in their order
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-5, atol=1e-7)
    for p, q in zip(packed, alone):
        torch.testing.assert_close(p_opt.state[p]["gram"], a_opt.state[q]["gram"], rtol=1e-12, atol=1e-12)


def stepped_arena(steps: int, gen: torch.Generator) -> list[dict]:
    """The states of the k = 240 arena's four windows after `steps` optimizer steps."""
    ps = params()[:4]
    opt = build(ps)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [opt.state[p] for p in ps]


def test_combine_all_holds_at_most_its_bound_of_g_tilde(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)
    states = stepped_arena(3, torch.Generator().manual_seed(5))
    ws = natural.weights(states, [1e-3] * 4)
    monkeypatch.setattr(natural, "_COMBINE_BYTES", 2 * 240 * 4)  # two windows' g̃ per batch
    seen = {}
    for i, g in natural.combine_all(states, ws, [True] * 4, [torch.float32] * 4):
        seen[i] = g.untyped_storage()
        torch.testing.assert_close(g, natural.combine(states[i], ws[i], False), rtol=1e-6, atol=1e-9)
    assert sorted(seen) == [0, 1, 2, 3]
    buffers = {s.data_ptr(): s.nbytes() for s in seen.values()}
    assert len(buffers) == 2 and all(n == 2 * 240 * 4 for n in buffers.values())


def test_an_arena_of_two_g_tilde_dtypes_keeps_its_batched_gram_pass(monkeypatch):
    """An arena rebuilt by repack can hold windows whose g̃ dtypes differ: its Gram rows still run
    as one batched pass, its g̃ one window at a time, each in its own dtype."""
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)
    gen = torch.Generator().manual_seed(6)
    states = stepped_arena(2, gen)
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.float32]
    how = natural.plan(states, [True] * 4, dtypes)
    assert [(len(members), one) for _, members, *_, one in how.batches] == [(4, False)] and how.rest == []
    batched = []
    monkeypatch.setattr(kernels, "gram_rows", lambda *a, real=kernels.gram_rows: batched.append(1) or real(*a))
    for st in states:
        natural.store(st, torch.randn(240, generator=gen))
    expected = []  # each window's Gram matrix after its newest row, one window at a time (eager)
    for st in states:
        twin = dict(st, gram=st["gram"].clone())
        natural._gram_update(twin, (twin["history_head"] - 1) % 4, twin["history_count"])
        expected.append(twin["gram"])
    natural.update_grams(states, [True] * 4, [None] * 4, how)
    assert batched == [1]
    for st, ref in zip(states, expected):
        torch.testing.assert_close(st["gram"], ref, rtol=1e-12, atol=1e-12)
    ws = natural.weights(states, [1e-3] * 4)
    got = dict(natural.combine_all(states, ws, [True] * 4, dtypes, how=how))
    assert sorted(got) == [0, 1, 2, 3]
    for i, g in got.items():
        assert g.dtype == dtypes[i]
        torch.testing.assert_close(g, natural.combine(states[i], ws[i], False, dtypes[i]))


def test_a_checkpoint_load_repacks_the_windows_and_resumes_bit_exact(monkeypatch):
    monkeypatch.setenv("NGL_PROFILE_KERNELS", "compiled")
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)
    gen = torch.Generator().manual_seed(7)
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(8)]

    def steps(ps, opt, gs):
        for g_t in gs:
            for p, g in zip(ps, g_t):
                p.grad = g.clone()
            opt.step()

    ps = params()
    opt = build(ps, "int8")
    steps(ps, opt, grads)
    ps2 = params()
    opt2 = build(ps2, "int8")
    steps(ps2, opt2, grads[:5])
    buf = io.BytesIO()
    torch.save({"model": [p.detach().clone() for p in ps2], "opt": opt2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    ps3 = [torch.nn.Parameter(w) for w in saved["model"]]
    opt3 = build(ps3, "int8")
    opt3.load_state_dict(saved["opt"])
    for key in ("history", "history_scale", "gram"):
        assert len(storages(opt3, key)) == 2, key  # back in two arenas, not one tensor per window
    steps(ps3, opt3, grads[5:])
    for x, y in zip(ps, ps3):
        assert torch.equal(x.detach(), y.detach())


@pytest.mark.parametrize("shape,proj_type,rank", [((40, 8), "left", 12), ((8, 40), "right", 12),
                                                  ((6, 8, 10), "tucker", 9)])
def test_windows_are_sized_before_the_first_projection(shape, proj_type, rank):
    """A rank above what the SVD gives (here min(m, n), or per Tucker mode min(d, numel/d)) must
    not size the arena's windows wrong: two such parameters share one arena, each window as
    long as its projected gradient."""
    gen = torch.Generator().manual_seed(11)
    ps = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for _ in range(2)]
    opt = NaturalGaLoreAdamW([{"params": ps, "rank": rank, "history_size": 3, "proj_type": proj_type}])
    for p in ps:
        p.grad = torch.randn(shape, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rank-clamp warning, where it applies
        opt.step()
    assert len(storages(opt)) == 1
    for p in ps:
        st = opt.state[p]
        basis = tuple(st[f"proj_{i}"] for i in range(st["proj_factors"]))
        g = projector.project(p.grad, basis, projector.resolve_side(shape, proj_type))
        assert st["history"].shape[1] == g.numel()
