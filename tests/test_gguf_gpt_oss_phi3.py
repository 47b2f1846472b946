"""gpt-oss and Phi-3 GGUF files against independent references: tiny transformers models written to GGUF as llama.cpp's
convert_hf_to_gguf.py does (GptOssModel: gate_up_proj split into ffn_gate_exps/ffn_up_exps and transposed, experts
in MXFP4 repacked from the HF blocks; Phi3MiniModel: fused attn_qkv/ffn_up, partial rotary as rope.dimension_count,
LongRoPE factors as rope_factors_long/short tensors), read back by `sgj.load` and compared with the PyTorch model."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from test_gguf_checkpoint import ids, torch_logits, transformers_gguf_model, write_header  # noqa: E402
from tiny_models import make_hf_model  # noqa: E402

import selfguard_jax as sgj  # noqa: E402
from selfguard_jax.gguf_checkpoint import GGUFFile  # noqa: E402
from selfguard_jax.tensor_source import read_config  # noqa: E402


def _header(w, c, head_dim: int | None = None) -> None:
    write_header(w, c, head_dim)
    w.add_pad_token_id(c.pad_token_id)


def _finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add(w, name: str, data: np.ndarray, qtype: Q) -> None:
    if data.ndim == 1 or qtype == Q.F32:
        w.add_tensor(name, np.ascontiguousarray(data, np.float32))
    else:
        w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(data), qtype).view(np.uint8), raw_dtype=qtype)


def random_mxfp4(rng, E: int, n_out: int, n_in: int):
    """HF MXFP4 blocks [E, out, in / 32, 16] and E8M0 scales [E, out, in / 32] (values of order 0.1)."""
    return (rng.integers(0, 256, (E, n_out, n_in // 32, 16), dtype=np.uint8),
            rng.integers(119, 123, (E, n_out, n_in // 32), dtype=np.uint8))


def transform_nibble_layout(b: np.ndarray) -> np.ndarray:
    """convert_hf_to_gguf.py GptOssModel.transform_nibble_layout, in numpy: HF's MXFP4 nibble order -> ggml's."""
    t = ((b & 0x0F) << 4) | ((b & 0xF0) >> 4)
    a, c = np.split(t, 2, axis=-1)
    a = np.stack([a & 0xF0, (a << 4) & 0xF0], axis=-1).reshape(t.shape)
    c = np.stack([c >> 4, c & 0x0F], axis=-1).reshape(t.shape)
    out = a | c
    return ((out & 0xF0) >> 4) | ((out & 0x0F) << 4)


def repack_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """GptOssModel.repack_mxfp4: each 32-value block as its scale byte then its 16 nibble bytes, rows flattened."""
    data = np.concatenate([scales[..., None], transform_nibble_layout(blocks)], axis=-1)
    return np.ascontiguousarray(data.reshape(*data.shape[:2], -1))


def write_gpt_oss_gguf(model, path, qtype: Q = Q.F32, mxfp4_seed: int | None = None) -> None:
    """GptOssModel's file. With `mxfp4_seed`, the experts are random MXFP4 blocks repacked as the converter does,
    and the model's experts are set to transformers' own dequantisation of the same blocks (the reference)."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    c = model.config
    rope = c.rope_parameters
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    _header(w, c, c.head_dim)
    w.add_expert_count(c.num_local_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_sliding_window(c.sliding_window)
    w.add_expert_feed_forward_length(c.intermediate_size)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT_OSS, c.num_hidden_layers)
    rng = np.random.default_rng(mxfp4_seed)
    state = model.state_dict()
    for key, t in list(state.items()):
        data = t.detach().float().numpy()
        if "sinks" in key:
            key += ".weight"
        base = key.rsplit(".", 1)[0] if key.endswith((".weight", ".bias")) else key
        if key.endswith("experts.gate_up_proj_bias"):
            for part, half in (("gate_proj", data[..., ::2]), ("up_proj", data[..., 1::2])):
                w.add_tensor(names.get_name(key.replace("gate_up_proj_bias", part)) + ".bias", half)
        elif key.endswith("experts.down_proj_bias"):
            w.add_tensor(names.get_name(key.replace("down_proj_bias", "down_proj")) + ".bias", data)
        elif key.endswith(("experts.gate_up_proj", "experts.down_proj")) and mxfp4_seed is not None:
            E, n_in, n_out = data.shape
            blocks, scales = random_mxfp4(rng, E, n_out, n_in)
            with torch.no_grad():
                state[key].copy_(convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                                            dtype=torch.float32))
            if key.endswith("down_proj"):
                w.add_tensor(names.get_name(key) + ".weight", repack_mxfp4(blocks, scales), raw_dtype=Q.MXFP4)
            for part, sl in (("gate_proj", slice(0, None, 2)), ("up_proj", slice(1, None, 2))):
                if key.endswith("gate_up_proj"):
                    w.add_tensor(names.get_name(key.replace("gate_up_proj", part)) + ".weight",
                                 repack_mxfp4(blocks[:, sl], scales[:, sl]), raw_dtype=Q.MXFP4)
        elif key.endswith("experts.gate_up_proj"):
            data = data.swapaxes(-1, -2)
            for part, half in (("gate_proj", data[:, ::2]), ("up_proj", data[:, 1::2])):
                _add(w, names.get_name(key.replace("gate_up_proj", part)) + ".weight", half, qtype)
        elif key.endswith("experts.down_proj"):
            _add(w, names.get_name(key) + ".weight", data.swapaxes(-1, -2), qtype)
        else:
            _add(w, names.get_name(base) + key[len(base):], data, qtype)
    _finish(w)


