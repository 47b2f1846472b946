"""The weight table against transformers' own parameters, and init against flax linen's parameter keys."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from selfguard_jax.config import ModelConfig
from selfguard_jax.weights import init_params, is_weight, kv_cache_shape, weight_table
from tiny_models import SPECS, make_hf_model


@pytest.mark.parametrize("name", list(SPECS))
def test_table_names_and_shapes_are_transformers_own(name, tmp_path):
    """Every HF key of the table is a tensor that transformers' save_pretrained writes, with the table's HF shape,
    and every tensor written is in the table (tied models share embed and lm_head; transformers keeps MoE experts
    fused in memory and writes them one per expert, as the Hub checkpoints hold them)."""
    from safetensors import safe_open

    model = make_hf_model(name)
    model.save_pretrained(tmp_path)
    cfg = ModelConfig.from_dict(model.config.to_dict())
    with safe_open(tmp_path / "model.safetensors", framework="np") as f:
        hf = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    table = jax.tree.leaves(weight_table(cfg), is_leaf=is_weight)
    named = {key: w.hf_shape for w in table for key in w.hf_keys()}
    assert named == {k: s for k, s in hf.items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    for w in table:
        one = np.arange(np.prod(w.hf_shape), dtype=np.float32).reshape(w.hf_shape)
        assert w.to_ours(one).shape == w.piece_shape
        np.testing.assert_array_equal(w.to_hf(w.to_ours(one)), one)
    assert kv_cache_shape(cfg, 2, 9) == (cfg.num_layers, 2, cfg.num_kv_heads, 9, cfg.head_dim)


class LinenDeclared(nn.Module):
    """The params declared one by one in table order with flax's own initializers (how earlier versions did it)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        inits = {"normal": nn.initializers.normal(0.02), "ones": nn.initializers.ones, "zeros": nn.initializers.zeros}
        for top, node in weight_table(self.cfg).items():
            for key, w in (node.items() if top == "layers" else [(None, node)]):
                self.param(top if key is None else f"{top}/{key}", inits[w.init], w.shape)


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen3_headdim"])
def test_init_draws_what_linen_declared(name):
    cfg = ModelConfig.from_dict(make_hf_model(name).config.to_dict())
    ref = LinenDeclared(cfg).init(jax.random.PRNGKey(5))["params"]
    got = init_params(cfg, 5)
    flat = {k: got[k] for k in got if k != "layers"} | {f"layers/{k}": v for k, v in got["layers"].items()}
    assert flat.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(ref[k]), err_msg=k)
