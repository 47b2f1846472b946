"""Hugging Face safetensors <-> params, one tensor at a time; orbax save/restore of converted params.

Never unpickles: `*.bin` / `*.pt` checkpoints are refused with the command that converts them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from selfguard_jax import mxfp4
from selfguard_jax.config import ModelConfig
from selfguard_jax.errors import CheckpointError
from selfguard_jax.model import Params, stack_layers
from selfguard_jax.safe_write import atomic_folder, require_space
from selfguard_jax.weights import Weight, layers_are_stacked, param_shapes, weight_table

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


INDEX_GLOB = "*.safetensors.index.json"
# What a converted checkpoint replaces in an existing folder: weights of either format and their bookkeeping.
CHECKPOINT_ENTRIES = ("*.safetensors", INDEX_GLOB, "params", "selfguard_jax.json")


class NonFiniteWeightWarning(UserWarning):
    """A checkpoint tensor holds NaN or inf values."""


def _shard_keys(path: Path) -> list[str]:
    """The tensor names in one safetensors file; a truncated or corrupt file is a CheckpointError naming it."""
    try:
        with safe_open(path, framework="numpy") as h:
            return list(h.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt: {e}); "
                              "re-download or re-convert it.") from e


class SafetensorsFolder:
    """The tensors of an HF folder, opened lazily and read one at a time. A sharded checkpoint is read through
    its index only (a stale shard beside it is ignored); without an index, a tensor in two files is an error.
    An MXFP4 pair `<name>_blocks` / `<name>_scales` (gpt-oss experts) is presented as `<name>`, dequantised."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        indexes = sorted(self.folder.glob(INDEX_GLOB))
        if len(indexes) > 1:
            raise CheckpointError(f"{self.folder} has several index files {[p.name for p in indexes]}; "
                                  "keep the one that belongs to the weights.")
        self.where: dict[str, Path] = self._from_index(indexes[0]) if indexes else self._from_files()

    def _from_files(self) -> dict[str, Path]:
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            pickles = [p.name for p in self.folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
            if pickles:
                raise CheckpointError(
                    f"{self.folder} holds only pickle checkpoints {pickles}; they are never unpickled here. "
                    "Convert once with transformers in a trusted environment: "
                    "AutoModelForCausalLM.from_pretrained(path).save_pretrained(out, safe_serialization=True).")
            raise CheckpointError(f"{self.folder} has no *.safetensors file; is this a Hugging Face model folder?")
        where: dict[str, Path] = {}
        for f in files:
            for key in _shard_keys(f):
                if key in where:
                    raise CheckpointError(f"tensor {key!r} is in both {where[key].name} and {f.name} in {self.folder}, "
                                          "which has no index file to say which is current; remove the stale file.")
                where[key] = f
        return where

    def _from_index(self, index: Path) -> dict[str, Path]:
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a valid index file ({e}); expected JSON with a 'weight_map'.") from e
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: field 'weight_map' is missing or not an object of tensor -> file name.")
        where = {key: self.folder / name for key, name in weight_map.items()}
        for shard in sorted(set(where.values())):
            if not shard.is_file():
                raise CheckpointError(f"{index} names shard {shard.name}, which is missing from {self.folder}.")
            listed = {k for k, f in where.items() if f == shard}
            absent = sorted(listed - set(_shard_keys(shard)))
            if absent:
                raise CheckpointError(f"{index} places {absent[:4]} in {shard.name}, which does not hold them; "
                                      "the index and the shards are from different checkpoints.")
        return where

    def keys(self) -> set[str]:
        pairs = {k[:-len("_blocks")] for k in self.where if k.endswith("_blocks") and k[:-7] + "_scales" in self.where}
        return (set(self.where) - {p + s for p in pairs for s in ("_blocks", "_scales")}) | pairs

    def file_of(self, key: str) -> Path:
        return self.where.get(key) or self.where[key + "_blocks"]

    def get(self, key: str) -> np.ndarray:
        if key not in self.where and key + "_blocks" in self.where and key + "_scales" in self.where:
            return mxfp4.dequantize(self._read(key + "_blocks"), self._read(key + "_scales"))
        return self._read(key)

    def _read(self, key: str) -> np.ndarray:
        if key not in self.where:
            raise CheckpointError(f"tensor {key!r} is missing from {self.folder}; the checkpoint is incomplete "
                                  "or belongs to another architecture than config.json says.")
        try:
            with safe_open(self.where[key], framework="numpy") as h:
                return h.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{self.where[key]}: tensor {key!r} cannot be read (truncated or corrupt: {e}).") from e


def _plan(cfg: ModelConfig) -> Iterator[tuple[tuple[str, ...], Weight]]:
    """(our path, its weight-table entry) for every param, layer weights stacked: ("layers", name)."""
    for top, node in weight_table(cfg).items():
        if top == "layers":
            yield from ((("layers", name), w) for name, w in node.items())
        else:
            yield (top,), node


def load_params(folder: str | Path, cfg: ModelConfig, dtype: str = "float32",
                place: Callable[[tuple, np.ndarray], jax.Array] | None = None, per_layer: bool = False) -> Params:
    """Read an HF folder into our nested params, one tensor at a time, checking names and shapes.

    `place(path, array)` puts each finished host array on devices (default: `jax.device_put`); a sharded
    loader passes one that puts it straight onto its NamedSharding. The layer params come stacked, paths
    ("layers", name), or with `per_layer` as a tuple of per-layer dicts, paths ("layers", i, name).
    """
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}.")
    np_dtype = DTYPES[dtype]
    place = place or (lambda path, a: jax.device_put(a))
    src = SafetensorsFolder(folder) if isinstance(folder, (str, Path)) else folder  # or a gguf_checkpoint.GGUFFile
    used: set[str] = set()
    params: Params = {}
    layers: list[Params] = [{} for _ in range(cfg.num_layers)]
    stacked: Params = {}
    for path, w in _plan(cfg):
        name = path[-1]
        used.update(w.hf_keys())
        if len(path) == 1:
            params[name] = place(path, _checked(src, w.hf[0], w).astype(np_dtype))
        elif per_layer:
            for i, entry in zip(w.layer_ids or range(cfg.num_layers), w.hf):
                layers[i][name] = place(("layers", i, name), _layer(src, entry, w, np_dtype))
        else:
            host = np.empty(w.shape, np_dtype)
            for i, entry in enumerate(w.hf):
                host[i] = _layer(src, entry, w, np_dtype)
            stacked[name] = place(path, host)
            del host
    params["layers"] = tuple(layers) if per_layer else stacked
    extra = src.keys() - used - {"lm_head.weight"} if cfg.tie_word_embeddings else src.keys() - used
    extra = {k for k in extra if not k.endswith("rotary_emb.inv_freq")}
    if extra:
        raise CheckpointError(f"{folder} has tensors this config does not use: {sorted(extra)[:8]}"
                              f"{' ...' if len(extra) > 8 else ''}; config.json may not match the weights.")
    return params


