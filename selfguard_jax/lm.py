"""`sgj.load` and the `LM` handle: config, params, module and tokenizer together, with jitted entry points."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selfguard_jax import checkpoint, decode, gguf_checkpoint, tensor_source
from selfguard_jax.config import ModelConfig
from selfguard_jax.heads import tp_config, widen, widen_params
from selfguard_jax.model import (Params, SteerInput, Transformer, causal_mask, forward, hf_hidden_states,
                                 layers_are_stacked, positions_from_mask, stack_layers, unstack_layers)
from selfguard_jax.policy import ExecutionPolicy
from selfguard_jax.sharding import batch_sharding, param_shardings, shard_params
from selfguard_jax.spec import GenerationSpec
from selfguard_jax.steering import Steering


@functools.partial(jax.jit, static_argnames=("cfg", "scan_layers"))
def _forward(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, mask_BT: jax.Array, steer: SteerInput | None,
             scan_layers: bool) -> jax.Array:
    return forward(params, cfg, tokens_BT, positions_from_mask(mask_BT), causal_mask(mask_BT), steer=steer,
                   scan_layers=scan_layers)


_hidden_states = jax.jit(hf_hidden_states, static_argnames=("cfg", "scan_layers"))


@dataclasses.dataclass
class LM:
    """A loaded model. `params` is a plain nested dict of arrays; `policy` says how it runs (None: the platform's
    default for the params' layout)."""

    config: ModelConfig
    params: Params
    tokenizer: Any = None
    path: str | None = None
    mesh: Any = None
    execution: ExecutionPolicy | None = None

    @property
    def policy(self) -> ExecutionPolicy:
        """The execution policy: layer layout, cache layout, row groups (`policy.ExecutionPolicy`)."""
        if self.execution is not None:
            return self.execution
        return ExecutionPolicy.for_platform(jax.devices()[0].platform, layers_are_stacked(self.params))

    @property
    def scan_layers(self) -> bool:
        """Whether the blocks run under `lax.scan` (stacked params) or unrolled (per-layer params)."""
        return layers_are_stacked(self.params)

    def with_policy(self, **changes: Any) -> "LM":
        """The same model under another execution policy (fields of ExecutionPolicy); a new layer layout
        restacks or unstacks the params."""
        policy = dataclasses.replace(self.policy, **changes)
        params = stack_layers(self.params) if policy.scan_layers else unstack_layers(self.params, self.config)
        if self.mesh is not None:
            params = shard_params(params, self.config, self.mesh)
        return dataclasses.replace(self, params=params, execution=policy)

    def with_mesh(self, mesh) -> "LM":
        """The same model with params resharded onto `mesh` (sharding.make_mesh): batch over data, TP over model."""
        return dataclasses.replace(self, params=shard_params(self.params, self.config, mesh), mesh=mesh)

    def _on_mesh(self) -> contextlib.AbstractContextManager:
        """This model's mesh in context (`jax.set_mesh`) while it runs: the model lays out the KV cache it creates
        on it, and dispatches routed experts over it (`moe.py`); nothing without a mesh."""
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def place_batch(self, *arrays: np.ndarray) -> tuple:
        """Pad rows to a multiple of the mesh's data axis and shard them over it (no-op without a mesh).
        Filler rows repeat the last row; callers drop them."""
        if self.mesh is None:
            return tuple(jnp.asarray(a) for a in arrays)
        data = self.mesh.shape["data"]
        pad = -arrays[0].shape[0] % data
        out = []
        for a in arrays:
            a = np.asarray(a)
            if pad:
                a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])
            out.append(jax.device_put(a, batch_sharding(self.mesh, a.ndim)))
        return tuple(out)

    @property
    def module(self) -> Transformer:
        """The linen module of these params: `lm.module.apply({"params": lm.params}, tokens_BT, positions_BT,
        mask_BTS)` is `model.forward(lm.params, lm.config, ...)`."""
        return Transformer(self.config, dtype=self.dtype, per_layer=not self.scan_layers, scan_layers=self.scan_layers)

    @property
    def dtype(self) -> Any:
        return self.params["embed"].dtype

    def _inputs(self, input_ids, attention_mask):
        ids = jnp.asarray(input_ids, jnp.int32)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {ids.shape}.")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"input_ids hold ids outside [0, {self.config.vocab_size}); "
                             "was the prompt tokenized with another model's tokenizer?")
        mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}.")
        return ids, mask

    def forward(self, input_ids, attention_mask=None, steering: Steering | None = None) -> jax.Array:
        """Logits [B, T, V] float32; positions come from the mask, so left- and right-padding are exact."""
        ids, mask = self._inputs(input_ids, attention_mask)
        B = ids.shape[0]
        steer = None
        if steering is not None:
            steering.check(self.config.num_layers, self.config.hidden_size, B)
            steer = steering.prompt_input(mask)
        ids, mask = self.place_batch(ids, mask)
        if steer is not None and steer.gate_BT.shape[0] != ids.shape[0]:
            steer = steer._replace(gate_BT=self.place_batch(steer.gate_BT)[0])
        with self._on_mesh():
            return _forward(self.params, self.config, ids, mask, steer, self.scan_layers)[:B]

    def hidden_states(self, input_ids, attention_mask=None, steering: Steering | None = None) -> jax.Array:
        """[L + 1, B, T, D] float32 with Hugging Face's indexing: [0] embeddings, [k + 1] output of block k
        (the last one after the final norm, as transformers returns it)."""
        ids, mask = self._inputs(input_ids, attention_mask)
        if steering is not None:
            steering.check(self.config.num_layers, self.config.hidden_size, ids.shape[0])
        steer = None if steering is None else steering.prompt_input(mask)
        with self._on_mesh():
            return _hidden_states(self.params, self.config, ids, mask, steer=steer, scan_layers=self.scan_layers)

    def generate(self, prompts, spec: GenerationSpec | None = None, *, slots: int | None = None,
                 reminder_rows=None, progress: bool = False, eager: bool = False,
                 **keywords: Any) -> decode.GenerationOutput:
        """Generate for ragged token-id prompts under `spec` (see `decode.generate`). The keyword form
        (max_new_tokens, temperature, top_p, top_k, seed, steering, reminder, thinking, think_end_ids, stop_ids)
        builds the spec with `GenerationSpec.from_keywords`."""
        if spec is not None and keywords:
            raise ValueError(f"give either a GenerationSpec or keywords, not both (got spec and {sorted(keywords)}); "
                             "change the spec with spec.replace(...).")
        spec = GenerationSpec.from_keywords(**keywords) if spec is None else spec
        run = dict(slots=slots, reminder_rows=reminder_rows, progress=progress, eager=eager)
        with self._on_mesh():
            return decode.generate(self, prompts, spec, **run)


