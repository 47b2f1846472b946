"""The eval config (configs/eval/*.yaml), typed: every key at every level is checked, so a typo is an error
naming it instead of a setting silently ignored; labels of recipes and datasets must be unique."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Mapping

from selfguard_jax.errors import ConfigError
from selfguard_jax.evaluate.datasets import DATASETS, unknown_dataset
from selfguard_jax.evaluate.judges import check_judges
from selfguard_jax.evaluate.metrics import UNFINISHED_ROWS
from selfguard_jax.evaluate.model_judges import WILDGUARD_INPUTS
from selfguard_jax.recipes import get_recipe
from selfguard_jax.yaml_files import parse_yaml, read_yaml

# allowed keys of each nested mapping, with the types their values must have
GENERATION_KEYS = {"batch_size": int, "max_new_tokens": int, "temperature": (int, float), "top_p": (int, float),
                   "top_k": int, "seed": int}
LLAMA_GUARD_KEYS = {"model": str, "protocol": str, "dtype": str, "batch_size": int, "max_new_tokens": int}
WILDGUARD_KEYS = {"model": str, "input": str, "dtype": str, "batch_size": int, "max_new_tokens": int}
SORRY_JUDGE_KEYS = {"model": str, "dtype": str, "batch_size": int, "max_new_tokens": int}
MESH_KEYS = {"data": int, "model": int}
EXTRACT_KEYS = {"name": str, "load": dict, "method": str, "suffix": str, "read": str}
DATASET_KEYS = {"name": str, "path": str, "split": str, "label": str, "limit": int, "seed": int, "source": str,
                "style": str, "judges": list}
LOAD_KEYS = {k: v for k, v in DATASET_KEYS.items() if k not in ("name", "label", "judges")}
GUARD_PROTOCOLS = ("saferemind", "selfguard")
# how a protocol counts its rows (metrics.UNFINISHED_ROWS): "judged" sends unfinished rows to the model judges
PROTOCOL_KEYS = {"unfinished_rows": str}


def _check_mapping(where: str, value: Any, keys: Mapping[str, Any], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of {sorted(keys)}, got {value!r}.")
    unknown = sorted(set(value) - set(keys))
    missing = [k for k in required if k not in value]
    if unknown or missing:
        raise ConfigError(f"{where}: " + (f"unknown keys {[f'{where}.{k}' for k in unknown]}" if unknown else "")
                          + ("; " if unknown and missing else "") + (f"missing keys {missing}" if missing else "")
                          + f"; valid keys: {sorted(keys)}.")
    for k, v in value.items():
        kinds = keys[k]
        if kinds is not None and v is not None and (not isinstance(v, kinds) or isinstance(v, bool)):
            raise ConfigError(f"{where}.{k} is {v!r}; expected {getattr(kinds, '__name__', kinds)}.")
    return value


def dataset_label(spec: Mapping[str, Any]) -> str:
    """The label a datasets entry writes its files under: `label`, else `name` or `name-split`."""
    return spec.get("label") or (spec["name"] if not spec.get("split") else f"{spec['name']}-{spec['split']}")


def _distributed_keys() -> dict[str, Any]:
    import jax

    return {name: None for name in inspect.signature(jax.distributed.initialize).parameters}


@dataclasses.dataclass
class EvalConfig:
    """What to run; read from YAML (configs/eval/*.yaml), with `key=value` overrides, and checked."""

    model: str
    datasets: list[dict]
    recipes: list[Any]
    out_dir: str = "runs/eval"
    dtype: str = "float32"
    scan_layers: bool | None = None  # None: scan on TPU, unrolled per-layer params elsewhere
    vector: str | None = None
    extract: dict | None = None
    generation: dict = dataclasses.field(default_factory=dict)
    judges: list[str] = dataclasses.field(default_factory=lambda: ["keyword"])
    llama_guard: dict | None = None
    wildguard: dict | None = None
    sorry_judge: dict | None = None
    protocol: dict = dataclasses.field(default_factory=dict)
    mesh: dict | None = None
    distributed: dict | None = None
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every nested key and value type; known dataset and judge names; unique labels."""
        for key, kind in (("model", str), ("out_dir", str), ("dtype", str), ("bootstrap", int)):
            if not isinstance(getattr(self, key), kind) or isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} is {getattr(self, key)!r}; expected {kind.__name__}.")
        for key, kind in (("vector", str), ("scan_layers", bool)):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), kind):
                raise ConfigError(f"{key} is {getattr(self, key)!r}; expected {kind.__name__} or null.")
        _check_mapping("generation", self.generation, GENERATION_KEYS)
        if not isinstance(self.judges, list):
            raise ConfigError(f"judges must be a list of names, got {self.judges!r}.")
        try:
            check_judges(self.judges)
        except ValueError as e:
            raise ConfigError(f"judges: {e}") from None
        if self.llama_guard is not None:
            _check_mapping("llama_guard", self.llama_guard, LLAMA_GUARD_KEYS)
            if self.llama_guard.get("protocol", "saferemind") not in GUARD_PROTOCOLS:
                raise ConfigError(f"llama_guard.protocol is {self.llama_guard['protocol']!r}; "
                                  f"use one of {GUARD_PROTOCOLS}.")
        for name, keys in (("wildguard", WILDGUARD_KEYS), ("sorry_judge", SORRY_JUDGE_KEYS)):
            if getattr(self, name) is not None:
                _check_mapping(name, getattr(self, name), keys)
        if (self.wildguard or {}).get("input", "list-string") not in WILDGUARD_INPUTS:
            raise ConfigError(f"wildguard.input is {self.wildguard['input']!r}; use one of {WILDGUARD_INPUTS}.")
        _check_mapping("protocol", self.protocol, PROTOCOL_KEYS)
        if self.unfinished_rows not in UNFINISHED_ROWS:
            raise ConfigError(f"protocol.unfinished_rows is {self.unfinished_rows!r}; use one of {UNFINISHED_ROWS}.")
        if self.unfinished_rows == "judged" and "llama_guard" in self.judges and \
                (self.llama_guard or {}).get("protocol", "saferemind") != "selfguard":
            raise ConfigError("protocol.unfinished_rows: judged sends unfinished rows' whole text to Llama Guard, "
                              "which only llama_guard.protocol: selfguard does; set it, or unfinished_rows: excluded.")
        if self.mesh is not None:
            _check_mapping("mesh", self.mesh, MESH_KEYS)
        if self.distributed is not None:
            _check_mapping("distributed", self.distributed, _distributed_keys())
        if self.extract is not None:
            _check_mapping("extract", self.extract, EXTRACT_KEYS, required=("name",))
            _check_mapping("extract.load", self.extract.get("load", {}), LOAD_KEYS)
        self._check_datasets()
        self._check_recipes()

    @property
    def unfinished_rows(self) -> str:
        """Whether rows cut off before their thinking closed are judged and counted (metrics.UNFINISHED_ROWS)."""
        return self.protocol.get("unfinished_rows", "excluded")

    def judges_for(self, label: str) -> list[str]:
        """The judges of one dataset: its entry's `judges`, else the config's."""
        spec = next((d for d in self.datasets if dataset_label(d) == label), {})
        return list(spec.get("judges", self.judges))

    def _check_datasets(self) -> None:
        if not isinstance(self.datasets, list) or not self.datasets:
            raise ConfigError("datasets must be a non-empty list of {name: ..., path: ...} entries.")
        labels = []
        for i, spec in enumerate(self.datasets):
            _check_mapping(f"datasets[{i}]", spec, DATASET_KEYS, required=("name",))
            try:
                check_judges(spec.get("judges", []))
            except ValueError as e:
                raise ConfigError(f"datasets[{i}].judges: {e}") from None
            if spec["name"] not in DATASETS:
                raise ConfigError(f"datasets[{i}].name {spec['name']!r} is unknown: "
                                  f"{unknown_dataset(spec['name'])}.")
            labels.append(dataset_label(spec))
        _unique("datasets", labels)

    def _check_recipes(self) -> None:
        if not isinstance(self.recipes, list) or not self.recipes:
            raise ConfigError("recipes must be a non-empty list of names or {recipe: NAME, ...} entries.")
        _unique("recipes", [r.name for r in self.build_recipes()])

    def build_recipes(self, model_config: Any = None) -> list:
        """The Recipe objects, labels applied (a recipe entry is a name, or {recipe, label, field: value}); with the
        loaded model's config, steering layers/alpha an entry does not set come from the model's preset."""
        out = []
        for i, item in enumerate(self.recipes):
            if isinstance(item, str):
                item = {"recipe": item}
            if not isinstance(item, dict) or "recipe" not in item:
                raise ConfigError(f"recipes[{i}] is {item!r}; expected a recipe name or a mapping with 'recipe'.")
            fields = dict(item)
            label = fields.pop("label", None)
            try:
                recipe = get_recipe(fields.pop("recipe"), model_config=model_config, **fields)
            except ValueError as e:
                raise ConfigError(f"recipes[{i}]: {e}") from None
            out.append(dataclasses.replace(recipe, name=label) if label else recipe)
        return out

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> "EvalConfig":
        """Read a config file and apply `a.b=value` overrides (values parsed as YAML)."""
        raw = read_yaml(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} is not an eval config (a YAML mapping with model, datasets, recipes).")
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value (e.g. generation.batch_size=4).")
            key, value = item.split("=", 1)
            node = raw
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {item!r}: {p} is not a mapping.")
            node[leaf] = parse_yaml(value, f"override {item!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - fields)
        missing = sorted({"model", "datasets", "recipes"} - set(raw))
        if unknown or missing:
            raise ConfigError(f"{path}: unknown keys {unknown}, missing keys {missing}; valid keys: {sorted(fields)}.")
        return cls(**raw)


def _unique(what: str, labels: list[str]) -> None:
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ConfigError(f"{what}: labels {repeated} appear more than once; give each entry its own `label:` "
                          "(results are written per label, so two entries would share one file).")
