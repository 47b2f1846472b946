"""YAML read with its source named in every error: a syntax error says which file (or override), line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from selfguard_jax.errors import ConfigError


def parse_yaml(text: str, source: str) -> Any:
    """`text` parsed as YAML; a syntax error is a ConfigError naming `source` and the place."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{source}{where} is not valid YAML ({problem}); fix its syntax.") from e


def read_yaml(path: str | Path) -> Any:
    """A YAML file's contents; a syntax error names the file, line and column."""
    return parse_yaml(Path(path).read_text(), str(path))
