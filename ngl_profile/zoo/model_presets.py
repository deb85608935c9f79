"""The zoo's presets: transformers configs embedded as facts, random init, nothing downloaded.

The paper's LLaMA sizes are GaLore's configs/ (vocab 32000, SiLU, untied embeddings); `tiny` is a
few-hundred-thousand-parameter LLaMA for CI. The released models carry the shape keys of their
official config.json on the Hugging Face hub (the URL in each description), which is what memory
depends on: widths, depth, heads and KV heads (GQA), head_dim, vocabulary, tied embeddings,
experts. Keys that change no tensor's size are left out, among them Llama-3.1's "llama3" rope
scaling (it rescales the rotary frequencies, a 64-element buffer per layer either way), rope_theta
and the token ids. Default ranks follow configs.rank_for_hidden (hidden/4 to the nearest power of
two: GaLore's 1024 at 7B) unless GaLore's configs set one.
"""
from __future__ import annotations

from ngl_profile.zoo.configs import ModelSpec, rank_for_hidden

__all__ = ["PRESETS"]

_HUB = "https://huggingface.co/{}/blob/main/config.json"


def _llama(name, hidden, inter, layers, heads, rank, kv=None, vocab=32000, max_pos=2048, desc="", **extra):
    cfg = dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv or heads, vocab_size=vocab, max_position_embeddings=max_pos,
               tie_word_embeddings=False, **extra)
    return ModelSpec(name, "llama", cfg, rank, desc)


def _released(name, arch, repo, **cfg):
    return ModelSpec(name, arch, cfg, rank_for_hidden(cfg["hidden_size"]), f"{repo} ({_HUB.format(repo)})")


PRESETS = [
    _llama("tiny", 64, 172, 2, 4, 16, vocab=1000, desc="CI-sized LLaMA (~0.2M parameters)"),
    _llama("llama-60m", 512, 1376, 8, 8, 128, desc="GaLore configs/llama_60m"),
    _llama("llama-130m", 768, 2048, 12, 12, 256, desc="GaLore configs/llama_130m"),
    _llama("llama-350m", 1024, 2736, 24, 16, 256, desc="GaLore configs/llama_350m"),
    _llama("llama-1b", 2048, 5461, 24, 32, 512, desc="GaLore configs/llama_1b; rank 512 as in the paper's 1B pre-training table"),
    _llama("llama-7b", 4096, 11008, 32, 32, 1024, desc="GaLore configs/llama_7b (the Llama-2-7b shape)"),
    _llama("tinyllama-1.1b", 2048, 5632, 22, 32, 512, kv=4, desc="TinyLlama-1.1B shape, 4 KV heads; rank 512 as for llama-1b"),
    ModelSpec("roberta-base", "roberta", dict(num_hidden_layers=12), 8,
              "RobertaConfig defaults, GLUE-style sequence classification (2 labels)",
              max_seq_len=512, task="sequence-classification"),  # 514 positions, two reserved for padding
    # Llama 2: multi-head attention up to 13B, 8 KV heads at 70B; 4k context, rms_norm_eps 1e-5
    _released("llama-2-7b", "llama", "meta-llama/Llama-2-7b-hf", hidden_size=4096, intermediate_size=11008,
              num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
              max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    _released("llama-2-13b", "llama", "meta-llama/Llama-2-13b-hf", hidden_size=5120, intermediate_size=13824,
              num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
              max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    _released("llama-2-70b", "llama", "meta-llama/Llama-2-70b-hf", hidden_size=8192, intermediate_size=28672,
              num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
              max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # Llama 3.1: 128k vocabulary and context, 8 KV heads at every size
    _released("llama-3.1-8b", "llama", "meta-llama/Llama-3.1-8B", hidden_size=4096, intermediate_size=14336,
              num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
              max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False),
    _released("llama-3.1-70b", "llama", "meta-llama/Llama-3.1-70B", hidden_size=8192, intermediate_size=28672,
              num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
              max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False),
    _released("llama-3.1-405b", "llama", "meta-llama/Llama-3.1-405B", hidden_size=16384, intermediate_size=53248,
              num_hidden_layers=126, num_attention_heads=128, num_key_value_heads=8, vocab_size=128256,
              max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # v0.1: 32000 vocabulary, 4096-token sliding window (v0.3 has 32768 tokens and no window)
    _released("mistral-7b", "mistral", "mistralai/Mistral-7B-v0.1", hidden_size=4096, intermediate_size=14336,
              num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
              max_position_embeddings=32768, sliding_window=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # Qwen2 has biases on q, k and v; 152k vocabulary, untied at 7B
    _released("qwen2.5-7b", "qwen2", "Qwen/Qwen2.5-7B", hidden_size=3584, intermediate_size=18944,
              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
              max_position_embeddings=131072, use_sliding_window=False, rms_norm_eps=1e-6,
              tie_word_embeddings=False),
    # Gemma 2: head_dim 256 (16 × 256 ≠ hidden 3584), tied 256k embedding, logit soft-capping
    _released("gemma-2-9b", "gemma2", "google/gemma-2-9b", hidden_size=3584, intermediate_size=14336,
              num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
              max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256,
              attn_logit_softcapping=50.0, final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh",
              rms_norm_eps=1e-6, pad_token_id=0, tie_word_embeddings=True),
    # 8 experts per layer, 2 routed per token
    _released("mixtral-8x7b", "mixtral", "mistralai/Mixtral-8x7B-v0.1", hidden_size=4096, intermediate_size=14336,
              num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
              num_experts_per_tok=2, vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
              tie_word_embeddings=False),
]
