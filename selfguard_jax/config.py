"""ModelConfig: the static, hashable description of a decoder-only transformer, read from HF config.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from selfguard_jax.errors import ConfigError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GptOssForCausalLM": "gpt_oss",
    "Gemma3ForCausalLM": "gemma3_text",
    "Phi3ForCausalLM": "phi3",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")
SUPPORTED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the model needs that is fixed at trace time. Frozen and hashable: safe as a jit static arg."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = (("rope_type", "default"),)
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    moe_layers: tuple[int, ...] = ()
    moe_style: str = "qwen3"  # "qwen3": softmax, top k, SwiGLU; "gpt_oss": biased top k, softmax, clamped SwiGLU
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    attention_sinks: bool = False
    layer_windows: tuple[int, ...] = ()  # per block: a sliding window of that many tokens, 0 for full attention
    local_rope_theta: float | None = None  # Gemma 3's sliding blocks (those with a window): their own rope
    local_rope_scaling: tuple[tuple[str, Any], ...] | None = None
    partial_rotary_factor: float = 1.0
    # Gemma: (1 + w) norms in float32, norms after attention and the MLP too, embeddings times sqrt(hidden),
    # the query scaled by query_pre_attn_scalar ** -0.5, tanh soft-capping of the final logits.
    hidden_act: str = "silu"
    gemma_norms: bool = False
    embed_scale: bool = False
    query_pre_attn_scalar: int | float | None = None
    final_logit_softcapping: float | None = None

    @property
    def model_type(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture]

    @property
    def rope(self) -> dict[str, Any]:
        return dict(self.rope_scaling)

    def config_hash(self) -> str:
        """A short stable hash of the config, recorded in vector files for provenance."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        d, h, n, k, f, L = (self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads,
                            self.intermediate_size, self.num_layers)
        per_layer = d * h * (n + 2 * k) + n * h * d + 3 * d * f + 2 * d
        per_layer += h * (n + 2 * k) if self.qkv_bias else 0
        per_layer += d if self.o_bias else 0
        per_layer += 2 * h if self.qk_norm else 0
        per_layer += 2 * d if self.gemma_norms else 0
        sparse, i = len(self.moe_layers), self.moe_intermediate_size
        moe = sparse * self.num_experts * (d + 3 * d * i) - sparse * 3 * d * f
        if self.moe_style == "gpt_oss":  # router and expert biases, one sink per head
            moe += sparse * self.num_experts * (1 + 2 * i + d)
        per_layer += n if self.attention_sinks else 0
        head = 0 if self.tie_word_embeddings else d * self.vocab_size
        return L * per_layer + moe + self.vocab_size * d + d + head

    @classmethod
    def from_dict(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Build from a parsed HF config.json (legacy `rope_theta`/`rope_scaling` or transformers-5 `rope_parameters`)."""
        archs = hf.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None and not archs:
            by_type = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}
            arch = by_type.get(hf.get("model_type", ""))
        if arch is None:
            raise ConfigError(
                f"config.json field 'architectures'={archs} (model_type={hf.get('model_type')!r}) is not supported; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}.")
        model_type = SUPPORTED_ARCHITECTURES[arch]
        _require(hf, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        _check_types(hf)
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
        if act not in SUPPORTED_ACTIVATIONS and model_type != "gpt_oss":
            raise ConfigError(f"config.json field 'hidden_act'={act!r} is not supported; supported: "
                              f"{SUPPORTED_ACTIVATIONS}.")
        if hf.get("mlp_bias"):
            raise ConfigError("config.json field 'mlp_bias'=true is not supported; only bias-free MLPs are implemented.")
        if hf.get("pretraining_tp", 1) not in (1, None):
            raise ConfigError("config.json field 'pretraining_tp' != 1 is not supported.")
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        attention_bias = bool(hf.get("attention_bias", False))
        gemma = model_type == "gemma3_text"
        if gemma and hf.get("use_bidirectional_attention"):
            raise ConfigError("config.json field 'use_bidirectional_attention'=true is not supported (causal only).")
        if gemma and hf.get("attn_logit_softcapping") is not None:
            raise ConfigError("config.json field 'attn_logit_softcapping' is set, but transformers' Gemma 3 never "
                              "applies it (Gemma 2 did) and released Gemma 3 configs leave it null; set it to null.")
        if model_type == "phi3" and attention_bias:
            raise ConfigError("config.json field 'attention_bias'=true is not supported for Phi3.")
        local = _rope_params(hf, "sliding_attention") if gemma else None
        return cls(
            architecture=arch,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            intermediate_size=hf["intermediate_size"],
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=attention_bias if model_type in ("llama", "qwen3", "mistral", "qwen3_moe", "gpt_oss",
                                                    "gemma3_text") else False,
            qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
            rope_theta=_rope_theta(hf),
            rope_scaling=_rope_scaling(hf),
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            sliding_window=_sliding_window(hf, model_type),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=_as_ids(hf.get("eos_token_id")),
            pad_token_id=hf.get("pad_token_id"),
            local_rope_theta=None if local is None else float(local.get("rope_theta", 10000.0)),
            local_rope_scaling=None if local is None else _rope_scaling(hf, local),
            partial_rotary_factor=_partial_rotary_factor(hf, head_dim),
            hidden_act=act if model_type != "gpt_oss" else "silu",
            gemma_norms=gemma,
            embed_scale=gemma,
            query_pre_attn_scalar=_query_pre_attn_scalar(hf) if gemma else None,
            final_logit_softcapping=_positive_or_none(hf, "final_logit_softcapping"),
            **_moe_fields(hf, model_type),
            **_window_fields(hf, model_type),
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ModelConfig":
        """Read `config.json` (and `generation_config.json` EOS ids, if present) from a model folder (a GGUF
        file's config: `tensor_source.read_config`)."""
        folder = Path(path)
        if not folder.is_dir() and folder.suffix.lower() == ".gguf":
            raise ConfigError(f"{folder} is a GGUF file, not a model folder; read its config with "
                              "selfguard_jax.tensor_source.read_config (sgj.load takes either).")
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"{cfg_file} not found: a model folder needs the Hugging Face config.json.")
        try:
            hf = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{cfg_file} is not valid JSON ({e}); re-save it with save_pretrained.") from e
        if not isinstance(hf, dict):
            raise ConfigError(f"{cfg_file} holds a JSON {type(hf).__name__}; expected an object of config fields.")
        try:
            cfg = cls.from_dict(hf)
        except ConfigError as e:
            raise ConfigError(f"{cfg_file}: {e}") from None
        gen_file = folder / "generation_config.json"
        if gen_file.is_file():
            try:
                gen = json.loads(gen_file.read_text())
                extra = _as_ids(gen.get("eos_token_id"))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError) as e:
                raise ConfigError(f"{gen_file}: not a valid generation config ({e}); expected a JSON object whose "
                                  "eos_token_id is an integer or a list of integers.") from None
            merged = tuple(dict.fromkeys(cfg.eos_token_ids + extra))
            cfg = dataclasses.replace(cfg, eos_token_ids=merged)
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        """The legacy-form config.json transformers reads back (used by the HF exporter)."""
        out = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
            "pad_token_id": self.pad_token_id,
        }
        rope = {**self.rope, "rope_theta": self.rope_theta}
        if self.partial_rotary_factor != 1.0:
            rope["partial_rotary_factor"] = self.partial_rotary_factor
        out["rope_parameters"] = rope
        if self.model_type == "gemma3_text":
            out["layer_types"] = ["sliding_attention" if w else "full_attention" for w in self.layer_windows]
        if self.model_type == "gemma3_text":
            local = {**dict(self.local_rope_scaling or self.rope_scaling), "rope_theta": self.local_rope_theta}
            out |= {"hidden_activation": self.hidden_act, "query_pre_attn_scalar": self.query_pre_attn_scalar,
                    "sliding_window": self.sliding_window,
                    "final_logit_softcapping": self.final_logit_softcapping,
                    "rope_parameters": {"full_attention": rope, "sliding_attention": local}}
        if self.model_type == "phi3":
            out["sliding_window"] = self.sliding_window
            if "original_max_position_embeddings" in rope:
                out["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
        if self.model_type != "qwen2":
            out["attention_bias"] = self.o_bias
        if self.model_type in ("qwen2", "qwen3", "qwen3_moe"):
            out["use_sliding_window"] = False
        if self.model_type == "qwen3_moe":
            out |= {"num_experts": self.num_experts, "num_experts_per_tok": self.num_experts_per_tok,
                    "moe_intermediate_size": self.moe_intermediate_size, "norm_topk_prob": self.norm_topk_prob,
                    "decoder_sparse_step": 1,
                    "mlp_only_layers": [i for i in range(self.num_layers) if i not in self.moe_layers]}
        if self.model_type == "gpt_oss":
            window = max(self.layer_windows, default=0) or None
            out |= {"num_local_experts": self.num_experts, "num_experts_per_tok": self.num_experts_per_tok,
                    "swiglu_alpha": self.swiglu_alpha, "swiglu_limit": self.swiglu_limit, "sliding_window": window,
                    "layer_types": ["sliding_attention" if w else "full_attention" for w in self.layer_windows]}
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        return out


def _require(hf: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in hf]
    if missing:
        raise ConfigError(f"config.json lacks required field(s) {missing}; is this a causal LM config?")


_POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                  "num_key_value_heads", "head_dim", "max_position_embeddings")


