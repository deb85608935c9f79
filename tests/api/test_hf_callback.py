"""NGLProfileCallback in a real transformers Trainer run (a tiny LLaMA, a few CPU steps)."""
import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ngl_profile.schema.results import load_results

transformers = pytest.importorskip("transformers")
BATCH, SEQ, STEPS = 2, 16, 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from ngl_profile.integrations.hf import NGLProfileCallback

    out = tmp_path_factory.mktemp("hf")
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      vocab_size=128, use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, cfg.vocab_size, (4 * BATCH * STEPS, SEQ), generator=g)
    args = TrainingArguments(output_dir=str(out / "trainer"), use_cpu=True, max_steps=STEPS,
                             per_device_train_batch_size=BATCH, save_strategy="no", report_to=[],
                             logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    callback = NGLProfileCallback(out=out / "run", gpu="4090", track_steps=2, warmup=1)
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows],
                      callbacks=[callback])
    trainer.train()
    return trainer, callback, out / "run"


def test_breakdown_matches_the_model_and_optimizer(trained):
    trainer, callback, out = trained
    c = callback.case
    model, opt = trainer.model, trainer.optimizer
    assert c.status == "ok" and c.provenance == "measured" and c.optimizer["name"] == "adamw"
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert c.memory_bytes["weights"] == weights
    # AdamW's state (exp_avg, exp_avg_sq, step) as it stands after training: all allocated at step 0
    state = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if torch.is_tensor(t))
    assert c.memory_bytes["moments"] == state
    assert sum(c.memory_bytes.values()) == c.peak_bytes
    assert len(c.step_peaks_bytes) == 2  # the two tracked optimizer steps
    assert c.step_time_s["steps"] == STEPS - 2 - 1 and c.tokens_per_s > 0
    assert _get_current_dispatch_mode() is None


def test_results_file_describes_the_run(trained):
    _, callback, out = trained
    run = load_results(out)
    s = run.scenario
    assert (s["name"], s["model"], s["batch_size"], s["seq_len"], s["dtype"]) == \
        ("hf-trainer", "LlamaForCausalLM", BATCH, SEQ, "float32")
    assert run.mode == "measured" and run.device == "cpu" and run.gpu["name"] == "rtx-4090"
    assert run.cases[0].memory_bytes == callback.case.memory_bytes


def test_bad_options_fail_when_the_callback_is_made():
    from ngl_profile.integrations.hf import NGLProfileCallback

    with pytest.raises(ValueError, match="unknown GPU 'nope'"):
        NGLProfileCallback(gpu="nope")