def load(path: str | Path, dtype: str = "float32", tokenizer: bool = True, scan_layers: bool | None = None,
         mesh: Any = None) -> LM:
    """Load an HF folder (config.json + safetensors [+ tokenizer]) or a folder written by `save_orbax`.

    `scan_layers` picks the layer layout: stacked params under `lax.scan` (compile time flat in depth) or
    per-layer params unrolled; None takes the platform's execution policy (`ExecutionPolicy.for_platform`,
    then `lm.policy`; override with `lm.with_policy`).
    With a mesh, each tensor goes straight onto its NamedSharding as it is read (host memory peaks near the
    largest tensor, not the checkpoint)."""
    folder = Path(path)
    gguf = tensor_source.is_gguf_file(folder)
    if not folder.is_dir() and not gguf:
        raise FileNotFoundError(f"model folder {folder} does not exist (Hub ids are not fetched here: download "
                                "the checkpoint first, e.g. with `huggingface-cli download`).")
    if scan_layers not in (None, True, False):
        raise ValueError(f"scan_layers must be True, False or None (the backend's default), got {scan_layers!r}.")
    cfg = tensor_source.read_config(folder)
    policy = ExecutionPolicy.for_platform(jax.devices()[0].platform, scan_layers)
    scan_layers = policy.scan_layers
    shardings = None
    if mesh is not None:
        shardings = param_shardings(cfg, mesh, stacked=scan_layers)
    model = 1 if mesh is None else mesh.shape["model"]
    wide = tp_config(cfg, model) != cfg  # heads the model axis does not divide: widened on the host (heads.py)
    if checkpoint.is_orbax_folder(folder):
        stacked = None if shardings is None or wide else param_shardings(cfg, mesh)
        params = checkpoint.restore_orbax(folder, cfg, dtype, stacked)
        if not scan_layers:
            params = unstack_layers(params, cfg)
        if shardings is not None and (wide or not scan_layers):
            params = jax.tree.map(jax.device_put, widen_params(params, cfg, model), shardings)
    else:
        place = None if shardings is None else (
            lambda p, a: jax.device_put(widen(p[-1], a, cfg, model, len(p) == 2) if len(p) > 1 else a,
                                        functools.reduce(lambda node, key: node[key], p, shardings)))
        params = checkpoint.load_params(tensor_source.open_tensors(folder), cfg, dtype, place,
                                        per_layer=not scan_layers)
    tok = (gguf_checkpoint.load_tokenizer(folder) if gguf else load_tokenizer(folder)) if tokenizer else None
    return LM(config=cfg, params=params, tokenizer=tok, path=str(folder), mesh=mesh, execution=policy)


def load_tokenizer(folder: str | Path) -> Any:
    """The folder's tokenizer through AutoTokenizer, offline, no remote code; None when there is none."""
    folder = Path(folder)
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # tokenizers raises its own exception types for a corrupt file
        raise ValueError(f"{folder}: the tokenizer files cannot be read ({type(e).__name__}: {e}); "
                         "re-download tokenizer.json and tokenizer_config.json.") from e