def _check_types(hf: dict) -> None:
    """Refuse fields of the wrong type or range (a string hidden size, a float or negative layer count, a null
    vocabulary, a rope dict given as a list), naming the field and what is expected."""
    required = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"}
    for key in _POSITIVE_INTS:
        value = hf.get(key)
        if value is None and key not in required:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"config.json field {key!r} is {value!r}; expected a positive integer.")
    for key in ("rms_norm_eps", "rope_theta"):
        value = hf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ConfigError(f"config.json field {key!r} is {value!r}; expected a positive number.")
    for key in ("rope_parameters", "rope_scaling"):
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            raise ConfigError(f"config.json field {key!r} is a {type(hf[key]).__name__}; expected an object "
                              "like {\"rope_type\": \"default\"}.")
    heads, kv = hf["num_attention_heads"], hf.get("num_key_value_heads") or hf["num_attention_heads"]
    if heads % kv:
        raise ConfigError(f"config.json field 'num_key_value_heads' is {kv}; expected a divisor of "
                          f"num_attention_heads ({heads}).")


_ROPE_NEEDS = {"linear": ("factor",), "yarn": ("factor",),
               "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def _rope_params(hf: dict, kind: str = "full_attention") -> dict[str, Any]:
    """The rope dict of one attention kind in either form: transformers-5 `rope_parameters` (per kind where the
    model has several) or legacy `rope_theta` / `rope_scaling` (Gemma 3: `rope_local_base_freq` for the sliding
    layers, whose rope is never scaled)."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        params = params.get(kind)
    elif kind == "sliding_attention":  # legacy Gemma 3
        return {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    if params is None:
        params = hf.get("rope_scaling") or {}
    return dict(params)


def _rope_theta(hf: dict) -> float:
    params = _rope_params(hf)
    default = 1_000_000.0 if hf.get("model_type") == "gemma3_text" else 10000.0
    return float(params.get("rope_theta", hf.get("rope_theta", default)))


def _rope_scaling(hf: dict, params: dict | None = None) -> tuple[tuple[str, Any], ...]:
    """The rope scaling of the full-attention layers (or of `params`, one kind's rope dict) as sorted pairs; lists
    (LongRoPE's factors) become tuples."""
    params = dict(_rope_params(hf) if params is None else params)
    params.pop("rope_theta", None)
    params.pop("partial_rotary_factor", None)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"config.json rope type {rope_type!r} (field 'rope_scaling'/'rope_parameters') is not supported; "
            f"supported: {SUPPORTED_ROPE_TYPES}. Dynamic NTK changes with sequence length and is not approximated.")
    if rope_type == "default":
        return (("rope_type", "default"),)
    if rope_type == "longrope":
        return _longrope(hf, params)
    for key in _ROPE_NEEDS[rope_type]:
        value = params.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"config.json rope field {key!r} is {value!r} for rope type {rope_type!r}; "
                              "expected a positive number.")
    if rope_type == "yarn" and "original_max_position_embeddings" not in params:
        params["original_max_position_embeddings"] = hf.get("max_position_embeddings")
    clean = {k: v for k, v in params.items() if v is not None and not isinstance(v, (list, dict))}
    return (("rope_type", rope_type),) + tuple(sorted(clean.items()))


def _longrope(hf: dict, params: dict) -> tuple[tuple[str, Any], ...]:
    """LongRoPE (Phi-3/Phi-4): short and long per-frequency factors, the original context length that switches
    between them, and the cos/sin attention factor transformers derives when the config gives none."""
    orig = params.get("original_max_position_embeddings") or hf.get("original_max_position_embeddings")
    if not isinstance(orig, int) or orig < 1:
        raise ConfigError(f"config.json rope type 'longrope' needs a positive integer "
                          f"'original_max_position_embeddings', got {orig!r}.")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    half = int(head_dim * _partial_rotary_factor(hf, head_dim)) // 2
    out: dict[str, Any] = {"original_max_position_embeddings": orig}
    for key in ("short_factor", "long_factor"):
        value = params.get(key)
        if not isinstance(value, (list, tuple)) or len(value) != half or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
            raise ConfigError(f"config.json rope field {key!r} must list {half} positive numbers (one per rotary "
                              f"frequency) for rope type 'longrope'; got {value!r:.80}.")
        out[key] = tuple(float(v) for v in value)
    factor = params.get("factor") or hf.get("max_position_embeddings", 4096) / orig
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
    out["attention_factor"] = float(attention_factor)
    return (("rope_type", "longrope"),) + tuple(sorted(out.items()))


def _partial_rotary_factor(hf: dict, head_dim: int) -> float:
    """The fraction of each head's dims that rope rotates (Phi-3/Phi-4-mini: 0.75); the rest pass through."""
    params = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    value = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"config.json field 'partial_rotary_factor' is {value!r}; expected a number in (0, 1].")
    if head_dim and int(head_dim * value) % 2:
        raise ConfigError(f"config.json field 'partial_rotary_factor' {value} rotates an odd number of the "
                          f"{head_dim} head dims; rope needs an even number.")
    return float(value)


