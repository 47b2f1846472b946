"""GGUF model files against independent references: tiny transformers models written to GGUF the way llama.cpp's
converter does (its own tensor-name map from the gguf package, q/k rows permuted for Llama), read back by
`sgj.load` and compared with the original PyTorch model (float types) and with transformers' own GGUF loader
(every quantised type); a hand-written block decoder checks the dequantisation kernel; errors name the problem."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from tiny_models import make_hf_model  # noqa: E402

import selfguard_jax as sgj  # noqa: E402
from selfguard_jax import cli  # noqa: E402
from selfguard_jax.checkpoint import CheckpointError  # noqa: E402
from selfguard_jax.tensor_source import read_config  # noqa: E402
from selfguard_jax.gguf_checkpoint import GGUFFile  # noqa: E402

ARCH = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA, "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
        "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3}
# A Llama whose every 2-D tensor row is a multiple of 256, so K-quant blocks (256 values) fit.
WIDE_LLAMA = dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                  rope_scaling=None, rope_theta=10000.0)
# Blocks of 256 values: bytes per block and the byte offsets of its float16 scale fields (ggml-common.h), set to
# small values so random blocks decode to weights of order 0.1-1. IQ4_XS is there to be refused.
K_BLOCK = {Q.Q4_K: (144, (0, 2), 2e-3), Q.Q5_K: (176, (0, 2), 1e-3), Q.Q6_K: (210, (208,), 1e-4),
           Q.IQ4_XS: (136, (0,), 1e-3)}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF half-split rope rows -> llama.cpp's interleaved rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_k_blocks(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    nbytes, scale_at, scale = K_BLOCK[qtype]
    blocks = rng.integers(0, 256, (rows, cols // 256, nbytes), dtype=np.uint8)
    for off in scale_at:
        blocks[..., off:off + 2] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
    return blocks.reshape(rows, -1)


def write_header(w, c, head_dim: int | None = None) -> None:
    """The metadata every decoder GGUF here carries, as llama.cpp's converter writes it: sizes, heads, rope base,
    norm epsilon, vocabulary and special ids (and the key / value width when `head_dim` is given)."""
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)


def write_gguf(model, path, qtype: Q = Q.F32, arch_name: str | None = None, as_llama: bool = False,
               seed: int = 0) -> None:
    """Write a transformers model as a GGUF file: 2-D weights in `qtype`, 1-D tensors float32 (as llama.cpp does).
    `as_llama` files it under llama, as llama.cpp does for Mistral."""
    c = model.config
    llama = as_llama or type(model).__name__ == "LlamaForCausalLM"
    arch = gguf.MODEL_ARCH.LLAMA if as_llama else ARCH[type(model).__name__]
    name = arch_name or gguf.MODEL_ARCH_NAMES[arch]
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w = gguf.GGUFWriter(str(path), name)
    write_header(w, c, head_dim)
    w.add_rope_dimension_count(head_dim)
    names = gguf.get_tensor_name_map(arch, c.num_hidden_layers)
    rng = np.random.default_rng(seed)
    for hf_key, t in model.state_dict().items():
        if c.tie_word_embeddings and hf_key == "lm_head.weight":
            continue
        data = t.detach().float().numpy()
        if llama and ".q_proj." in hf_key:
            data = llama_cpp_permute(data, c.num_attention_heads)
        if llama and ".k_proj." in hf_key:
            data = llama_cpp_permute(data, c.num_key_value_heads)
        out_name = names.get_name(hf_key, try_suffixes=(".weight", ".bias"))
        if data.ndim == 1 or qtype == Q.F32:
            w.add_tensor(out_name, np.ascontiguousarray(data))
        elif qtype == Q.F16:
            w.add_tensor(out_name, data.astype(np.float16))
        elif qtype in K_BLOCK:
            w.add_tensor(out_name, random_k_blocks(*data.shape, qtype, rng), raw_dtype=qtype)
        else:  # quantised bytes, [rows, bytes per row]
            w.add_tensor(out_name, gguf.quants.quantize(data, qtype).view(np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def ids(vocab: int, B: int = 2, T: int = 9) -> np.ndarray:
    return np.random.default_rng(1).integers(3, vocab, (B, T))


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(x)).logits.float().numpy()


def transformers_gguf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.parametrize("name,overrides", [
    ("qwen2_tied", {}), ("qwen3_headdim", {}), ("llama3_rope", {"rope_scaling": None}), ("mistral_gqa", {})])
def test_float32_gguf_equals_the_original_model(tmp_path, name, overrides):
    """F32 GGUF -> our forward equals the original PyTorch model (so names, q/k order and config are right)."""
    model = make_hf_model(name, **overrides)
    write_gguf(model, tmp_path / "m.gguf", as_llama=name == "mistral_gqa")
    lm = sgj.load(tmp_path / "m.gguf")
    assert lm.tokenizer is None and lm.config.num_layers == model.config.num_hidden_layers
    x = ids(model.config.vocab_size)
    np.testing.assert_allclose(np.asarray(lm.forward(x)), torch_logits(model, x), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_quantised_gguf_equals_transformers_gguf_loading(tmp_path, qtype):
    """Every supported quantised type, through our loader and through transformers' GGUF loader: same logits."""
    write_gguf(make_hf_model("llama3_rope", **WIDE_LLAMA), tmp_path / "m.gguf", qtype)
    lm = sgj.load(tmp_path / "m.gguf")
    x = ids(lm.config.vocab_size)
    ref = torch_logits(transformers_gguf_model(tmp_path / "m.gguf"), x)
    assert np.abs(ref).max() > 1e-2  # the random K blocks decode to a model with non-trivial logits
    np.testing.assert_allclose(np.asarray(lm.forward(x)), ref, atol=1e-4, rtol=1e-4)


