"""Per-rank optimizer state and optimizer communication of the Natural GaLore family on FSDP2.

    python benchmarks/sharded_state.py [--model tiny] [--world 2] [--steps 3] [--rank 16]

Spawns `--world` gloo ranks on the CPU; each shards the model with FSDP2 (every decoder layer, then
the root), builds each optimizer through the zoo, runs `--steps` forward/backward/step, then
reports per rank: the optimizer state's bytes by memory category (a DTensor's local shard only,
i.e. what that rank holds) and the bytes the rank sent into the optimizer's own collectives
(optim/sharded.py `traffic`) on the first step (a projector refresh) and on the last (a plain
step). FSDP2's own parameter all-gathers and gradient reduce-scatters are the same for every
optimizer and are not counted. Run it with PYTHONPATH pointing at an older checkout to measure
that code instead (`traffic` then reads n/a where the checkout has no sharded.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist

OPTIMIZERS = ("adamw", "galore", "galore-8bit", "natural-galore", "natural-galore-8bit",
              "natural-galore-adafactor")


def _state_bytes(opt, lookup) -> dict[str, int]:
    from torch.distributed.tensor import DTensor

    out: dict[str, int] = {}
    inner = getattr(opt, "optimizers", [opt])  # a LayerwiseOptimizer keeps the state in its inner ones
    for st in (st for o in inner for st in o.state.values()):
        for key, v in st.items():
            if torch.is_tensor(v):
                local = v.to_local() if isinstance(v, DTensor) else v
                cat = lookup(key) or "other"
                out[cat] = out.get(cat, 0) + local.numel() * local.element_size()
    return out


def _traffic():
    try:
        from ngl_profile.optim import sharded
    except ImportError:
        return None
    return sharded.traffic


def _one(name: str, args, mesh, rank: int) -> dict:
    from torch.distributed.fsdp import fully_shard

    from ngl_profile.zoo import models, optimizers

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models.build_model(args.model)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    hp = {} if name == "adamw" else {"rank": args.rank}
    opt = optimizers.build(name, model, precision="fp32", **hp)
    lookup = optimizers.state_category_lookup(name, opt)
    sent = []
    for _ in range(args.steps):
        batch = models.make_batch(args.model, 2, 32, generator=gen)
        traffic = _traffic()
        if traffic is not None:
            traffic.clear()  # before backward: a per-layer optimizer steps inside it
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sent.append(None if traffic is None else dict(traffic))
    return {"state": _state_bytes(opt, lookup), "refresh_step": sent[0], "plain_step": sent[-1]}


def run(rank: int, world: int, init_file: str, out: str, args) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        res = {}
        for name in args.optimizers:
            try:
                res[name] = _one(name, args, mesh, rank)
            except Exception as e:  # noqa: BLE001 — an old checkout's failure is a result here
                res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
        with open(f"{out}.{rank}", "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    import torch.multiprocessing as mp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    p.add_argument("--json", help="also write the per-rank results here")
    args = p.parse_args(argv)
    d = tempfile.mkdtemp()
    out = os.path.join(d, "out")
    mp.spawn(run, args=(args.world, os.path.join(d, "init"), out, args), nprocs=args.world)
    ranks = [json.load(open(f"{out}.{r}")) for r in range(args.world)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(ranks, f, indent=1)
    cats = ("moments", "quant_stats", "projectors", "history")
    print(f"{args.model}, {args.world} ranks, rank {args.rank}: optimizer state per rank (KiB, max over "
          f"ranks) and bytes sent per rank into the optimizer's collectives (max over ranks)")
    print(f"{'optimizer':26s}" + "".join(f"{c:>12s}" for c in cats) + f"{'total':>10s}{'refresh B':>12s}{'plain B':>10s}")
    for name in args.optimizers:
        rows = [r[name] for r in ranks]
        if "error" in rows[0]:
            print(f"{name:26s} {rows[0]['error']}")
            continue
        per = {c: max(r["state"].get(c, 0) for r in rows) for c in cats}
        total = max(sum(r["state"].values()) for r in rows)
        sent = []
        for key in ("refresh_step", "plain_step"):
            vals = [r[key] for r in rows]
            sent.append("n/a" if vals[0] is None else str(max(sum(v.values()) for v in vals)))
        print(f"{name:26s}" + "".join(f"{per[c] / 1024:12.1f}" for c in cats)
              + f"{total / 1024:10.1f}{sent[0]:>12s}{sent[1]:>10s}")


if __name__ == "__main__":
    sys.exit(main())
