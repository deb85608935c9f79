"""Profile a transformers Trainer run: NGLProfileCallback tracks the first optimizer steps' memory
by category, times the rest, and writes results.json at the end of training.

    python examples/hf_trainer_callback.py [OUT_DIR]

A tiny LLaMA built from its config (nothing downloaded), a few steps on the CPU, nothing saved.
"""
import sys
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from ngl_profile.integrations.hf import NGLProfileCallback


def main(out="reports/example-hf-trainer"):
    config = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=1000, use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, config.vocab_size, (32, 64), generator=g)
    dataset = [{"input_ids": r, "labels": r} for r in rows]
    callback = NGLProfileCallback(out=out, gpu="4090", track_steps=2, warmup=1)
    with tempfile.TemporaryDirectory() as scratch:  # the Trainer wants an output_dir; nothing is saved there
        args = TrainingArguments(output_dir=scratch, use_cpu=not torch.cuda.is_available(), max_steps=5,
                                 per_device_train_batch_size=4, save_strategy="no", report_to=[],
                                 logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()
    c = callback.case
    parts = ", ".join(f"{k} {v / 2**20:.2f}" for k, v in c.memory_bytes.items() if v)
    print(f"{c.label}: peak {c.peak_bytes / 2**20:.2f} MiB in {c.peak_phase} ({parts} MiB)")
    print(f"results: {out}/results.json (ngl-profile report {out})")
    return callback


if __name__ == "__main__":
    main(*sys.argv[1:2])
