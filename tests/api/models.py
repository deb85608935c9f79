"""Small programs the API tests profile, with their hand counts."""
import torch
from torch import nn

IN, HID, OUT, BATCH = 16, 64, 8, 32


def mlp() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(IN, HID), nn.ReLU(), nn.Linear(HID, OUT))
    with torch.no_grad():
        for p in m.parameters():  # a local generator: the global RNG stays as the test found it
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def make(step):
        return {"x": torch.randn(BATCH, IN, generator=g), "y": torch.randn(BATCH, OUT, generator=g)}
    return make


def mse(model, batch):
    # spelled out, not F.mse_loss: torch's CPU kernel returns the mean as a view of the whole
    # squared-difference buffer (its storage stays 1 KiB here), its fake kernel a 4-byte scalar
    return (model(batch["x"]) - batch["y"]).pow(2).mean()


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
