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
                 "qwen3moe": "Qwen3MoeForCausalLM", "gemma3": "Gemma3ForCausalLM", "gpt-oss": "GptOssForCausalLM",
                 "phi3": "Phi3ForCausalLM"}
# Tensor types dequantised here (all through gguf.quants); others are refused by name.
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                "MXFP4")

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
# Phi-3: llama.cpp keeps HF's fused projections (ffn_up is gate_up_proj, gate rows first, as HF's).
_PHI3_BLOCK_NAMES = _BLOCK_NAMES | {"attn_qkv.weight": "self_attn.qkv_proj.weight",
                                    "ffn_up.weight": "mlp.gate_up_proj.weight"}
_PHI3_ROPE_FACTORS = ("rope_factors_long.weight", "rope_factors_short.weight")
# gpt-oss: the norm before the MLP is llama.cpp's post_attention_norm; the router has a bias; one sink per head.
_GPT_OSS_BLOCK_NAMES = _BLOCK_NAMES | {
    "post_attention_norm.weight": "post_attention_layernorm.weight", "attn_sinks.weight": "self_attn.sinks",
    "ffn_gate_inp.weight": "mlp.router.weight", "ffn_gate_inp.bias": "mlp.router.bias"}
# gpt-oss experts: llama.cpp splits HF's interleaved gate_up_proj [E, in, 2 out] into ffn_gate_exps / ffn_up_exps
# [E, out, in] (and their biases) and transposes down_proj to ffn_down_exps [E, out, in]; joined back here.
_GPT_OSS_EXPERTS = re.compile(r"ffn_(gate|up|down)_exps\.(weight|bias)")
_GPT_OSS_HF = {("gate_up", "weight"): "mlp.experts.gate_up_proj", ("gate_up", "bias"): "mlp.experts.gate_up_proj_bias",
               ("down", "weight"): "mlp.experts.down_proj", ("down", "bias"): "mlp.experts.down_proj_bias"}
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
    names = {"gemma3": _GEMMA3_BLOCK_NAMES, "phi3": _PHI3_BLOCK_NAMES, "gpt-oss": _GPT_OSS_BLOCK_NAMES}.get(
        arch, _BLOCK_NAMES)
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
        self.joined: dict[str, tuple[str, str, str]] = {}  # gpt-oss HF expert name -> (block, part, weight|bias)
        self.parts: dict[str, Any] = {}  # gpt-oss expert GGUF tensors by name
        self.rope_factors: dict[str, Any] = {}  # Phi-3 LongRoPE factors, read into the config
        unknown = []
        for t in self.reader.tensors:
            m = _BLOCK.fullmatch(t.name)
            if self.arch == "phi3" and t.name in _PHI3_ROPE_FACTORS:
                self.rope_factors[t.name] = t
                continue
            e = m and self.arch == "gpt-oss" and _GPT_OSS_EXPERTS.fullmatch(m.group(2))
            if e:
                self.parts[t.name] = t
                part = "down" if e.group(1) == "down" else "gate_up"
                self.joined[f"model.layers.{m.group(1)}.{_GPT_OSS_HF[part, e.group(2)]}"] = (m.group(1), part, e.group(2))
                continue
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
        if int(rot) != head_dim and self.arch != "phi3":
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
        if self.arch == "gpt-oss":
            hf |= self._gpt_oss_config(hf)
        if self.arch == "phi3":
            hf |= self._phi3_config(hf, int(rot))
        return hf

    def _gpt_oss_config(self, hf: dict[str, Any]) -> dict[str, Any]:
        """gpt-oss's fields beyond the Llama ones. llama.cpp fixes in code what the file does not say: sliding and
        full blocks alternating from block 0 (HF's layer_types), the SwiGLU alpha 1.702 and limit 7 (HF's defaults).
        YaRN is taken as every gpt-oss config.json states it (truncate false: correction range not rounded)."""
        L, rope = hf["num_hidden_layers"], hf.get("rope_scaling")
        if rope is not None:
            rope["truncate"] = False
        return {"model_type": "gpt_oss", "attention_bias": True, "num_local_experts": self._int("gpt-oss.expert_count"),
                "num_experts_per_tok": self._int("gpt-oss.expert_used_count"),
                "sliding_window": self._int("gpt-oss.attention.sliding_window"),
                "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(L)]}

    def _phi3_config(self, hf: dict[str, Any], rot: int) -> dict[str, Any]:
        """Phi-3's fields beyond the Llama ones: partial rotary (rope.dimension_count of head_dim), the original
        context length, and LongRoPE from llama.cpp's rope_factors_long/short tensors and attention factor."""
        orig = self.field("phi3.rope.scaling.original_context_length")
        out: dict[str, Any] = {"partial_rotary_factor": rot / hf["head_dim"],
                               "sliding_window": self.field("phi3.attention.sliding_window") or None}
        if orig is not None:
            out["original_max_position_embeddings"] = int(orig)
        if self.rope_factors:
            if len(self.rope_factors) != 2 or orig is None:
                raise CheckpointError(f"{self.path.name}: LongRoPE needs both rope_factors_long and rope_factors_short "
                                      "and phi3.rope.scaling.original_context_length; the file is incomplete.")
            out["rope_scaling"] = {"rope_type": "longrope", **{
                f"{k}_factor": self._dequantised(self.rope_factors[f"rope_factors_{k}.weight"]).tolist()
                for k in ("long", "short")}}
            attn = self.field("phi3.rope.scaling.attn_factor")
            if attn is not None:
                out["rope_scaling"]["attention_factor"] = float(attn)
        return out

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
        return set(self.tensors) | set(self.experts) | set(self.joined)

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
        if key in self.joined:
            return self._gpt_oss_experts(*self.joined[key])
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

    def _gpt_oss_experts(self, block: str, part: str, kind: str) -> np.ndarray:
        """One gpt-oss expert tensor in the HF layout: gate_up_proj [E, in, 2 out] with gate and up interleaved
        (bias [E, 2 out]), down_proj [E, in, out] (bias [E, out])."""
        def read(name: str) -> np.ndarray:
            full = f"blk.{block}.ffn_{name}_exps.{kind}"
            if full not in self.parts:
                raise CheckpointError(f"tensor {full!r} is missing from {self.path.name}; the file is incomplete.")
            w = self._dequantised(self.parts[full])
            return w if kind == "bias" else w.swapaxes(-1, -2)

        if part == "down":
            return read("down")
        gate, up = read("gate"), read("up")
        out = np.empty(gate.shape[:-1] + (2 * gate.shape[-1],), np.float32)
        out[..., ::2], out[..., 1::2] = gate, up
        return out

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
