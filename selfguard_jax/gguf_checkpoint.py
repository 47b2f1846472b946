"""GGUF model files (llama.cpp's format): metadata -> a Hugging Face config dict, tensors dequantised one at a time.

`GGUFFile` presents the file as the HF-named tensor source that `checkpoint.load_params` reads, so a GGUF model
goes through the same checks and the same placement onto shardings as a safetensors folder. Each tensor's bytes
are read from the file (no memory map kept resident), dequantised with the `gguf` package to float32 in the HF
layout, and dropped once placed: the host peak stays near the largest dequantised tensor.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from selfguard_jax.errors import CheckpointError

# GGUF `general.architecture` -> the HF architecture it is loaded as. llama.cpp files Mistral models as llama.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "qwen3moe": "Qwen3MoeForCausalLM", "gemma3": "Gemma3ForCausalLM"}
# Tensor types dequantised here (all through gguf.quants); others are refused by name.
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight", "ffn_gate_inp.weight": "mlp.gate.weight",
}
# Gemma 3 norms around attention and the MLP (llama.cpp's ffn_norm is the norm before the MLP in both families).
_GEMMA3_BLOCK_NAMES = _BLOCK_NAMES | {
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
# Routed experts, one GGUF tensor [E, out, in] per block, presented as the HF checkpoints' one tensor per expert.
_EXPERT_NAMES = {"ffn_gate_exps.weight": "gate_proj", "ffn_up_exps.weight": "up_proj",
                 "ffn_down_exps.weight": "down_proj"}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")
# llama.cpp has no key for these; it fixes them in code for gemma3 (as transformers' GGUF reader does): every 6th
# layer global, the rest sliding with rope base 10000.
GEMMA3_SLIDING_PATTERN, GEMMA3_LOCAL_ROPE_BASE = 6, 10000.0


def is_gguf(path: str | Path) -> bool:
    """True for a file named *.gguf or starting with the GGUF magic bytes."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """The HF tensor name of a GGUF tensor name of architecture `arch`; None when this project has no use for it."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    names = _GEMMA3_BLOCK_NAMES if arch == "gemma3" else _BLOCK_NAMES
    m = _BLOCK.fullmatch(gguf_name)
    if m and m.group(2) in names:
        return f"model.layers.{m.group(1)}.{names[m.group(2)]}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Llama q/k row permutation (its rope pairs adjacent dims; HF's pairs the two halves).

    llama.cpp's converter reshapes rows as [head, 2, head_dim/2] and swaps the last two; this swaps them back."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFFile:
    """A GGUF model file: its metadata as an HF config dict and its tensors under HF names, read on demand."""

    def __init__(self, path: str | Path):
        from gguf import GGMLQuantizationType, GGUFReader

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file {self.path} does not exist.")
        try:
            self.reader = GGUFReader(self.path, "r")
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{self.path} is not a readable GGUF file ({e}).") from e
        self.arch = self.field("general.architecture")
        if self.arch not in ARCHITECTURES:
            raise CheckpointError(
                f"GGUF architecture {self.arch!r} in {self.path.name} is not supported; supported: "
                f"{sorted(ARCHITECTURES)}. Convert the original HF folder instead if its architecture is.")
        self.tensors: dict[str, Any] = {}
        self.experts: dict[str, tuple[Any, int]] = {}  # HF per-expert name -> (GGUF tensor, expert)
        self._last: tuple[str, np.ndarray] | None = None  # the last expert stack dequantised, sliced per expert
        unknown = []
        for t in self.reader.tensors:
            m = _BLOCK.fullmatch(t.name)
            if m and m.group(2) in _EXPERT_NAMES:
                for e in range(int(t.shape[-1])):
                    self.experts[f"model.layers.{m.group(1)}.mlp.experts.{e}.{_EXPERT_NAMES[m.group(2)]}.weight"] = (t, e)
                continue
            name = hf_name(t.name, self.arch)
            if name is None:
                unknown.append(t.name)
            self.tensors[name or t.name] = t
        if "rope_freqs.weight" in unknown:
            raise CheckpointError(f"{self.path.name} carries rope_freqs.weight (llama3-style rope scaling baked "
                                  "into frequency factors), which is not read from GGUF here; load the original "
                                  "HF folder, whose config.json states the rope scaling.")
        if unknown:
            raise CheckpointError(f"{self.path.name} has tensors this project does not map: {unknown[:8]}; "
                                  f"is it a plain {self.arch} decoder?")
        odd = {GGMLQuantizationType(t.tensor_type).name: t.name for t in self.reader.tensors
               if GGMLQuantizationType(t.tensor_type).name not in TENSOR_TYPES}
        if odd:
            example = next(iter(odd.values()))
            raise CheckpointError(f"{self.path.name} stores tensors as {sorted(odd)} (e.g. {example}), "
                                  f"which are not dequantised here; supported: {', '.join(TENSOR_TYPES)}. Re-quantise "
                                  "the model (llama-quantize) to one of those, or load the original HF folder.")

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value (scalars and strings as Python values, arrays as lists); `default` when absent."""
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def hf_config(self) -> dict[str, Any]:
        """The metadata as an HF config.json dict (legacy rope form), read by `ModelConfig.from_dict`."""
        a = self.arch + "."
        hidden, heads = self._int(a + "embedding_length"), self._int(a + "attention.head_count")
        kv = self.field(a + "attention.head_count_kv", heads)
        if isinstance(kv, list):
            if len(set(kv)) != 1:
                raise CheckpointError(f"{self.path.name}: per-layer kv head counts {sorted(set(kv))} are not "
                                      "supported (every block must have the same attention shape).")
            kv = kv[0]
        head_dim = int(self.field(a + "attention.key_length", hidden // heads))
        rot = self.field(a + "rope.dimension_count", head_dim)
        if int(rot) != head_dim:
            raise CheckpointError(f"{self.path.name}: partial rotary embedding (rope.dimension_count {rot} < "
                                  f"head_dim {head_dim}) is not supported.")
        vocab = self.field(a + "vocab_size") or len(self.field("tokenizer.ggml.tokens", []))
        if not vocab:
            vocab = int(self.tensors["model.embed_tokens.weight"].shape[-1])
        moe = self.arch == "qwen3moe"
        ffn = self.field(a + "feed_forward_length") if moe else self._int(a + "feed_forward_length")
        hf = {
            "architectures": [ARCHITECTURES[self.arch]], "model_type": "qwen3_moe" if moe else self.arch,
            "hidden_size": hidden, "num_hidden_layers": self._int(a + "block_count"),
            "num_attention_heads": heads, "num_key_value_heads": int(kv), "head_dim": head_dim,
            "intermediate_size": int(ffn or self._int(a + "expert_feed_forward_length")), "vocab_size": int(vocab),
            "rms_norm_eps": float(self.field(a + "attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self.field(a + "rope.freq_base", 10000.0)),
            "max_position_embeddings": int(self.field(a + "context_length", 4096)),
            "tie_word_embeddings": "lm_head.weight" not in self.tensors,
            "attention_bias": "model.layers.0.self_attn.q_proj.bias" in self.tensors and self.arch == "llama",
            "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
            "pad_token_id": self.field("tokenizer.ggml.padding_token_id"),
            "eos_token_id": [i for i in dict.fromkeys(self.field(f"tokenizer.ggml.{k}_token_id")
                                                      for k in ("eos", "eot", "eom")) if i is not None],
        }
        if moe:  # llama.cpp's qwen3moe graph: every block routed, top-k weights renormalised
            hf |= {"num_experts": self._int(a + "expert_count"), "num_experts_per_tok": self._int(a + "expert_used_count"),
                   "moe_intermediate_size": self._int(a + "expert_feed_forward_length"), "norm_topk_prob": True}
        scaling = self.field(a + "rope.scaling.type", "none")
        if scaling not in ("none", "linear", "yarn"):
            raise CheckpointError(f"{self.path.name}: rope scaling {scaling!r} is not supported (linear, yarn).")
        if scaling != "none":
            hf["rope_scaling"] = {"rope_type": scaling, "factor": float(self._req(a + "rope.scaling.factor"))}
            orig = self.field(a + "rope.scaling.original_context_length")
            if orig is not None:
                hf["rope_scaling"]["original_max_position_embeddings"] = int(orig)
        if self.arch == "gemma3":
            hf |= self._gemma3_config(hf)
        return hf

    def _gemma3_config(self, hf: dict[str, Any]) -> dict[str, Any]:
        """Gemma 3's fields beyond the Llama ones. The file carries no query_pre_attn_scalar: llama.cpp scales the
        query by head_dim ** -0.5 for every size but 27B, and transformers' reader keeps its default 256 (the same
        for every size whose head_dim is 256, 270M included); a 27B file (head_dim 128, its configs' scalar 168)
        is refused rather than guessed."""
        if hf["head_dim"] != 256:
            raise CheckpointError(f"{self.path.name}: a Gemma 3 GGUF with head_dim {hf['head_dim']} (27B) does not "
                                  "say its query_pre_attn_scalar; load the original HF folder instead.")
        L = hf["num_hidden_layers"]
        cap = self.field("gemma3.final_logit_softcapping")
        return {"model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
                "sliding_window": self._int("gemma3.attention.sliding_window"),
                "layer_types": ["sliding_attention" if (i + 1) % GEMMA3_SLIDING_PATTERN else "full_attention"
                                for i in range(L)],
                "rope_local_base_freq": GEMMA3_LOCAL_ROPE_BASE,
                "final_logit_softcapping": None if cap is None else float(cap)}

    def keys(self) -> set[str]:
        return set(self.tensors) | set(self.experts)

    def file_of(self, key: str) -> Path:
        return self.path

    def get(self, key: str) -> np.ndarray:
        """One tensor dequantised to float32 in the HF layout ([out, in] for projections)."""
        if key in self.experts:  # experts are read in order: the stack is dequantised once, then sliced
            t, e = self.experts[key]
            if self._last is None or self._last[0] != t.name:
                self._last = None
                self._last = (t.name, self._dequantised(t))
            return self._last[1][e]
        if key not in self.tensors:
            raise CheckpointError(f"tensor {key!r} is missing from {self.path.name}; the file is incomplete "
                                  "or its metadata disagrees with its tensors.")
        w = self._dequantised(self.tensors[key])
        if self.arch == "gemma3" and key.endswith("norm.weight"):
            w = w - 1  # llama.cpp stores Gemma's (1 + w) norm scales with the one added
        if self.arch == "llama" and ".self_attn.q_proj." in key:
            w = unpermute_qk(w, self._int(self.arch + ".attention.head_count"))
        elif self.arch == "llama" and ".self_attn.k_proj." in key:
            heads = self._int(self.arch + ".attention.head_count")
            w = unpermute_qk(w, int(self.field(self.arch + ".attention.head_count_kv", heads)))
        return w

    def _dequantised(self, t: Any) -> np.ndarray:
        """One GGUF tensor as float32 in numpy order (GGUF lists dims innermost first)."""
        from gguf import dequantize

        with open(self.path, "rb") as f:  # a fresh buffer, not the memory map: the pages leave with it
            f.seek(t.data_offset)
            raw = np.frombuffer(f.read(t.n_bytes), dtype=t.data.dtype).reshape(t.data.shape)
        w = np.asarray(dequantize(raw, t.tensor_type), np.float32)
        return w.reshape([int(n) for n in reversed(t.shape)])

    def _int(self, key: str) -> int:
        return int(self._req(key))

    def _req(self, key: str) -> Any:
        value = self.field(key)
        if value is None:
            raise CheckpointError(f"{self.path.name} lacks the metadata key {key!r}; is it a complete model file?")
        return value


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer and chat template stored in the GGUF, rebuilt by transformers' GGUF conversion; None when
    the file carries no tokenizer."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    path = Path(path)
    if "tokenizer.ggml.model" not in GGUFReader(path, "r").fields:
        return None
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def save_tokenizer(path: str | Path, out_dir: str | Path) -> None:
    """Write the GGUF's tokenizer (with its chat template) as HF tokenizer files into out_dir, if it has one."""
    tok = load_tokenizer(path)
    if tok is not None:
        tok.save_pretrained(str(out_dir))
