"""A 128k vocabulary makes the logits the largest tensors of a small-batch step, and transformers'
loss upcasts them to float32 before the cross-entropy (loss_utils.ForCausalLMLoss: logits.float()).
The estimate must count that float32 copy, not the bfloat16 logits the model returns."""
from ngl_profile.engine.case import run_case
from ngl_profile.zoo.configs import spec_from_table

from tests.helpers import case_spec, scenario_dict

V, H, B, S = 128256, 16, 2, 32  # Llama-3's vocabulary, a hidden size too small to matter beside it
T = B * S


def test_logits_float32_upcast_is_counted():
    spec = spec_from_table(dict(architecture="llama", hidden_size=H, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, vocab_size=V))
    scn = scenario_dict(model=spec.name, model_config=spec.to_record(), dtype="bfloat16", batch_size=B, seq_len=S)
    r = run_case(case_spec("adamw", mode="estimated", scenario=scn))
    assert r.status == "ok", r.message
    m, logits32 = r.memory_bytes, T * V * 4
    # the peak opens the backward: saved for it, the float32 log-probabilities (log_softmax of the
    # upcast logits: B·S·V·4, an activation); made by it, the gradient of the log-probabilities and
    # the one of the upcast logits (2·B·S·V·4, temporaries). Everything else (a one-layer, 16-wide
    # block) is under 1 % of one such tensor. Had the bfloat16 logits been counted instead of the
    # upcast, the activations would be B·S·V·2.
    assert r.peak_phase == "backward"
    assert 0 <= m["activations"] - logits32 < logits32 // 100, (m["activations"], logits32)
    assert 0 <= m["temporaries"] - 2 * logits32 < logits32 // 100, (m["temporaries"], logits32)
    # the weights are the embedding and the head in bfloat16 (the blocks are < 1 % of them)
    assert 0 <= m["weights"] - 2 * V * H * 2 < V * H * 2 // 100
