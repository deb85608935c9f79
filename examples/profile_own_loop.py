"""Measure memory by category inside your own training loop, and write a results.json that
`ngl-profile report`, `compare` and `check` read.

    python examples/profile_own_loop.py [OUT_DIR]

Runs on whatever device the model is on (here the CPU, in seconds). The first two steps are
memory-tracked; the ones after the warm-up step are timed for tokens/s.
"""
import sys

import torch

import ngl_profile
from estimate_custom_model import VOCAB, TinyLM, loss_fn

STEPS, BATCH, SEQ = 6, 4, 64


def main(out="reports/example-profile-own-loop"):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = TinyLM().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator(device=device).manual_seed(0)
    with ngl_profile.profile(model, optimizer, gpu="4090", out=out, track_steps=2, warmup=1) as prof:
        for step in range(STEPS):
            batch = {"input_ids": torch.randint(0, VOCAB, (BATCH, SEQ), device=device, generator=g)}
            loss = loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            prof.step()
    c = prof.case
    parts = ", ".join(f"{k} {v / 2**20:.2f}" for k, v in c.memory_bytes.items() if v)
    speed = f"{c.tokens_per_s:,.0f} tokens/s" if c.tokens_per_s else "no timed steps"
    print(f"{c.label} on {device}: peak {c.peak_bytes / 2**20:.2f} MiB in {c.peak_phase} ({parts} MiB); {speed}")
    print(f"results: {out}/results.json (ngl-profile report {out})")
    return prof


if __name__ == "__main__":
    main(*sys.argv[1:2])
