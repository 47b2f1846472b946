"""Loading a few-hundred-MB sharded safetensors checkpoint onto a (2, 4) mesh: host memory above what the
loaded params themselves occupy peaks near the largest (stacked) tensor, not near the checkpoint size.
(On CPU the 8 devices live in host memory, so the placed shards, replicas included, are subtracted.)"""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from host_memory import load_peak

CFG = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=1024, intermediate_size=2816,
           num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4, vocab_size=16000,
           tie_word_embeddings=False, max_position_embeddings=1024)

def write_checkpoint(folder):
    rng = np.random.default_rng(0)
    D, F, L, V, H = 1024, 2816, 6, 16000, 128
    shards = [{} for _ in range(3)]
    shards[0]["model.embed_tokens.weight"] = rng.standard_normal((V, D), np.float32)
    shards[2]["lm_head.weight"] = rng.standard_normal((V, D), np.float32)
    shards[2]["model.norm.weight"] = np.ones(D, np.float32)
    for i in range(L):
        p = f"model.layers.{i}."
        t = shards[1 if i < 3 else 2]
        for name, shape in (("self_attn.q_proj.weight", (8 * H, D)), ("self_attn.k_proj.weight", (4 * H, D)),
                            ("self_attn.v_proj.weight", (4 * H, D)), ("self_attn.o_proj.weight", (D, 8 * H)),
                            ("mlp.gate_proj.weight", (F, D)), ("mlp.up_proj.weight", (F, D)),
                            ("mlp.down_proj.weight", (D, F))):
            t[p + name] = rng.standard_normal(shape, np.float32)
        for name, n in (("self_attn.q_proj.bias", 8 * H), ("self_attn.k_proj.bias", 4 * H),
                        ("self_attn.v_proj.bias", 4 * H), ("input_layernorm.weight", D),
                        ("post_attention_layernorm.weight", D)):
            t[p + name] = np.ones(n, np.float32)
    index, total = {}, 0
    for k, t in enumerate(shards):
        name = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file(t, folder / name)
        index |= {key: name for key in t}
        total += sum(a.nbytes for a in t.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": index}))
    (folder / "config.json").write_text(json.dumps(CFG))
    return total


@pytest.mark.slow
def test_peak_host_memory_near_largest_tensor(tmp_path):
    total = write_checkpoint(tmp_path)
    largest = 6 * 2816 * 1024 * 4  # the stacked gate/up/down buffer, the biggest single host array
    m = load_peak(tmp_path, mesh=(2, 4))
    transient = m["peak"] - m["base"] - m["resident"]
    print(f"checkpoint {total / 2**20:.0f} MiB, largest tensor {largest / 2**20:.0f} MiB, "
          f"transient host peak {transient / 2**20:.0f} MiB")
    assert total > 300 * 2**20
    assert transient < 2.5 * largest, (transient, largest)
    assert transient < 0.5 * total
