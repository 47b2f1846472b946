"""Where a checkpoint's tensors and config come from: a Hugging Face safetensors folder or a GGUF file, behind one
small protocol (HF tensor names, read one tensor at a time)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from selfguard_jax.checkpoint import SafetensorsFolder
from selfguard_jax.config import ModelConfig
from selfguard_jax.gguf_checkpoint import GGUFFile, is_gguf


class TensorSource(Protocol):
    """Tensors by Hugging Face name; `file_of` names the file for error messages."""

    def keys(self) -> set[str]: ...

    def file_of(self, key: str) -> Path: ...

    def get(self, key: str) -> np.ndarray: ...


def is_gguf_file(path: str | Path) -> bool:
    """A GGUF model file (not a folder)."""
    return not Path(path).is_dir() and is_gguf(path)


def read_config(path: str | Path) -> ModelConfig:
    """The model config of a folder (config.json) or of a GGUF file (its metadata)."""
    if is_gguf_file(path):
        return ModelConfig.from_dict(GGUFFile(path).hf_config())
    return ModelConfig.from_pretrained(path)


def open_tensors(path: str | Path) -> TensorSource:
    """The tensors of a GGUF file or of a safetensors folder."""
    return GGUFFile(path) if is_gguf_file(path) else SafetensorsFolder(path)