def _query_pre_attn_scalar(hf: dict) -> int | float:
    """Gemma's query scale is this ** -0.5 (an integer in released configs, kept as given for the exporter)."""
    value = hf.get("query_pre_attn_scalar", 256)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"config.json field 'query_pre_attn_scalar' is {value!r}; expected a positive number.")
    return value


def _positive_or_none(hf: dict, key: str) -> float | None:
    value = hf.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"config.json field {key!r} is {value!r}; expected a positive number or null.")
    return float(value)


def _moe_fields(hf: dict, model_type: str) -> dict[str, Any]:
    """The routed-experts fields of a mixture-of-experts config; `moe_layers` lists the sparse blocks (Qwen3-MoE:
    every `decoder_sparse_step`-th block not in `mlp_only_layers`, as transformers builds them)."""
    if model_type == "gpt_oss":
        return _gpt_oss_fields(hf)
    if model_type != "qwen3_moe":
        return {}
    experts = hf.get("num_experts", hf.get("num_local_experts", 128))
    for key, value in (("num_experts", experts), ("num_experts_per_tok", hf.get("num_experts_per_tok", 8)),
                       ("moe_intermediate_size", hf.get("moe_intermediate_size", 768)),
                       ("decoder_sparse_step", hf.get("decoder_sparse_step", 1))):
        if not isinstance(value, int) or isinstance(value, bool) or value < (key != "num_experts"):
            raise ConfigError(f"config.json field {key!r} is {value!r}; expected a positive integer.")
    k, step = hf.get("num_experts_per_tok", 8), hf.get("decoder_sparse_step", 1)
    if experts and k > experts:
        raise ConfigError(f"config.json field 'num_experts_per_tok' is {k}, more than num_experts ({experts}).")
    dense = hf.get("mlp_only_layers") or []
    if not isinstance(dense, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in dense):
        raise ConfigError(f"config.json field 'mlp_only_layers' is {dense!r}; expected a list of layer indices.")
    layers = range(hf["num_hidden_layers"])
    return {"num_experts": experts, "num_experts_per_tok": k,
            "moe_intermediate_size": hf.get("moe_intermediate_size", 768),
            "norm_topk_prob": bool(hf.get("norm_topk_prob", False)),
            "moe_layers": tuple(i for i in layers if experts and i not in dense and (i + 1) % step == 0)}


