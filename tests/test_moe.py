"""Qwen3-MoE and gpt-oss against transformers: the routed block alone (both dispatch paths), every param layout
of dense and routed blocks mixed, GGUF files, HF export, MXFP4 experts, attention sinks; what a small-batch decode
step reads; expert parallelism on 8 fake CPU devices (logits and greedy tokens equal the single-device run; the
dispatch and what crosses devices: test_moe_sharding.py). Model-level logits and greedy parity with transformers
are in test_parity.py / test_decode.py (SPECS qwen3_moe, qwen3_moe_mixed, gpt_oss; slow there)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import selfguard_jax as sgj
from selfguard_jax import checkpoint, sharding
from selfguard_jax.config import ModelConfig
from selfguard_jax.model import decode_step, prefill, unstack_layers
from selfguard_jax.moe import moe_mlp
from test_parity import hf_run, ragged_batch
from tiny_models import make_hf_model, save_hf_model

TOL = 1e-4


@pytest.mark.parametrize("tokens", [1, 40])
def test_routed_block_equals_transformers_sparse_block(hf_dirs, tokens):
    """1-3 tokens x top 2 < 8 experts take the gathered-weights path, 40 tokens the sorted ragged_dot path; both
    equal transformers' Qwen3MoeSparseMoeBlock (its eager loop over experts) on the same input."""
    folder, model = hf_dirs["qwen3_moe"]
    lm = sgj.load(folder, scan_layers=False)
    x = np.random.default_rng(tokens).normal(size=(1, tokens, 64)).astype(np.float32)
    for i in range(lm.config.num_layers):
        with torch.no_grad():
            ref = model.model.layers[i].mlp(torch.tensor(x)).numpy()
        ours = np.asarray(moe_mlp(lm.config, lm.params["layers"][i], jnp.asarray(x)))
        assert np.abs(ours - ref).max() < 1e-5 and np.abs(ref).max() > 1e-3