def _layer(src: SafetensorsFolder, entry: str | tuple[str, ...], w: Weight, dtype: Any) -> np.ndarray:
    """One layer's slice of `w` in our layout: one HF tensor, or one per expert stacked along the expert axis."""
    if isinstance(entry, str):
        return _checked(src, entry, w).astype(dtype)
    out = np.empty(w.layer_shape, dtype)
    for e, key in enumerate(entry):
        out[e] = _checked(src, key, w)
    return out


def _checked(src: SafetensorsFolder, key: str, w: Weight) -> np.ndarray:
    """The tensor `key` in our layout, its HF shape checked exactly (a transposed same-size shape is refused);
    non-finite values give a NonFiniteWeightWarning naming the tensor."""
    raw = src.get(key)
    hf_shape = w.hf_shape
    if tuple(raw.shape) != hf_shape:
        raise CheckpointError(f"{src.file_of(key)}: tensor {key!r} has shape {tuple(raw.shape)} but config.json "
                              f"implies {hf_shape}; the weights and config.json disagree.")
    if raw.dtype.kind == "f" or raw.dtype == ml_dtypes.bfloat16:
        _warn_nonfinite(src.file_of(key), key, raw)
    return w.to_ours(raw)


def _warn_nonfinite(path: Path, key: str, raw: np.ndarray) -> None:
    """Warn when `raw` holds NaN or inf (a fast float64 sum first; counted only when it is not finite)."""
    if np.isfinite(raw.sum(dtype=np.float64)):
        return
    bad = int(raw.size - np.isfinite(raw).sum())
    if bad:
        warnings.warn(f"{path}: tensor {key!r} has {bad} non-finite values (NaN/inf) of {raw.size}; every "
                      "output will be NaN. Re-download or re-convert the checkpoint.", NonFiniteWeightWarning,
                      stacklevel=2)


