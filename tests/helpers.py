"""Builders for the specs the tests hand to the run machinery."""


def scenario_dict(**over):
    base = dict(name="t", model="tiny", seq_len=32, batch_size=2, dtype="float32", steps=2, warmup=0,
                gpu="rtx-4090", checkpointing=False, mode="auto", lr=1e-3, source="")
    base.update(over)
    return base


def case_spec(name, mode="measured", label=None, scenario=None, **hparams):
    return {"scenario": scenario or scenario_dict(), "mode": mode, "device": "cpu", "target_bytes": 24 << 30,
            "case": {"name": name, "label": label or name, "hparams": hparams}}