def test_config_names_the_sparse_blocks_as_transformers_builds_them():
    model = make_hf_model("qwen3_moe_mixed", num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    cfg = ModelConfig.from_dict(model.config.to_dict())
    sparse = tuple(i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts"))
    assert cfg.moe_layers == sparse == (1, 5)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen3_moe", "qwen3_moe_mixed"])
def test_every_layout_gives_the_same_prefill_and_decode(hf_dirs, name):
    """Stacked under the scan (all blocks routed) or unrolled (dense and routed mixed: two stacks), stacked as
    static slices, and per-layer: the same logits and cache; transformers' logits for the prompt."""
    folder, model = hf_dirs[name]
    lm = sgj.load(folder, scan_layers=True)
    ids, mask = ragged_batch([5, 3], 5, "left")
    ref = hf_run(model, ids, mask).logits.numpy()[:, -1]
    S = 8
    outs = []
    for params, scan in ((lm.params, True), (lm.params, False), (unstack_layers(lm.params, lm.config), False)):
        last, cache = prefill(params, lm.config, jnp.asarray(ids), jnp.asarray(mask), cache_len=S, scan_layers=scan)
        assert np.abs(np.asarray(last) - ref).max() < TOL
        valid = jnp.zeros((2, S), bool).at[:, :5].set(mask.astype(bool)).at[:, 5].set(True)
        logits, cache = decode_step(params, lm.config, jnp.array([3, 4]), jnp.asarray(mask.sum(1)), valid, cache,
                                    jnp.int32(5), scan_layers=scan)
        k = jnp.stack(cache.k) if isinstance(cache.k, tuple) else cache.k
        outs.append((np.asarray(logits), np.asarray(k)))
    for logits, k in outs[1:]:
        np.testing.assert_allclose(logits, outs[0][0], atol=1e-5)
        np.testing.assert_allclose(k, outs[0][1], atol=1e-5)
    if name == "qwen3_moe_mixed":
        with pytest.raises(ValueError, match="pass the config"):
            unstack_layers(lm.params)


def _expert_reads(cfg, lp, x_BTD):
    """The ops of `moe_mlp`'s program that read an expert weight: (primitive, params, output shape)."""
    closed = jax.make_jaxpr(lambda lp, x: moe_mlp(cfg, lp, x))(lp, x_BTD)
    experts = [v for v, name in zip(closed.jaxpr.invars, sorted(lp)) if name.startswith("expert_")]
    reads = []
    for eqn in closed.jaxpr.eqns:
        if any(v is e for v in eqn.invars for e in experts):
            reads.append((eqn.primitive.name, eqn.params, eqn.outvars[0].aval.shape))
    return reads, closed


def test_small_batch_decode_reads_only_the_chosen_experts(hf_dirs):
    """With fewer (token, expert) rows than experts, every read of an expert weight is a gather of one expert's
    slice per row: 2 rows read 2 of the 8 experts, never the stack."""
    folder, _ = hf_dirs["qwen3_moe"]
    lm = sgj.load(folder, scan_layers=False)
    lp = lm.params["layers"][0]
    reads, _ = _expert_reads(lm.config, lp, jnp.ones((1, 1, 64)))
    assert len(reads) == 3
    for prim, params, shape in reads:
        assert prim == "gather" and params["slice_sizes"][0] == 1 and shape[0] == 2


def test_large_batch_dispatch_has_no_dense_token_by_expert_tensor(hf_dirs):
    """Many rows: the expert weights go whole into ragged_dot over rows sorted by expert, and no value of the
    program is [tokens or rows, experts, ...] (the router's [tokens, experts] scores are the only 2-D pairing)."""
    folder, _ = hf_dirs["qwen3_moe"]
    lm = sgj.load(folder, scan_layers=False)
    X, E, K = 40, lm.config.num_experts, lm.config.num_experts_per_tok
    reads, closed = _expert_reads(lm.config, lm.params["layers"][0], jnp.ones((2, X // 2, 64)))
    assert [r[0] for r in reads] == ["ragged_dot_general"] * 3
    for eqn in closed.jaxpr.eqns:
        for v in eqn.outvars:
            shape = v.aval.shape
            assert not (len(shape) >= 3 and E in shape and (X in shape or X * K in shape)), (eqn.primitive, shape)


@pytest.mark.slow
def test_export_roundtrip_loads_in_transformers(hf_dirs, tmp_path):
    """Both stacks of a mixed model written back one tensor per expert, as the Hub checkpoints hold them."""
    folder, model = hf_dirs["qwen3_moe_mixed"]
    from safetensors.numpy import load_file

    for scan in (True, False):
        out = checkpoint.export_hf(sgj.load(folder, scan_layers=scan).params, sgj.load(folder).config, tmp_path / str(scan))
        src, dst = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
        assert set(dst) == set(src) and all(np.array_equal(dst[k], src[k]) for k in src)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    back.set_experts_implementation("eager")
    ids, mask = ragged_batch([4, 6], 6, "left")
    assert torch.equal(hf_run(back, ids, mask).logits, hf_run(model, ids, mask).logits)


def _write_qwen3moe_gguf(model, path):
    """A tiny Qwen3-MoE as llama.cpp's converter writes it: gguf's own tensor names, each block's experts one
    float32 tensor [E, out, in]."""
    gguf = pytest.importorskip("gguf")
    c = model.config
    arch = gguf.MODEL_ARCH.QWEN3MOE
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_expert_feed_forward_length(c.moe_intermediate_size)
    w.add_expert_count(c.num_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    names = gguf.get_tensor_name_map(arch, c.num_hidden_layers)
    for key, t in model.state_dict().items():
        data = t.detach().float().numpy()
        if key.endswith("experts.gate_up_proj"):  # transformers keeps [E, 2I, D] in memory: gate rows, then up
            gate, up = np.split(data, 2, axis=1)
            for part, half in (("gate_proj", gate), ("up_proj", up)):
                w.add_tensor(names.get_name(key.replace("gate_up_proj", part)) + ".weight", np.ascontiguousarray(half))
            continue
        if key.endswith("experts.down_proj"):
            w.add_tensor(names.get_name(key) + ".weight", np.ascontiguousarray(data))
            continue
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.slow
def test_float32_qwen3moe_gguf_equals_the_original_model(tmp_path):
    """llama.cpp's qwen3moe renormalises the top-k weights, so the GGUF config says norm_topk_prob."""
    model = make_hf_model("qwen3_moe")
    _write_qwen3moe_gguf(model, tmp_path / "m.gguf")
    lm = sgj.load(tmp_path / "m.gguf")
    assert lm.config.moe_layers == (0, 1, 2) and lm.config.norm_topk_prob
    ids, mask = ragged_batch([9, 4], 9, "left")
    err = np.abs(np.asarray(lm.forward(ids, mask)) - hf_run(model, ids, mask).logits.numpy())[mask.astype(bool)]
    assert err.max() < TOL


@pytest.fixture(scope="module")
def mesh_folder(tmp_path_factory):
    f = tmp_path_factory.mktemp("moe_mesh")
    # 8 experts, 8 heads, 4 kv heads: experts split over model up to 8 ways
    save_hf_model("qwen3_moe", f, initializer_range=0.2, num_attention_heads=8, num_key_value_heads=4,
                  head_dim=16, intermediate_size=128, vocab_size=256)
    return f


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 4), (1, 8)])
def test_expert_parallel_mesh_equals_single_device(mesh_folder, shape):
    """Experts split over `model` (4 or 8 ways), batch over `data`: forward logits and greedy tokens (prefill, then
    decode steps of 1-3 rows: the gathered path, and of 5 rows: the ragged path) equal one device's."""
    assert jax.device_count() == 8
    single = sgj.load(mesh_folder)
    single.config = dataclasses.replace(single.config, eos_token_ids=())
    meshed = sgj.load(mesh_folder, mesh=sharding.make_mesh(*shape))
    meshed.config = single.config
    spec = meshed.params["layers"][0]["expert_gate"].sharding.spec
    assert spec == jax.sharding.PartitionSpec("model", None, None)
    assert meshed.params["layers"][0]["expert_gate"].addressable_shards[0].data.shape[0] == 8 // shape[1]
    ids, mask = ragged_batch([5, 2, 4], 5, "left")
    np.testing.assert_allclose(np.asarray(meshed.forward(ids, mask)), np.asarray(single.forward(ids, mask)),
                               atol=1e-5)
    prompts = [[5, 17, 33, 8], [12, 4], [150, 3, 77], [7, 7, 8, 9, 10], [99]]
    for batch in (prompts[:1], prompts):
        assert meshed.generate(batch, max_new_tokens=8).tokens == single.generate(batch, max_new_tokens=8).tokens


@pytest.mark.parametrize("tokens", [1, pytest.param(40, marks=pytest.mark.slow)])
def test_gpt_oss_routed_block_equals_transformers(hf_dirs, tokens):
    """Biased top 2 of 8, softmax over the chosen, clamped SwiGLU (limit 0.1 here, so both clamps bite) with
    expert biases: equal to transformers' GptOssMLP on the gathered (1 token) and ragged (40 tokens) paths."""
    folder, model = hf_dirs["gpt_oss"]
    lm = sgj.load(folder, scan_layers=False)
    x = np.random.default_rng(tokens).normal(size=(1, tokens, 64)).astype(np.float32)
    for i in range(lm.config.num_layers):
        with torch.no_grad():
            ref = model.model.layers[i].mlp(torch.tensor(x))[0].numpy()
        ours = np.asarray(moe_mlp(lm.config, lm.params["layers"][i], jnp.asarray(x)))
        assert np.abs(ours - ref).max() < 1e-5 and np.abs(ref).max() > 1e-3


def test_sinks_in_the_blockwise_attention_equal_the_fused_one():
    """The sink starts the blockwise running softmax: same result as the sink column in the fused softmax."""
    from selfguard_jax.attention import attention, attention_blocks

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 1, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 2, 12, 8)), jnp.float32) for _ in range(2))
    sinks = jnp.asarray(rng.normal(size=(4,)) * 3, jnp.float32)
    mask = jnp.asarray(rng.random((2, 1, 12)) < 0.7).at[:, :, 0].set(True)
    fused = attention(q, k, v, mask, sinks)
    blocked = attention_blocks(q, k, v, mask, jnp.int32(12), block=4, sinks_N=sinks)
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(fused), atol=1e-6)
    assert np.abs(np.asarray(fused) - np.asarray(attention(q, k, v, mask))).max() > 1e-2