def export_hf(params: Params, cfg: ModelConfig, out_dir: str | Path, tokenizer_from: str | Path | None = None) -> Path:
    """Write params back as an HF folder (config.json + model.safetensors) that transformers loads.

    Written atomically (built beside `out_dir`, then moved in); weight files already in `out_dir` are replaced."""
    out = Path(out_dir)
    tensors: dict[str, np.ndarray] = {}
    for path, w in _plan(cfg):
        if len(path) == 1:
            host = np.asarray(jax.device_get(params[path[0]]))
        elif layers_are_stacked(params):
            host = np.asarray(jax.device_get(params["layers"][path[1]]))
        else:
            host = np.stack([np.asarray(jax.device_get(lp[path[1]])) for lp in params["layers"] if path[1] in lp])
        if len(path) == 1:
            tensors[w.hf[0]] = np.ascontiguousarray(w.to_hf(host))
        else:
            for i, entry in enumerate(w.hf):
                for e, key in enumerate(entry) if w.per_expert else ((None, entry),):
                    part = w.to_hf(host[i] if e is None else host[i, e])
                    if w.hf_rows is not None:  # rows of a fused tensor (Phi-3): placed into it
                        part = _fill_rows(tensors.setdefault(key, np.empty(w.hf_shape, part.dtype)), w.hf_rows, part)
                    tensors[key] = np.ascontiguousarray(part)
    hf_cfg = cfg.to_hf_dict()
    hf_cfg["dtype"] = str(np.dtype(params["embed"].dtype).name)
    require_space(out, sum(t.nbytes for t in tensors.values()))
    with atomic_folder(out, replace=CHECKPOINT_ENTRIES) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        if tokenizer_from is not None:
            copy_tokenizer(tokenizer_from, tmp)
    return out


def _fill_rows(fused: np.ndarray, rows: tuple[int, int], part: np.ndarray) -> np.ndarray:
    fused[rows[0]:rows[1]] = part
    return fused


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt")


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    """Copy the tokenizer and generation config files that exist in src."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def save_orbax(params: Params, cfg: ModelConfig, out_dir: str | Path, tokenizer_from: str | Path | None = None) -> Path:
    """Save converted params with orbax (plus config.json and tokenizer files) for fast, sharded restore.

    Written atomically (built beside `out_dir`, then moved in); weight files already in `out_dir` are replaced."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    require_space(out, sum(x.nbytes for x in jax.tree.leaves(params)))
    with atomic_folder(out, replace=CHECKPOINT_ENTRIES) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", stack_layers(params), force=True)
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
        (tmp / "selfguard_jax.json").write_text(json.dumps({"format": "orbax", "dtype": str(params["embed"].dtype)}))
        if tokenizer_from is not None:
            copy_tokenizer(tokenizer_from, tmp)
    return out


def restore_orbax(folder: str | Path, cfg: ModelConfig, dtype: str | None = None,
                  shardings: Any | None = None) -> Params:
    """Restore params saved by `save_orbax` (stacked layout), optionally straight onto `shardings` (a matching
    stacked pytree)."""
    import orbax.checkpoint as ocp

    folder = Path(folder).absolute()
    meta_file = folder / "selfguard_jax.json"
    try:
        meta = json.loads(meta_file.read_text())
        saved = np.dtype(DTYPES.get(meta["dtype"], meta["dtype"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_file}: not a valid converted-checkpoint record ({type(e).__name__}: {e}); "
                              'expected JSON like {"format": "orbax", "dtype": "bfloat16"}. Re-run convert.') from None
    if not (folder / "params").is_dir():
        raise CheckpointError(f"{folder} has no params/ folder; the converted checkpoint is incomplete. Re-run convert.")
    target_dtype = DTYPES[dtype] if dtype else saved

    def abstract(shape, sharding=None):
        return jax.ShapeDtypeStruct(shape, target_dtype, sharding=sharding)

    shapes = param_shapes(cfg)
    is_shape = lambda x: isinstance(x, tuple)
    if shardings is None:
        target = jax.tree.map(abstract, shapes, is_leaf=is_shape)
    else:
        target = jax.tree.map(abstract, shapes, shardings, is_leaf=is_shape)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(folder / "params", target)


def is_orbax_folder(folder: str | Path) -> bool:
    return (Path(folder) / "selfguard_jax.json").is_file()