def write_phi3_gguf(model, path, qtype: Q = Q.F32) -> None:
    """Phi3MiniModel's file: rope dims int(partial * hidden) // heads, the original context, LongRoPE factors."""
    import math

    c = model.config
    rope = c.rope_parameters
    w = gguf.GGUFWriter(str(path), "phi3")
    _header(w, c)
    orig = rope.get("original_max_position_embeddings", c.original_max_position_embeddings)
    w.add_rope_scaling_orig_ctx_len(orig)
    w.add_rope_dimension_count(int(rope.get("partial_rotary_factor", 1.0) * c.hidden_size) // c.num_attention_heads)
    w.add_sliding_window(c.sliding_window or 0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, c.num_hidden_layers)
    if rope.get("long_factor"):
        scale = c.max_position_embeddings / orig
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
        w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight",
                     np.asarray(rope["long_factor"], np.float32))
        w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight",
                     np.asarray(rope["short_factor"], np.float32))
    for key, t in model.state_dict().items():
        if c.tie_word_embeddings and key == "lm_head.weight":
            continue
        _add(w, names.get_name(key, try_suffixes=(".weight", ".bias")), t.detach().float().numpy(), qtype)
    _finish(w)


@pytest.mark.parametrize("mxfp4", [False, True], ids=["f32", "mxfp4"])
def test_gpt_oss_gguf_tensors_are_the_hf_tensors(tmp_path, mxfp4):
    """Every HF tensor read back from the file equals the model's, element for element: llama.cpp's split and
    transposed experts joined back, sinks, router bias; MXFP4 experts (repacked from HF blocks as llama.cpp does,
    dequantised by gguf.quants) equal transformers' own dequantisation of the HF blocks."""
    model = make_hf_model("gpt_oss", swiglu_limit=7.0)
    write_gpt_oss_gguf(model, tmp_path / "m.gguf", mxfp4_seed=3 if mxfp4 else None)
    src = GGUFFile(tmp_path / "m.gguf")
    kinds = {Q(t.tensor_type).name for t in src.parts.values() if t.name.endswith(".weight")}
    assert kinds == {"MXFP4" if mxfp4 else "F32"}
    state = model.state_dict()
    assert src.keys() == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(src.get(key), value.numpy(), err_msg=key)
    cfg = read_config(tmp_path / "m.gguf")
    assert (cfg.model_type, cfg.layer_windows, cfg.num_experts, cfg.num_experts_per_tok, cfg.head_dim) == (
        "gpt_oss", (4, 0, 4), 8, 2, 16)


@pytest.mark.slow
@pytest.mark.parametrize("mxfp4", [False, True], ids=["f32", "mxfp4"])
def test_gpt_oss_gguf_equals_the_original_model(tmp_path, mxfp4):
    """The forward from the file: logits within 1e-4 of the PyTorch model (with MXFP4, the model holds
    transformers' dequantisation of the same blocks)."""
    model = make_hf_model("gpt_oss", swiglu_limit=7.0)
    write_gpt_oss_gguf(model, tmp_path / "m.gguf", mxfp4_seed=3 if mxfp4 else None)
    lm = sgj.load(tmp_path / "m.gguf")
    x = ids(model.config.vocab_size, T=12)
    ref = torch_logits(model, x)
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(np.asarray(lm.forward(x)), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("T", [pytest.param(6, marks=pytest.mark.slow), 12])
def test_phi3_longrope_gguf_equals_the_original_model(tmp_path, T):
    """Partial rotary and LongRoPE from the file: short factors within the original context (8), long past it."""
    model = make_hf_model("phi3_longrope")
    write_phi3_gguf(model, tmp_path / "m.gguf")
    lm = sgj.load(tmp_path / "m.gguf")
    assert lm.config.partial_rotary_factor == 0.75
    x = ids(model.config.vocab_size, T=T)
    np.testing.assert_allclose(np.asarray(lm.forward(x)), torch_logits(model, x), atol=1e-4, rtol=1e-4)


def test_phi3_quantised_gguf_equals_transformers_gguf_loading(tmp_path):
    write_phi3_gguf(make_hf_model("phi3_plain"), tmp_path / "m.gguf", Q.Q8_0)
    lm = sgj.load(tmp_path / "m.gguf")
    x = ids(lm.config.vocab_size, T=12)
    ref = torch_logits(transformers_gguf_model(tmp_path / "m.gguf"), x)
    np.testing.assert_allclose(np.asarray(lm.forward(x)), ref, atol=1e-4, rtol=1e-4)