def _gpt_oss_fields(hf: dict) -> dict[str, Any]:
    """gpt-oss: every block routed (biased top k, softmax over the chosen, clamped SwiGLU with biases), attention
    with one learned sink per head, sliding-window and full blocks as `layer_types` says."""
    L = hf["num_hidden_layers"]
    experts, k = hf.get("num_local_experts", hf.get("num_experts")), hf.get("num_experts_per_tok", 4)
    for key, value in (("num_local_experts", experts), ("num_experts_per_tok", k)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"config.json field {key!r} is {value!r}; expected a positive integer.")
    types = hf.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(L)]
    if len(types) != L or set(types) - {"sliding_attention", "full_attention"}:
        raise ConfigError(f"config.json field 'layer_types' is {types!r}; expected {L} entries of "
                          "'sliding_attention' or 'full_attention'.")
    window = hf.get("sliding_window") or 128
    return {"num_experts": experts, "num_experts_per_tok": k, "moe_intermediate_size": hf["intermediate_size"],
            "moe_layers": tuple(range(L)), "moe_style": "gpt_oss", "attention_sinks": True,
            "swiglu_alpha": float(hf.get("swiglu_alpha", 1.702)), "swiglu_limit": float(hf.get("swiglu_limit", 7.0)),
            "layer_windows": tuple(int(window) if t == "sliding_attention" else 0 for t in types)}


