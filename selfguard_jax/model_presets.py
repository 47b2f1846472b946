"""Model presets (configs/models/*.yaml): the Self-Guard steering setting known for a model, found by the
model's architecture and size or named explicitly, and the rule for a model no preset knows (a clear error).

A preset is matched on (model_type, num_layers, hidden_size, vocab_size): the config.json facts that tell the
released checkpoints apart without trusting a file or folder name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from selfguard_jax.extract import OVERSTEER_LIMIT
from selfguard_jax.yaml_files import read_yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"
# The Self-Guard paper's final setting on Qwen3-8B: blocks 30, 31, 32 of 36. For a model without a preset the
# same relative depth is suggested, never applied silently (the alpha that works depends on the vectors).
PAPER_LAYERS, PAPER_DEPTH = (30, 31, 32), 36


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """One configs/models/*.yaml file. steer_layers/steer_alpha are None until a paper or a sweep sets them."""

    name: str
    model: str
    model_type: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    think_markers: tuple[str, str] | None = None
    steer_layers: tuple[int, ...] | None = None
    steer_alpha: float | None = None
    steer_depth: tuple[float, ...] | None = None  # relative depth (0..1): a suggestion, never applied by itself
    status: str = ""
    path: str = ""

    def matches(self, config: Any) -> bool:
        """Whether a ModelConfig is this preset's architecture and size."""
        return (self.model_type, self.num_layers, self.hidden_size, self.vocab_size) == (
            config.model_type, config.num_layers, config.hidden_size, config.vocab_size)

    def suggested_layers(self, num_layers: int | None = None) -> list[int] | None:
        """steer_depth resolved to layer ids for `num_layers` blocks (default the preset's own); None without it."""
        if self.steer_depth is None:
            return None
        n = self.num_layers if num_layers is None else num_layers
        return sorted({min(n - 1, round(d * n)) for d in self.steer_depth})

    def describe(self) -> str:
        return f"{self.name} ({self.model}: {self.model_type}, {self.num_layers} layers x {self.hidden_size})"


def load_model_preset(path: str | Path) -> ModelPreset:
    """A configs/models/*.yaml preset: the model id, its architecture and size, think markers, steering setting."""
    data = read_yaml(path)
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"{path} is not a model preset: it needs at least a 'model' key.")
    arch = data.get("architecture") or {}
    markers = data.get("think_markers")
    layers = data.get("steer_layers")
    alpha = data.get("steer_alpha")
    depth = data.get("steer_depth")
    if depth is not None and not all(0 <= float(d) < 1 for d in depth):
        raise ValueError(f"{path}: steer_depth {depth} must be fractions of the model's depth in [0, 1).")
    return ModelPreset(name=Path(path).stem, model=data["model"], model_type=arch.get("model_type"),
                       num_layers=arch.get("num_layers"), hidden_size=arch.get("hidden_size"),
                       vocab_size=arch.get("vocab_size"), think_markers=tuple(markers) if markers else None,
                       steer_layers=None if layers is None else tuple(int(k) for k in layers),
                       steer_alpha=None if alpha is None else float(alpha),
                       steer_depth=None if depth is None else tuple(float(d) for d in depth), status=str(data.get("status", "")),
                       path=str(path))


def list_presets(directory: str | Path = PRESET_DIR) -> list[ModelPreset]:
    """Every preset in `directory`, by name."""
    return [load_model_preset(p) for p in sorted(Path(directory).glob("*.yaml"))]


def find_preset(config: Any = None, name: str | Path | None = None,
                directory: str | Path = PRESET_DIR) -> ModelPreset | None:
    """The preset named by `name` (a file stem in `directory` or a .yaml path), else the one matching `config`
    by architecture and size, else None. A named preset that does not exist is an error listing the names."""
    if name is not None:
        path = Path(name)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            return load_model_preset(path)
        known = list_presets(directory)
        for p in known:
            if p.name == str(name):
                return p
        raise ValueError(f"model preset {str(name)!r} is unknown; known presets: {[p.name for p in known]} "
                         f"(in {directory}), or give a path to a preset .yaml file.")
    if config is None:
        return None
    return next((p for p in list_presets(directory) if p.matches(config)), None)


def relative_layers(num_layers: int) -> list[int]:
    """The paper's blocks 30-32 of 36 at the same relative depth in a model of `num_layers` blocks."""
    return sorted({min(num_layers - 1, round(k * num_layers / PAPER_DEPTH)) for k in PAPER_LAYERS})


def steering_setting(config: Any, preset: str | Path | ModelPreset | None = None,
                     layers: list[int] | None = None, alpha: float | None = None) -> tuple[tuple[int, ...], float]:
    """(layers, alpha) for a steering recipe on this model: what the caller gave, the rest from the preset (named,
    or matched by architecture and size); a model no preset covers is an error that names the flags to pass."""
    found = preset if isinstance(preset, ModelPreset) else find_preset(config, preset)
    origin = "the given layers" if layers is not None else f"preset {getattr(found, 'name', '')}"
    if layers is None and found is not None:
        layers = found.steer_layers
    if alpha is None and found is not None:
        alpha = found.steer_alpha
    if layers is None or alpha is None:
        missing = " and ".join(f for f, v in (("--layers", layers), ("--alpha", alpha)) if v is None)
        if found is not None:
            why = f"preset {found.describe()} records no steering setting yet ({found.status or 'null'})"
        else:
            shape = "" if config is None else (
                f" ({config.model_type}, {config.num_layers} layers x {config.hidden_size})")
            why = f"no model preset in {PRESET_DIR} matches this model{shape}"
        depth = None if found is None else found.suggested_layers(None if config is None else config.num_layers)
        if depth is not None:
            hint = (f"; the preset's steer_depth {list(found.steer_depth)} (relative depth, not set by a sweep) "
                    f"would be --layers {','.join(map(str, depth))}")
        elif config is not None:
            hint = (f"; the paper's relative depth (blocks 30-32 of Qwen3-8B's 36) would be --layers "
                    f"{','.join(map(str, relative_layers(config.num_layers)))} here")
        else:
            hint = ""
        raise ValueError(f"Self-Guard steering needs {missing}: {why}. Pass {missing} (API: "
                         f"steer_layers=, steer_alpha=) or --preset NAME{hint}; choose alpha with "
                         f"`selfguard-jax sweep`, keeping the summed over-steering ratio under {OVERSTEER_LIMIT}.")
    layers = tuple(int(k) for k in layers)
    if config is not None:
        bad = [k for k in layers if not 0 <= k < config.num_layers]
        if bad:
            raise ValueError(f"steering layers {bad} from {origin} are outside 0..{config.num_layers - 1} for this "
                             f"model of {config.num_layers} layers; pass --layers (e.g. "
                             f"{','.join(map(str, relative_layers(config.num_layers)))}).")
    return layers, float(alpha)
