"""Presets for the mixture-of-experts and Phi-4 reasoning models (and Gemma 3 270M): each matches the ModelConfig built from its model's
published config.json facts, records no steering setting (relative depth only, not set by a sweep), and its
steer_depth resolves to the paper's blocks 30-32 of 36 at this model's depth, shown only as a suggestion."""

import json
from pathlib import Path

import pytest

from selfguard_jax import model_presets
from selfguard_jax.config import ModelConfig
from selfguard_jax.model_presets import find_preset, load_model_preset, relative_layers
from selfguard_jax.recipes import get_recipe

CONFIGS = Path(__file__).resolve().parent.parent / "benchmarks" / "configs"
QWEN3_30B = json.loads((CONFIGS / "qwen3-30b-a3b" / "config.json").read_text())
GPT_OSS_20B = json.loads((CONFIGS / "gpt-oss-20b" / "config.json").read_text())
PHI3 = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "num_attention_heads": 40, "num_key_value_heads": 10,
        "intermediate_size": 17920, "rope_theta": 250000.0, "max_position_embeddings": 16384}
# The published config.json of each model: the 30B and 20B files as copied, the others' differing fields.
MODELS = {
    "qwen3-30b-a3b": (QWEN3_30B, [40, 41, 43]),
    "qwen3-235b-a22b": (QWEN3_30B | {"num_hidden_layers": 94, "hidden_size": 4096, "num_attention_heads": 64,
                                     "moe_intermediate_size": 1536, "intermediate_size": 12288}, [78, 81, 84]),
    "gpt-oss-20b": (GPT_OSS_20B, [20, 21]),
    "gpt-oss-120b": (GPT_OSS_20B | {"num_hidden_layers": 36, "num_local_experts": 128,
                                    "layer_types": ["sliding_attention", "full_attention"] * 18}, [30, 31, 32]),
    "phi-4-reasoning": (PHI3 | {"num_hidden_layers": 40, "hidden_size": 5120, "vocab_size": 100352}, [33, 34, 36]),
    "phi-4-mini-reasoning": (PHI3 | {"num_hidden_layers": 32, "hidden_size": 3072, "vocab_size": 200064,
                                     "num_attention_heads": 24, "num_key_value_heads": 8, "intermediate_size": 8192,
                                     "partial_rotary_factor": 0.75}, [27, 28]),
    "gemma-3-270m": ({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "num_hidden_layers": 18,
                      "hidden_size": 640, "vocab_size": 262144, "num_attention_heads": 4, "num_key_value_heads": 1,
                      "head_dim": 256, "intermediate_size": 2048, "sliding_window": 512}, [15, 16]),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_preset_matches_its_models_config_and_suggests_relative_depth(name):
    hf, layers = MODELS[name]
    cfg = ModelConfig.from_dict(hf)
    preset = find_preset(cfg)
    assert preset is not None and preset.name == name
    assert preset.steer_layers is None and preset.steer_alpha is None
    assert preset.status == "relative depth, not set by a sweep"
    # the paper's blocks 30-32 of 36 at this depth: the hand-computed ids, and the same rule as for unknown models
    assert preset.suggested_layers() == layers == relative_layers(cfg.num_layers)
    assert all(0 <= k < cfg.num_layers for k in layers)


def test_relative_depth_is_suggested_never_applied():
    cfg = ModelConfig.from_dict(GPT_OSS_20B)
    with pytest.raises(ValueError, match=r"records no steering setting yet \(relative depth, not set by a sweep\).*"
                                         r"steer_depth \[0.8333, 0.8611, 0.8889\].*would be --layers 20,21"):
        get_recipe("selfguard", model_config=cfg)
    # the caller's own layers and alpha are taken as given
    r = get_recipe("selfguard", model_config=cfg, steer_layers=[20, 21], steer_alpha=0.2)
    assert (r.steer_layers, r.steer_alpha) == ((20, 21), 0.2)


def test_harmony_presets_carry_the_chat_module_markers():
    from selfguard_jax.chat import HARMONY_THINK_END, HARMONY_THINK_START

    for name in ("gpt-oss-20b", "gpt-oss-120b"):
        assert find_preset(name=name).think_markers == (HARMONY_THINK_START, HARMONY_THINK_END)


def test_steer_depth_out_of_range_is_refused(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: x\nsteer_depth: [30, 31]\n")
    with pytest.raises(ValueError, match=r"steer_depth \[30, 31\] must be fractions"):
        load_model_preset(tmp_path / "bad.yaml")
    assert model_presets.ModelPreset("p", "m").suggested_layers(10) is None
