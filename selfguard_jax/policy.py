"""The execution policy: how a loaded model runs (layer layout, KV cache layout, row groups), chosen once at load
from the platform, shown by `lm.policy` and overridable with `lm.with_policy(...)`."""

from __future__ import annotations

import dataclasses

from selfguard_jax.kv_cache import LAYOUTS


@dataclasses.dataclass(frozen=True)
class ExecutionPolicy:
    """scan_layers: blocks under `lax.scan` over stacked params (compile time flat in depth) or unrolled over
    per-layer params. cache_layout: one of kv_cache.LAYOUTS ('dense' attends over every slot; 'filled' reads only
    filled blocks, as slices; 'blocked' as buffers, per-layer params only). rows_per_group: a blocked cache's rows
    per row group (0: one group)."""

    scan_layers: bool
    cache_layout: str
    rows_per_group: int = 0

    def __post_init__(self):
        if self.scan_layers not in (True, False):
            raise ValueError(f"scan_layers must be True or False, got {self.scan_layers!r}.")
        if self.cache_layout not in LAYOUTS:
            raise ValueError(f"cache_layout {self.cache_layout!r} is unknown; choose one of {LAYOUTS}.")
        if self.cache_layout == "blocked" and self.scan_layers:
            raise ValueError("a 'blocked' cache needs per-layer params (scan_layers=False); with scanned layers use "
                             "'filled' or 'dense'.")
        if self.rows_per_group < 0:
            raise ValueError(f"rows_per_group must be >= 0, got {self.rows_per_group}.")

    @classmethod
    def for_platform(cls, platform: str, scan_layers: bool | None = None) -> "ExecutionPolicy":
        """The default: scanned layers on TPU, where each block's weight slice fuses into its matmuls; per-layer
        elsewhere (on XLA:CPU a scanned block's weight slice is a copy every step). Filled blocks are read as
        buffers with per-layer params, as slices when scanned; on CPU scanned layers attend densely (slices of
        one buffer are copies there) and a blocked cache reads in groups of 4 rows (BENCHMARKS.md)."""
        scan = platform == "tpu" if scan_layers is None else scan_layers
        if not scan:
            return cls(scan_layers=False, cache_layout="blocked", rows_per_group=4 if platform == "cpu" else 0)
        return cls(scan_layers=True, cache_layout="dense" if platform == "cpu" else "filled")

    def row_groups(self, slots: int) -> int:
        """Row groups of a blocked cache of `slots` rows (1 unless rows_per_group divides the slots)."""
        if self.cache_layout != "blocked" or not self.rows_per_group or slots % self.rows_per_group:
            return 1
        return slots // self.rows_per_group