def _random_mxfp4(rng, shape):
    """MXFP4 blocks and scales for a weight of `shape` [E, in, out] as the Hub stores it: [E, out, in / 32, 16]."""
    E, n_in, n_out = shape
    blocks = rng.integers(0, 256, (E, n_out, n_in // 32, 16), dtype=np.uint8)
    scales = rng.integers(120, 128, (E, n_out, n_in // 32), dtype=np.uint8)
    return blocks, scales


def test_mxfp4_dequantisation_equals_transformers():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from selfguard_jax import mxfp4

    blocks, scales = _random_mxfp4(np.random.default_rng(0), (4, 96, 40))
    ref = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
    ours = mxfp4.dequantize(blocks, scales)
    assert ours.shape == tuple(ref.shape) == (4, 96, 40)
    np.testing.assert_array_equal(ours, ref.numpy())


@pytest.mark.slow
def test_mxfp4_gpt_oss_checkpoint_loads_dequantised(hf_dirs, tmp_path):
    """A gpt-oss folder whose experts are MXFP4 pairs: loaded through the one weight table, dequantised tensor by
    tensor; logits equal transformers' model holding transformers' own dequantisation of the same bytes."""
    import shutil

    from safetensors.numpy import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    folder, model = hf_dirs["gpt_oss"]
    shutil.copytree(folder, tmp_path / "q")
    tensors = load_file(folder / "model.safetensors")
    ref = make_hf_model("gpt_oss")
    rng = np.random.default_rng(1)
    state = ref.state_dict()
    for key in [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        blocks, scales = _random_mxfp4(rng, tensors.pop(key).shape)
        tensors[key + "_blocks"], tensors[key + "_scales"] = blocks, scales
        deq = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
        state[key].copy_(deq * 0.05)  # the same scale-down applied to ours below
    save_file(tensors, str(tmp_path / "q" / "model.safetensors"), metadata={"format": "pt"})
    lm = sgj.load(tmp_path / "q", scan_layers=False)
    layers = tuple({**lp, "expert_gate_up": lp["expert_gate_up"] * 0.05, "expert_down": lp["expert_down"] * 0.05}
                   for lp in lm.params["layers"])
    lm = dataclasses.replace(lm, params=lm.params | {"layers": layers})
    ids, mask = ragged_batch([7, 3], 7, "left")
    err = np.abs(np.asarray(lm.forward(ids, mask)) - hf_run(ref, ids, mask).logits.numpy())[mask.astype(bool)]
    assert err.max() < TOL
