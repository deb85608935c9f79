"""Estimate the memory of one training step of your own model, without allocating it.

    python examples/estimate_custom_model.py [OUT_DIR]

The model below is plain PyTorch (no transformers); any nn.Module built from code or a config
works. It runs under FakeTensorMode: exact tensor sizes, nothing allocated, so the same script
answers for a model far larger than this machine's memory.
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn

import ngl_profile

VOCAB, DIM, LAYERS, HEADS, SEQ, BATCH = 512, 128, 2, 4, 64, 4


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.qkv, self.out = nn.Linear(DIM, 3 * DIM, bias=False), nn.Linear(DIM, DIM, bias=False)
        self.up, self.down = nn.Linear(DIM, 4 * DIM, bias=False), nn.Linear(4 * DIM, DIM, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, HEADS, DIM // HEADS).transpose(1, 3).unbind(2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, DIM)
        x = x + self.out(a)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        # "blocks.<i>." is what ngl-profile's low-rank selection looks for: these linears get rank r
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def make_batch(step):
    # a local generator: the estimate never touches the global RNG
    g = torch.Generator().manual_seed(step)
    return {"input_ids": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)}


def loss_fn(model, batch):
    logits = model(batch["input_ids"])
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["input_ids"][:, 1:].flatten())


def main(out=None):
    results = {
        "adamw": ngl_profile.estimate(TinyLM, lambda m: torch.optim.AdamW(m.parameters(), foreach=True), make_batch,
                                      loss_fn=loss_fn, gpu="4090", flops=False, out=out),
        # a zoo optimizer by name, with its hyperparameters
        "natural-galore": ngl_profile.estimate(TinyLM, "natural-galore", make_batch, loss_fn=loss_fn, gpu="4090",
                                               optimizer_hparams={"rank": 16, "history_size": 4}, flops=False),
    }
    for name, r in results.items():
        parts = ", ".join(f"{k} {v / 2**20:.2f}" for k, v in r.memory_bytes.items() if v)
        print(f"{name}: peak {r.peak_bytes / 2**20:.2f} MiB in {r.peak_phase} ({parts} MiB); "
              f"fits {r.fits}, {r.params['low_rank']:,} of {r.params['total']:,} parameters low-rank")
    if out:
        print(f"results: {out}/results.json (ngl-profile report {out})")
    return results


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