def _window_fields(hf: dict, model_type: str) -> dict[str, Any]:
    """`layer_windows` of a model whose blocks slide (gpt-oss: `_gpt_oss_fields`): Gemma 3 by `layer_types` (or
    legacy `sliding_window_pattern`: every n-th block full), Mistral and Phi-3 every block when `sliding_window`
    is set."""
    window, L = _sliding_window(hf, model_type), hf["num_hidden_layers"]
    if model_type == "gemma3_text":
        types = hf.get("layer_types")
        if not types:
            n = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
            types = ["sliding_attention" if (i + 1) % n else "full_attention" for i in range(L)]
        if len(types) != L or not set(types) <= set(LAYER_TYPES):
            raise ConfigError(f"config.json field 'layer_types' must give one of {LAYER_TYPES} for each of the "
                              f"{L} layers; got {sorted(set(map(str, types)))} over {len(types)}.")
        if window is None and "sliding_attention" in types:
            raise ConfigError("config.json field 'layer_types' has sliding layers but 'sliding_window' is not set.")
        return {"layer_windows": tuple(window if t == "sliding_attention" else 0 for t in types)}
    if model_type in ("mistral", "phi3") and window:
        return {"layer_windows": (window,) * L}
    return {}


def _sliding_window(hf: dict, model_type: str) -> int | None:
    """The window of a model's sliding blocks (run through `layer_windows`); None where none slides."""
    if model_type == "gpt_oss":  # per-block windows: `_gpt_oss_fields`
        return None
    layer_types = hf.get("layer_types")
    if model_type not in ("gemma3_text",) and layer_types and any(t != "full_attention" for t in layer_types):
        if model_type in ("qwen2", "qwen3", "qwen3_moe") and not hf.get("use_sliding_window", False):
            return None
        raise ConfigError(
            f"config.json field 'layer_types' mixes attention kinds ({sorted(set(layer_types))}); "
            "only full attention is implemented for this architecture.")
    if model_type in ("qwen2", "qwen3", "qwen3_moe"):
        if hf.get("use_sliding_window", False):
            raise ConfigError("config.json field 'use_sliding_window'=true is not supported; set it to false "
                              "(full attention) only if the checkpoint was trained that way.")
        return None
    if layer_types and all(t == "full_attention" for t in layer_types):
        return None
    window = hf.get("sliding_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
        raise ConfigError(f"config.json field 'sliding_window' is {window!r}; expected a positive integer or null.")
    return int(window) if window else None


def rope_inv_freq(cfg: ModelConfig, theta: float | None = None, rope: dict | None = None,
                  long: bool = False) -> tuple[np.ndarray, float]:
    """Inverse frequencies [rotary dims // 2] and the cos/sin attention factor, as transformers computes them, for
    the rope base `theta` and scaling `rope` (default: the config's full-attention ones). `long`: LongRoPE's
    long factors (used once a sequence passes the original context length)."""
    dim = int(cfg.head_dim * cfg.partial_rotary_factor)
    base = cfg.rope_theta if theta is None else theta
    rope = cfg.rope if rope is None else rope
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    # base ** exponent rounded once from float64: torch's float32 pow (within an ulp of it, where numpy's float32
    # pow is not); an ulp of a frequency is a visible angle error a few hundred positions on
    powers = (base ** exponent.astype(np.float64)).astype(np.float32)
    inv = 1.0 / powers
    kind = rope["rope_type"]
    if kind == "default":
        return inv, 1.0
    if kind == "longrope":
        ext = np.asarray(rope["long_factor" if long else "short_factor"], np.float32)
        return (1.0 / (ext * powers)).astype(np.float32), float(rope["attention_factor"])
    factor = float(rope["factor"])
    if kind == "linear":
        return inv / factor, 1.0
    if kind == "llama3":
        low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old_len = float(rope["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    return _yarn(inv, dim, base, factor, rope, cfg.max_position_embeddings)


def _yarn(inv: np.ndarray, dim: int, base: float, factor: float, rope: dict, max_pos: int) -> tuple[np.ndarray, float]:
    """YaRN frequencies and attention factor, following transformers' `_compute_yarn_parameters`."""
    old_len = float(rope.get("original_max_position_embeddings") or max_pos)
    beta_fast, beta_slow = float(rope.get("beta_fast", 32)), float(rope.get("beta_slow", 1))
    mscale, mscale_all = rope.get("mscale"), rope.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
        else:
            attention_factor = get_mscale(factor)

    def correction_dim(rot: float) -> float:
        return (dim * math.log(old_len / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv_out = (inv / factor) * (1 - extrapolation) + inv * extrapolation
    return inv_out.astype(np.float32), float(attention_factor)
