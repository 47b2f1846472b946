"""HF -> sgj -> HF and orbax round trips are bit-exact; every bad checkpoint gets its clear error."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import selfguard_jax as sgj
from selfguard_jax import checkpoint
from selfguard_jax.config import ConfigError, ModelConfig
from test_parity import hf_run, ragged_batch
from tiny_models import save_hf_model


def tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.mark.parametrize("name,scan_layers,one_layer", [
    ("qwen2_tied", True, False), ("qwen3_headdim", False, False), ("llama3_rope", True, False),
    ("qwen3_headdim", True, True), ("mistral_gqa", False, True)])
def test_hf_roundtrip_bit_exact(hf_dirs, tmp_path, name, scan_layers, one_layer):
    """Both param layouts; a one-layer model too (its layer keys are single keys, still stacked)."""
    folder, model = hf_dirs[name]
    if one_layer:
        folder = tmp_path / "one"
        model = save_hf_model(name, folder, num_hidden_layers=1)
    lm = sgj.load(folder, scan_layers=scan_layers)
    out = checkpoint.export_hf(lm.params, lm.config, tmp_path / "out")
    src, dst = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
    tied = lm.config.tie_word_embeddings
    assert set(dst) == set(src) - ({"lm_head.weight"} if tied else set())
    for key, value in dst.items():
        assert np.array_equal(value, src[key]), key
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask = ragged_batch([4, 6], 6, "left")
    assert torch.equal(hf_run(back, ids, mask).logits, hf_run(model, ids, mask).logits)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_orbax_roundtrip_bit_exact(hf_dirs, tmp_path, scan_layers):
    folder, _ = hf_dirs["qwen3_headdim"]
    lm = sgj.load(folder, scan_layers=scan_layers)
    checkpoint.save_orbax(lm.params, lm.config, tmp_path / "ob")
    again = sgj.load(tmp_path / "ob", scan_layers=scan_layers)
    assert again.config == lm.config
    assert tree_equal(again.params, lm.params)


def broken_copy(hf_dirs, tmp_path, name="mistral_gqa"):
    folder, _ = hf_dirs[name]
    dst = tmp_path / "broken"
    shutil.copytree(folder, dst)
    return dst, load_file(dst / "model.safetensors")


def test_bad_layer_layout_refused(hf_dirs):
    folder, _ = hf_dirs["qwen2_tied"]
    with pytest.raises(ValueError, match="scan_layers must be True, False or None"):
        sgj.load(folder, scan_layers="scan")
    lm = sgj.load(folder, scan_layers=False)
    short = dataclasses.replace(lm, params=lm.params | {"layers": lm.params["layers"][:-1]})
    with pytest.raises(ValueError, match="per-layer dicts but the config has"):
        short.forward([[1, 2, 3]])


def test_missing_tensor(hf_dirs, tmp_path):
    dst, tensors = broken_copy(hf_dirs, tmp_path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, dst / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="model.layers.1.mlp.up_proj.weight.*missing"):
        sgj.load(dst)


def test_wrong_shape(hf_dirs, tmp_path):
    dst, tensors = broken_copy(hf_dirs, tmp_path)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((5, 64), np.float32)
    save_file(tensors, dst / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match=r"k_proj.weight.*shape \(5, 64\).*\(32, 64\)"):
        sgj.load(dst)


def test_unexpected_extra_tensor(hf_dirs, tmp_path):
    dst, tensors = broken_copy(hf_dirs, tmp_path)
    tensors["model.layers.0.mlp.extra.weight"] = np.zeros((2,), np.float32)
    save_file(tensors, dst / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="does not use.*mlp.extra.weight"):
        sgj.load(dst)


def test_pickle_only_checkpoint_refused(hf_dirs, tmp_path):
    dst, _ = broken_copy(hf_dirs, tmp_path)
    (dst / "model.safetensors").unlink()
    (dst / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(checkpoint.CheckpointError, match="never unpickled.*save_pretrained"):
        sgj.load(dst)


def test_sharded_checkpoint(tmp_path):
    from tiny_models import make_hf_model

    model = make_hf_model("qwen2_tied", seed=3)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids, mask = ragged_batch([5, 3], 5, "right")
    got = np.asarray(sgj.load(tmp_path).forward(ids, mask))
    ref = hf_run(model, ids, mask).logits.numpy()
    assert np.abs(got - ref)[mask.astype(bool)].max() < 1e-4


@pytest.mark.parametrize("field,value,match", [
    ("architectures", ["GPT2LMHeadModel"], "architectures"),
    ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0}, "dynamic"),
    ("use_sliding_window", True, "use_sliding_window"),
    ("hidden_act", "gelu", "hidden_act"),
])
def test_unsupported_config_refused(hf_dirs, field, value, match):
    folder, _ = hf_dirs["qwen2_tied"]
    hf = json.loads((folder / "config.json").read_text())
    hf.pop("rope_parameters", None)
    hf[field] = value
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict(hf)


def test_legacy_and_v5_rope_forms_agree():
    base = dict(architectures=["LlamaForCausalLM"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, vocab_size=100)
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    legacy = ModelConfig.from_dict({**base, "rope_theta": 500000.0, "rope_scaling": rope})
    v5 = ModelConfig.from_dict({**base, "rope_parameters": {**rope, "rope_theta": 500000.0}})
    assert legacy == v5 and legacy.rope_theta == 500000.0 and legacy.rope["rope_type"] == "llama3"
    assert hash(legacy) == hash(v5)


def test_bfloat16_kl_to_float32_reference(hf_dirs):
    folder, model = hf_dirs["qwen2_tied"]
    lm = sgj.load(folder, dtype="bfloat16")
    ids, mask = ragged_batch([10, 7, 4], 10, "left")
    ref = torch.log_softmax(hf_run(model, ids, mask).logits, -1).numpy()
    got = np.asarray(jax.nn.log_softmax(lm.forward(ids, mask), -1))
    kl = (np.exp(ref) * (ref - got)).sum(-1)[mask.astype(bool)].mean()
    assert lm.forward(ids, mask).dtype == np.float32
    assert kl < 1e-2, kl


def test_convert_and_info_cli(hf_dirs, tmp_path, capsys):
    from selfguard_jax import cli

    folder, _ = hf_dirs["llama3_rope"]
    assert cli.main(["convert", str(folder), str(tmp_path / "ob"), "--dtype", "float32"]) == 0
    assert tree_equal(sgj.load(tmp_path / "ob").params, sgj.load(folder).params)
    assert cli.main(["info", str(folder)]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert cli.main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
