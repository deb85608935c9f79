"""The caching-allocator replay against sequences worked by hand from the documented rules
(CUDACachingAllocator.cpp: 512 B rounding; small pool ≤ 1 MiB in 2 MiB segments; large requests
under 10 MiB in 20 MiB segments, larger ones rounded up to 2 MiB; best fit; split when > 1 MiB is
left in the large pool, ≥ 512 B in the small one; frees merge with free neighbours; cached segments
go back only when cudaMalloc fails), the tracker's event sequence against its own peak, and, on a
GPU, against the real allocator."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ngl_profile.measure.allocator import CachingAllocatorModel, replay, round_size

from tests.helpers import case_spec, scenario_dict

KiB, MiB = 1 << 10, 1 << 20
REPO = Path(__file__).resolve().parents[2]


def run(*ops, limit=None):
    """ops: ("a", key, nbytes) or ("f", key); the model after them."""
    m = CachingAllocatorModel(limit)
    for op in ops:
        if op[0] == "a":
            assert m.alloc(op[1], op[2]), op
        else:
            m.free(op[1])
    return m


def test_rounding_to_512_bytes():
    assert [round_size(n) for n in (1, 511, 512, 513, 1000, 1024)] == [512, 512, 512, 1024, 1024, 1024]
    m = run(("a", 1, 1), ("a", 2, 513))
    assert m.allocated == 512 + 1024 and m.reserved == 2 * MiB


def test_small_request_takes_a_2_mib_small_segment():
    m = run(("a", 1, KiB))
    assert (m.reserved, m.allocated, m.segments) == (2 * MiB, KiB, 1)
    # 1 MiB exactly is still small: two share the segment (the first leaves 1 MiB ≥ 512 B, split off)
    m = run(("a", 1, MiB), ("a", 2, MiB))
    assert (m.reserved, m.allocated) == (2 * MiB, 2 * MiB)
    # one byte more is rounded to 1 MiB + 512 B: the large pool, a 20 MiB segment
    assert run(("a", 1, MiB + 1)).reserved == 20 * MiB


def test_small_segment_fills_then_a_new_one():
    n = 600 * KiB  # three fit in 2 MiB (1,843,200 B), leaving 253,952 B: too little for a fourth
    m = run(*[("a", i, n) for i in range(3)])
    assert (m.reserved, m.segments) == (2 * MiB, 1)
    m.alloc(3, n)
    assert (m.reserved, m.segments, m.allocated) == (4 * MiB, 2, 4 * n)


def test_large_requests_segment_sizes():
    m = run(("a", 1, 5 * MiB))  # < 10 MiB: a 20 MiB segment, split (15 MiB left > 1 MiB)
    assert (m.reserved, m.allocated) == (20 * MiB, 5 * MiB)
    m = run(("a", 1, 11 * MiB))  # ≥ 10 MiB: rounded up to 2 MiB; 1 MiB left is not > 1 MiB: unsplit
    assert (m.reserved, m.allocated) == (12 * MiB, 12 * MiB)
    m = run(("a", 1, 19 * MiB))  # a 20 MiB segment handed out whole, so allocated counts all of it
    assert (m.reserved, m.allocated) == (20 * MiB, 20 * MiB)


def test_two_6_mib_share_a_20_mib_segment():
    m = run(("a", 1, 6 * MiB), ("a", 2, 6 * MiB))
    assert (m.reserved, m.segments, m.allocated) == (20 * MiB, 1, 12 * MiB)
    m.alloc(3, 6 * MiB)  # the 8 MiB tail: split again (2 MiB left)
    assert (m.reserved, m.allocated) == (20 * MiB, 18 * MiB)
    m.alloc(4, 6 * MiB)  # 2 MiB left is too small: a second segment
    assert (m.reserved, m.segments) == (40 * MiB, 2)


def test_freed_block_is_reused_and_split():
    m = run(("a", 1, 12 * MiB), ("f", 1), ("a", 2, 4 * MiB))
    assert (m.reserved, m.allocated) == (12 * MiB, 4 * MiB)  # the cached 12 MiB block, split 4 + 8
    m.alloc(3, 8 * MiB)  # exactly the rest
    assert (m.reserved, m.allocated, m.segments) == (12 * MiB, 12 * MiB, 1)


def test_a_hole_too_small_needs_a_new_segment():
    # [A 6][B 6][C 6][2 free] in one 20 MiB segment; B freed leaves a 6 MiB hole between A and C
    m = run(("a", "A", 6 * MiB), ("a", "B", 6 * MiB), ("a", "C", 6 * MiB), ("f", "B"), ("a", "D", 7 * MiB))
    assert (m.reserved, m.allocated) == (40 * MiB, 19 * MiB)  # 7 MiB fits neither the hole nor the tail
    # A freed merges with the hole: 12 MiB, the best fit for 7 MiB (the other segment has 13 free)
    m.free("A")
    m.alloc("E", 7 * MiB)
    assert (m.reserved, m.segments) == (40 * MiB, 2)
    m.alloc("F", 13 * MiB)  # the second segment's 13 MiB tail, untouched by E
    assert m.reserved == 40 * MiB


def test_frees_merge_back_into_the_whole_segment():
    ops = [("a", k, 6 * MiB) for k in "ABC"] + [("f", "A"), ("f", "C"), ("f", "B")]
    m = run(*ops)
    m.alloc("D", 20 * MiB)  # only the merged 20 MiB block holds it: no new segment
    assert (m.reserved, m.segments, m.allocated) == (20 * MiB, 1, 20 * MiB)


def test_best_fit_takes_the_smallest_block_that_fits():
    # X: a 12 MiB segment. Y: 8 MiB < 10 MiB, a 20 MiB segment split 8 + 12. Z: the best fit for 12 MiB
    # is that 12 MiB tail, exactly. Freeing X and Y leaves free blocks of 12 and 8 MiB (Y's neighbour Z
    # is in use: no merge)
    m = run(("a", "X", 12 * MiB), ("a", "Y", 8 * MiB), ("a", "Z", 12 * MiB), ("f", "X"), ("f", "Y"))
    assert (m.reserved, m.segments, m.allocated) == (32 * MiB, 2, 12 * MiB)
    m.alloc("A", 7 * MiB)  # the 8 MiB block, not the 12; 1 MiB left is not > 1 MiB: handed out whole
    assert m.allocated == 12 * MiB + 8 * MiB
    m.alloc("B", 11 * MiB)  # the 12 MiB block, whole
    assert (m.reserved, m.allocated) == (32 * MiB, 32 * MiB)


def test_cached_segments_are_freed_and_the_cudamalloc_retried_at_the_limit():
    m = run(("a", 1, 5 * MiB), ("f", 1), limit=40 * MiB)  # a 20 MiB segment, now wholly cached
    assert m.alloc(2, 30 * MiB)  # 20 + 30 > 40: the cached segment goes back, then 30 fits
    assert (m.reserved, m.segments, m.retries, m.peak_reserved) == (30 * MiB, 1, 1, 30 * MiB)
    assert not m.alloc(3, 12 * MiB)  # nothing cached to free: out of memory, nothing changed
    assert (m.reserved, m.allocated) == (30 * MiB, 30 * MiB)


def test_a_partly_used_segment_is_not_freed():
    # A and B share a 20 MiB segment; A's freed block is split from B's, so it cannot go back
    m = run(("a", "A", 5 * MiB), ("a", "B", 5 * MiB), ("f", "A"), limit=40 * MiB)
    assert not m.alloc("C", 25 * MiB)  # 26 MiB segment: 20 + 26 > 40
    assert m.retries == 1 and m.reserved == 20 * MiB


def test_replay_reads_the_flat_event_form_and_reports_the_oom():
    events = (1, 5 * MiB, 2, 6 * MiB, 1, -5 * MiB, 3, 1 * KiB, 2, -6 * MiB, 3, -1 * KiB)
    r = replay(events)
    # 5 and 6 MiB share a 20 MiB segment (allocated peaks at 11 MiB); the 1 KiB, after 5 MiB is freed,
    # adds a 2 MiB small one: the reserved peak, with 6 MiB + 1 KiB allocated then
    assert (r.peak_reserved_bytes, r.allocated_at_peak_bytes, r.peak_allocated_bytes) == (22 * MiB, 6 * MiB + KiB,
                                                                                          11 * MiB)
    assert r.segments_at_peak == 2 and r.oom_at_event is None and r.alloc_retries == 0
    r = replay((1, 15 * MiB, 2, 15 * MiB), limit_bytes=30 * MiB)  # 16 + 16 > 30
    assert (r.oom_at_event, r.oom_request_bytes, r.peak_reserved_bytes) == (1, 15 * MiB, 16 * MiB)


# --- the tracker's sequence, and the replay in a run --------------------------------------------
def test_tracker_events_replay_to_its_own_peak():
    from ngl_profile.engine.steps import one_step
    from ngl_profile.measure.memory import MemoryTracker
    from ngl_profile.schema.scenario import Scenario
    from ngl_profile.zoo.models import build_model

    model = build_model("tiny")
    tracker = MemoryTracker(record_timeline=False)
    tracker.attach(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tracker.declare_state(lambda key: "moments")
    scn = Scenario.from_dict(scenario_dict(seq_len=16))
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        tracker.start_step()
        with tracker:
            one_step(model, opt, scn, torch.device("cpu"), gen, tracker=tracker)
        tracker.end_step()
    snap = tracker.snapshot()
    tracker.detach()
    ev = snap.events
    pairs = list(zip(ev[::2], ev[1::2]))
    # weights come first, one allocation per parameter, in parameters() order
    params = list(model.parameters())
    assert pairs[:len(params)] == [(i + 1, p.numel() * p.element_size()) for i, p in enumerate(params)]
    # every key allocated once, freed at most once after, and the running total peaks where the tracker's did
    live, total, peak = {}, 0, 0
    for key, n in pairs:
        if n > 0:
            assert key not in live
            live[key] = n
        else:
            assert live.pop(key) == -n
        total += n
        peak = max(peak, total)
    assert peak == snap.peak_bytes
    r = replay(ev)
    assert r.peak_reserved_bytes >= r.peak_allocated_bytes >= snap.peak_bytes


def test_estimated_run_adds_the_simulated_slack(tmp_path):
    from dataclasses import asdict

    from ngl_profile.engine.case import run_case
    from ngl_profile.schema.results import load_results
    from ngl_profile.zoo.gpus import CUDA_CONTEXT_BYTES, get_gpu

    r = run_case(case_spec("adamw", mode="estimated"))
    assert r.status == "ok", r.message
    c, m = r.cuda, r.memory_bytes
    assert m["allocator_slack"] >= 0 and m["context"] == 0
    assert m["allocator_slack"] == c["simulated_max_reserved_bytes"] - c["tracked_peak_bytes"]
    assert r.peak_bytes == c["tracked_peak_bytes"] + m["allocator_slack"] == sum(m.values())
    # every segment is a whole number of 2 MiB (small buffers, 20 MiB ones, 2 MiB-rounded large ones)
    assert c["simulated_max_reserved_bytes"] % (2 * MiB) == 0
    assert c["tracked_peak_bytes"] <= c["simulated_max_allocated_bytes"] <= c["simulated_max_reserved_bytes"]
    assert "simulated" in c["allocator_model"] and "estimated allocation sequence" in c["allocator_model"]
    assert c["assumed_context_bytes"] == CUDA_CONTEXT_BYTES and c["simulated_oom_at_event"] is None
    assert r.headroom_bytes == get_gpu("rtx-4090").memory_bytes - r.peak_bytes - CUDA_CONTEXT_BYTES and r.fits
    # and the record, its allocator_model line included, loads back
    run = json.loads((REPO / "tests" / "baselines" / "tiny-cpu.json").read_text())
    run["cases"] = [asdict(r)]
    (tmp_path / "results.json").write_text(json.dumps(run))
    assert load_results(tmp_path).cases[0].cuda == c


# --- the real allocator (GPU only) ----------------------------------------------------------------
REAL = """
import json, sys, torch
events = json.loads(sys.argv[1])
torch.cuda.init()
assert torch.cuda.memory_reserved() == 0
live = {}
for key, n in zip(events[::2], events[1::2]):
    if n > 0:
        live[key] = torch.empty(n, dtype=torch.uint8, device="cuda")
    else:
        del live[key]
print(json.dumps([torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated()]))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_replay_equals_the_real_allocator_on_a_random_sequence():
    g = torch.Generator().manual_seed(0)
    sizes = [int(s) for s in torch.randint(1, 4 * MiB, (300,), generator=g)]
    sizes[::7] = [int(s) for s in torch.randint(4 * MiB, 64 * MiB, (len(sizes[::7]),), generator=g)]
    events, live = [], []
    for key, n in enumerate(sizes, 1):
        events += [key, n]
        live.append((key, n))
        if torch.rand(1, generator=g).item() < 0.45:  # free a random live one
            k, m = live.pop(int(torch.randint(len(live), (1,), generator=g)))
            events += [k, -m]
    out = subprocess.run([sys.executable, "-c", REAL, json.dumps(events)], capture_output=True, text=True,
                         cwd=REPO, timeout=120,  # the default configuration, the one replayed
                         env={k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"})
    assert out.returncode == 0, out.stderr[-2000:]
    reserved, allocated = json.loads(out.stdout)
    r = replay(events)
    assert (r.peak_reserved_bytes, r.peak_allocated_bytes) == (reserved, allocated)
