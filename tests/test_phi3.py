"""Phi-3 (Phi-4-mini-reasoning / Phi-4-reasoning) against transformers' Phi3ForCausalLM on tiny random configs,
float32 (tolerance 1e-4): fused qkv_proj / gate_up_proj split through the weight table, partial rotary, LongRoPE
on both sides of the original context length."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_decode import PROMPTS, hf_greedy
from test_parity import TOL, ragged_batch
from tiny_models import PHI3_SPECS, save_hf_model

import selfguard_jax as sgj
from selfguard_jax.config import ConfigError, ModelConfig

ORIGINAL = PHI3_SPECS["phi3_longrope"][2]["original_max_position_embeddings"]


@pytest.fixture(scope="module")
def phi3_dirs(tmp_path_factory):
    out = {}
    for name in PHI3_SPECS:
        folder = tmp_path_factory.mktemp(name)
        out[name] = (folder, save_hf_model(name, folder))
    return out


def hf_rows(model, ids, mask):
    """transformers' logits row by row at batch 1 (LongRoPE picks its factors per call over the whole batch; here
    per row, as this project does, so a row's output never depends on the other rows)."""
    out = np.zeros(ids.shape + (model.config.vocab_size,), np.float32)
    for b in range(len(ids)):
        keep = mask[b].astype(bool)
        with torch.no_grad():
            out[b, keep] = model(torch.tensor(ids[b, keep][None])).logits[0].numpy()
    return out


@pytest.mark.parametrize("name", list(PHI3_SPECS))
@pytest.mark.parametrize("pad_side", ["left", pytest.param("right", marks=pytest.mark.slow)])
def test_logits_match_hf(phi3_dirs, name, pad_side):
    """Rows of 9 and 12 tokens pass the original context of 8 (long factors), rows of 4 and 1 do not (short)."""
    folder, model = phi3_dirs[name]
    lm = sgj.load(folder)
    ids, mask = ragged_batch([9, 4, 12, 1], 12, pad_side)
    err = np.abs(np.asarray(lm.forward(ids, mask)) - hf_rows(model, ids, mask))[mask.astype(bool)].max()
    print(f"{name} {pad_side}: logits max |diff| {err:.1e}")
    assert err < TOL


@pytest.mark.slow
def test_the_long_factors_are_used_past_the_original_context(phi3_dirs):
    folder, _ = phi3_dirs["phi3_longrope"]
    lm = sgj.load(folder)
    rope = dict(lm.config.rope_scaling)
    short_only = dataclasses.replace(lm.config, rope_scaling=tuple(sorted((rope | {"long_factor": rope[
        "short_factor"]}).items())))
    other = dataclasses.replace(lm, config=short_only)
    for n, differs in ((ORIGINAL, False), (ORIGINAL + 1, True)):
        ids, mask = ragged_batch([n], n, "left")
        diff = np.abs(np.asarray(lm.forward(ids, mask)) - np.asarray(other.forward(ids, mask))).max()
        assert (diff > 1e-3) == differs, (n, diff)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PHI3_SPECS))
def test_greedy_equals_transformers_generate(phi3_dirs, name):
    """Prompts of 2 to 11 tokens and 16 new ones: generation crosses the original context of 8."""
    folder, model = phi3_dirs[name]
    lm = sgj.load(folder)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())
    assert lm.generate(PROMPTS, max_new_tokens=16).tokens == hf_greedy(model, PROMPTS, 16)


@pytest.mark.slow
def test_export_fuses_the_projections_again(phi3_dirs, tmp_path):
    """export_hf writes qkv_proj and gate_up_proj back fused; transformers loads them as the same model."""
    from transformers import AutoModelForCausalLM

    from selfguard_jax.checkpoint import export_hf

    folder, model = phi3_dirs["phi3_longrope"]
    lm = sgj.load(folder)
    export_hf(lm.params, lm.config, tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    for key, w in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key].numpy(), w.numpy(), err_msg=key)
    assert again.config.rope_parameters["long_factor"] == model.config.rope_parameters["long_factor"]


@pytest.mark.parametrize("change, message", [
    ({"partial_rotary_factor": 0.7}, "odd number"),
    ({"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                          "original_max_position_embeddings": 8, "short_factor": [1.0] * 5,
                          "long_factor": [1.0] * 6}}, "short_factor"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                          "short_factor": [1.0] * 6, "long_factor": [1.0] * 6},
      "original_max_position_embeddings": None}, "original_max_position_embeddings"),
])
def test_bad_rotary_configs_are_refused(phi3_dirs, change, message):
    folder, _ = phi3_dirs["phi3_longrope"]
    hf = json.loads((folder / "config.json").read_text()) | change
    if "rope_parameters" not in change:
        hf["rope_parameters"] = {k: v for k, v in hf["rope_parameters"].items() if k != "partial_rotary_factor"}
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(hf)
