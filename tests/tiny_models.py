"""Tiny random transformers models of every supported architecture, saved with save_pretrained (no download)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

COMMON = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3, max_position_embeddings=512,
              rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (config class, model class, overrides). Covers tied Qwen2, Qwen3 with head_dim != hidden/heads,
# Llama with llama3 rope, GQA ratios 1, 2 and 7, and Qwen3-MoE (all blocks routed, or dense and routed mixed).
SPECS = {
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM",
                   dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0)),
    "qwen3_headdim": ("Qwen3Config", "Qwen3ForCausalLM",
                      dict(num_attention_heads=4, num_key_value_heads=4, head_dim=24, tie_word_embeddings=False)),
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM",
                    dict(num_attention_heads=7, num_key_value_heads=1, hidden_size=56, head_dim=8,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                         rope_theta=500000.0)),
    "mistral_gqa": ("MistralConfig", "MistralForCausalLM",
                    dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=None)),
    # every block routed, top 2 of 8 renormalised; a decode step of 1-3 rows takes the gathered-experts path
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                       num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)),
    # dense and routed blocks in one stack (block 0 dense by mlp_only_layers), top 3 of 6 not renormalised
    "qwen3_moe_mixed": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                        dict(num_attention_heads=4, num_key_value_heads=4, head_dim=16, num_experts=6,
                             num_experts_per_tok=3, moe_intermediate_size=24, norm_topk_prob=False,
                             mlp_only_layers=[0], decoder_sparse_step=1)),
    # sliding (window 4), full, sliding; sinks; YaRN; top 2 of 8 with router bias; a SwiGLU limit of 0.1 so both
    # clamps bite on these small activations
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",
                dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=8,
                     num_experts_per_tok=2, intermediate_size=32, sliding_window=4, swiglu_limit=0.1,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
}
# Gemma 3 (text): sliding and global layers with their own rope bases (the global one linearly scaled), a window
# shorter than the test sequences, QK-norm, query_pre_attn_scalar != head_dim, soft-capped logits.
GEMMA_SPECS = {
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=4, sliding_window=5,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
                    rope_local_base_freq=100.0, rope_theta=5000.0, rope_scaling={"rope_type": "linear", "factor": 2.0},
                    query_pre_attn_scalar=24, final_logit_softcapping=3.0,
                    tie_word_embeddings=True)),
    # as released: pattern of 6 (5 sliding, then one global), no soft-capping, one KV head
    "gemma3_pattern": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                       dict(num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_hidden_layers=7,
                            sliding_window=4, query_pre_attn_scalar=32, rope_theta=1_000_000.0)),
}
# Phi-3: fused qkv_proj / gate_up_proj, partial rotary (Phi-4-mini's 0.75) and LongRoPE past a short original context.
PHI3_SPECS = {
    "phi3_longrope": ("Phi3Config", "Phi3ForCausalLM",
                      dict(num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.75,
                           original_max_position_embeddings=8, max_position_embeddings=64,
                           rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.3, 1.7, 2.1, 2.9, 3.3],
                                         "long_factor": [1.5, 2.5, 4.0, 6.0, 9.0, 12.0]})),
    "phi3_plain": ("Phi3Config", "Phi3ForCausalLM", dict(num_attention_heads=4, num_key_value_heads=4)),
}
ALL_SPECS = {**SPECS, **GEMMA_SPECS, **PHI3_SPECS}


MOE_SPECS = ("qwen3_moe", "qwen3_moe_mixed", "gpt_oss")


def spec_params(fast: tuple[str, ...] | None = None) -> list:
    """SPECS names for parametrize: the mixture-of-experts ones marked slow (test_moe.py covers them fast), and with
    `fast` every name not in it."""
    import pytest

    return [pytest.param(n, marks=pytest.mark.slow) if n in MOE_SPECS or (fast is not None and n not in fast) else n
            for n in SPECS]


def make_hf_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    cfg_cls, model_cls, extra = ALL_SPECS[name]
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    if getattr(cfg, "num_local_experts", 0) or getattr(cfg, "num_experts", 0):  # transformers' plain expert loop
        model.set_experts_implementation("eager")
    with torch.no_grad():  # norms at one hide bugs: give every norm and bias a random value
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_hf_model(name: str, folder: Path, seed: int = 0, **overrides) -> torch.nn.Module:
    model = make_hf_model(name, seed, **overrides)
    model.save_pretrained(folder)
    return model
