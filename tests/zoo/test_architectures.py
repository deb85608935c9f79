"""Every architecture the zoo promises, built from a small config under FakeTensorMode: its
parameter count and its low-rank selection against hand counts from the config, and one training
step that runs (forward, backward, a low-rank optimizer step) without allocating anything."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake

from ngl_profile.optim.params import low_rank_parameters, low_rank_patterns
from ngl_profile.zoo.configs import spec_from_table
from ngl_profile.zoo.models import build_model, make_batch, parameter_count
from ngl_profile.zoo.optimizers import build

H, I, L, HEADS, KV, V, E = 64, 128, 2, 4, 2, 1000, 4
D = H // HEADS  # head_dim
KVD = KV * D  # k and v projections' output width (GQA)
ATTN = 2 * H * H + 2 * H * KVD  # q, o and k, v weights
SMALL = dict(hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=HEADS,
             num_key_value_heads=KV, vocab_size=V, bos_token_id=None, eos_token_id=None, pad_token_id=None)
GPT2 = dict(n_embd=H, n_layer=L, n_head=HEADS, vocab_size=V, n_positions=128, bos_token_id=None, eos_token_id=None)
NEOX = dict(hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=HEADS, vocab_size=V,
            bos_token_id=None, eos_token_id=None)

# (architecture, extra config keys, total parameters, low-rank parameters, low-rank name patterns)
CASES = [
    # LLaMA-style: untied embedding and head, two RMSNorms per block and one at the end, SwiGLU (3 matrices)
    ("llama", {}, 2 * V * H + L * (ATTN + 3 * H * I + 2 * H) + H, L * (ATTN + 3 * H * I),
     ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    ("mistral", {}, 2 * V * H + L * (ATTN + 3 * H * I + 2 * H) + H, L * (ATTN + 3 * H * I),
     ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    # Qwen2: biases on q, k, v (never low rank)
    ("qwen2", {}, 2 * V * H + L * (ATTN + (H + 2 * KVD) + 3 * H * I + 2 * H) + H, L * (ATTN + 3 * H * I),
     ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    # Gemma: tied embedding (counted once)
    ("gemma", {"head_dim": D}, V * H + L * (ATTN + 3 * H * I + 2 * H) + H, L * (ATTN + 3 * H * I),
     ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    # Gemma 2: four norms per block
    ("gemma2", {"head_dim": D}, V * H + L * (ATTN + 3 * H * I + 4 * H) + H, L * (ATTN + 3 * H * I),
     ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    # Phi-3: fused qkv_proj ((h + 2·kv·d) × h) and gate_up_proj (2i × h)
    ("phi3", {}, 2 * V * H + L * (ATTN + 3 * H * I + 2 * H) + H, L * (ATTN + 3 * H * I),
     ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]),
    # Mixtral: E fused experts per block (E·2i·h and E·h·i), an E×h router that stays plain
    ("mixtral", {"num_local_experts": E, "num_experts_per_tok": 2},
     2 * V * H + L * (ATTN + E * H + 3 * E * H * I + 2 * H) + H, L * (ATTN + 3 * E * H * I),
     ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.experts.gate_up_proj", "mlp.experts.down_proj"]),
]


def _pattern(prefix, names):
    return [f"{prefix}.*.{n}" + ("" if n.startswith("mlp.experts.") else ".weight") for n in names]


def _check(spec, total, low, patterns):
    with FakeTensorMode():  # eager: Gemma 2 has no SDPA path (and parameters do not depend on it)
        model = build_model(spec, torch.bfloat16, attention="eager")
    params = list(model.parameters())
    assert all(is_fake(p) and p.dtype == torch.bfloat16 for p in params)
    assert sum(p.numel() for p in params) == total == parameter_count(spec)
    mats, rest = low_rank_parameters(model)
    assert sum(p.numel() for p in mats) == low
    assert sorted(low_rank_patterns(model)) == sorted(patterns)
    assert len(mats) + len(rest) == len(params)
    return model


@pytest.mark.parametrize("arch,extra,total,low,names", CASES, ids=[c[0] for c in CASES])
def test_llama_family_counts_and_selection(arch, extra, total, low, names):
    spec = spec_from_table({"architecture": arch, **SMALL, **extra})
    assert spec.architecture == arch and spec.task == "causal-lm"
    _check(spec, total, low, _pattern("model.layers", names))


def test_gpt2_conv1d_matrices():
    # Conv1D stores a linear in×out; c_attn (h × 3h), c_proj (h × h), c_fc (h × 4h), mlp c_proj (4h × h);
    # learned positions (n_positions × h), LayerNorms and every Conv1D with a bias; tied head
    p = GPT2["n_positions"]
    spec = spec_from_table({"architecture": "gpt2", **GPT2})
    total = V * H + p * H + L * (12 * H * H + 13 * H) + 2 * H
    _check(spec, total, L * 12 * H * H,
           [f"transformer.h.*.{n}.weight" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")])
    assert spec.max_seq_len == p  # its position table is the limit


def test_gpt_neox_counts():
    spec = spec_from_table({"architecture": "gpt_neox", **NEOX})
    per_block = 4 * H + (3 * H * H + 3 * H) + (H * H + H) + (I * H + I) + (H * I + H)
    _check(spec, 2 * V * H + L * per_block + 2 * H, L * (4 * H * H + 2 * H * I),
           [f"gpt_neox.layers.*.{n}.weight" for n in ("attention.query_key_value", "attention.dense",
                                                      "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")])


@pytest.mark.parametrize("arch,extra,opt", [("mixtral", {"num_local_experts": E, "num_experts_per_tok": 2},
                                             "natural-galore-8bit-layerwise"),
                                            ("gemma2", {"head_dim": D}, "natural-galore"),
                                            ("gpt2", None, "lora")])
def test_a_step_runs_under_fake_tensors(arch, extra, opt):
    cfg = GPT2 if extra is None else {**SMALL, **extra}
    spec = spec_from_table({"architecture": arch, **cfg})
    attention = "eager" if arch == "gemma2" else "sdpa"  # transformers has no SDPA path for Gemma 2
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build_model(spec, torch.bfloat16, attention=attention)
        o = build(opt, model, rank=8)
        for _ in range(2):  # the first step makes the projectors and the state, the second reuses them
            batch = make_batch(spec, 2, 16)
            loss = model(**batch).loss
            loss.backward()
            o.step()
            o.zero_grad(set_to_none=True)
    assert loss.shape == () and loss.dtype == torch.float32 and is_fake(loss)


def test_sdpa_refused_where_transformers_has_none():
    spec = spec_from_table({"architecture": "gemma2", **SMALL, "head_dim": D})
    with pytest.raises(ValueError, match="no SDPA attention for gemma2"):
        with FakeTensorMode():
            build_model(spec, torch.bfloat16, attention="sdpa")
    with pytest.raises(ValueError, match="attention must be one of sdpa, eager"):
        build_model("tiny", attention="flash")


def test_use_cache_off_and_attention_passed():
    with FakeTensorMode():
        model = build_model("tiny", torch.bfloat16, attention="eager")
    assert model.config.use_cache is False and model.config._attn_implementation == "eager"
    assert model.training and all(is_fake(b) for b in model.buffers())