def q4_1_by_hand(raw: np.ndarray) -> np.ndarray:
    """ggml's block_q4_1, decoded from its C definition: f16 d, f16 m, 16 bytes of nibbles; x = d * q + m with
    the low nibbles giving elements 0-15 and the high nibbles 16-31."""
    blocks = raw.reshape(-1, 20)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([blocks[:, 4:] & 0x0F, blocks[:, 4:] >> 4], axis=1).astype(np.float32)
    return d * q + m


def q8_0_by_hand(raw: np.ndarray) -> np.ndarray:
    """ggml's block_q8_0: f16 d, then 32 int8 values; x = d * q."""
    blocks = raw.reshape(-1, 34)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    return d * blocks[:, 2:].copy().view(np.int8).astype(np.float32)


@pytest.mark.parametrize("qtype,decode", [(Q.Q4_1, q4_1_by_hand), (Q.Q8_0, q8_0_by_hand)])
def test_dequantisation_matches_a_hand_written_block_decoder(tmp_path, qtype, decode):
    model = make_hf_model("qwen2_tied", hidden_size=64, intermediate_size=128)
    write_gguf(model, tmp_path / "m.gguf", qtype)
    src = GGUFFile(tmp_path / "m.gguf")
    key = "model.layers.1.mlp.up_proj.weight"
    t = src.tensors[key]
    expect = decode(np.asarray(t.data)).reshape(src.get(key).shape)
    np.testing.assert_array_equal(src.get(key), expect)
    assert np.abs(expect - model.state_dict()[key].numpy()).max() < 0.2  # and it is the weight, quantised


def test_metadata_becomes_the_config(tmp_path):
    model = make_hf_model("qwen3_headdim")
    write_gguf(model, tmp_path / "m.gguf")
    cfg = read_config(tmp_path / "m.gguf")
    c = model.config
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.intermediate_size, cfg.vocab_size, cfg.qk_norm, cfg.tie_word_embeddings, cfg.eos_token_ids) == (
        "Qwen3ForCausalLM", c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
        c.head_dim, c.intermediate_size, c.vocab_size, True, False, (c.eos_token_id,))
    assert cfg.rms_norm_eps == pytest.approx(c.rms_norm_eps) and cfg.rope_theta == c.rope_parameters["rope_theta"]


def test_cli_info_and_convert_to_an_hf_folder(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = make_hf_model("qwen2_tied")
    write_gguf(model, tmp_path / "m.gguf", Q.Q8_0)
    assert cli.main(["info", str(tmp_path / "m.gguf")]) == 0
    assert "Qwen2ForCausalLM" in capsys.readouterr().out
    out = tmp_path / "hf"
    assert cli.main(["convert", str(tmp_path / "m.gguf"), str(out), "--format", "hf", "--dtype", "float32"]) == 0
    x = ids(model.config.vocab_size)
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    np.testing.assert_allclose(torch_logits(exported, x), torch_logits(transformers_gguf_model(tmp_path / "m.gguf"), x),
                               atol=2e-5, rtol=1e-5)
    orbax = tmp_path / "orbax"
    assert cli.main(["convert", str(tmp_path / "m.gguf"), str(orbax), "--dtype", "float32"]) == 0
    np.testing.assert_array_equal(np.asarray(sgj.load(orbax).forward(x)),
                                  np.asarray(sgj.load(tmp_path / "m.gguf").forward(x)))


def test_unsupported_architecture_is_named(tmp_path):
    write_gguf(make_hf_model("qwen2_tied"), tmp_path / "m.gguf", arch_name="gpt2")
    with pytest.raises(CheckpointError, match=r"'gpt2'.*supported: \['gemma3', 'gpt-oss', 'llama', 'phi3', 'qwen2', 'qwen3', 'qwen3moe'\]"):
        sgj.load(tmp_path / "m.gguf")


def test_unsupported_tensor_type_is_named(tmp_path):
    write_gguf(make_hf_model("llama3_rope", **WIDE_LLAMA), tmp_path / "m.gguf", Q.IQ4_XS)
    with pytest.raises(CheckpointError, match="stores tensors as \\['IQ4_XS'\\].*supported: F32, F16, BF16, Q8_0"):
        sgj.load(tmp_path / "m.gguf")


def test_missing_gguf_file_is_named(tmp_path):
    for read in (sgj.load, read_config):
        with pytest.raises(FileNotFoundError, match="GGUF file .*nope.gguf does not exist"):
            read(tmp_path / "nope.gguf")


def test_loads_straight_onto_a_mesh(tmp_path):
    """Each dequantised tensor goes onto its NamedSharding as it is read, as from a safetensors folder."""
    from jax.sharding import NamedSharding

    write_gguf(make_hf_model("qwen2_tied"), tmp_path / "m.gguf", Q.Q8_0)
    single = sgj.load(tmp_path / "m.gguf")
    meshed = sgj.load(tmp_path / "m.gguf", mesh=sgj.make_mesh(4, 2))
    q = meshed.params["layers"][0]["q"] if isinstance(meshed.params["layers"], tuple) else meshed.params["layers"]["q"]
    assert isinstance(q.sharding, NamedSharding) and len(q.sharding.device_set) == 8
    assert "model" in str(q.sharding.spec)
    x = ids(single.config.vocab_size, B=4)
    np.testing.assert_allclose(np.asarray(meshed.forward(x)), np.asarray(single.forward(x)), atol=1e-5, rtol=1e-5)
