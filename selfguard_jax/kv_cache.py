"""The KV cache as a type: one class per layout, each with the same small interface.

- `StackedCache`: [L, B, K, S, H] arrays, for blocks under `lax.scan` over stacked params.
- `LayerCache`: tuples of L [B, K, S, H] arrays, for unrolled blocks over per-layer params.
- `BlockedCache`: per layer, row groups of [B / groups, K, block, H] buffers, so a decode step reads every filled
  block in place and each row group reads only as far as its own rows have filled.

A cache hands the model one layer at a time (`layer(i)`, an object with `attend`) and takes it back
(`with_layer`); `write_prompt` puts one request's prompt into a row; `layout` turns a prefilled cache into the
layout the execution policy chose. The slot axis sits next to the head dim, so attention reads each head's keys
contiguously.
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp
from flax import struct

from selfguard_jax.attention import ATTENTION_BLOCK, attention, attention_blocks

LAYOUTS = ("dense", "filled", "blocked")  # fused attention over all slots; filled blocks as slices; as buffers


def cache_length(n: int) -> int:
    """Cache slots for n positions: a whole number of attention blocks once the cache is long enough for the
    blockwise attention, so a step reads only filled blocks."""
    return n if n < 2 * ATTENTION_BLOCK else -(-n // ATTENTION_BLOCK) * ATTENTION_BLOCK


def write_slots(cache_BKSH: jax.Array, new_BKTH: jax.Array, index: jax.Array) -> jax.Array:
    """The cache with `new` written at slot `index` (one for every row) or `index[b]` (one per row), in place."""
    new_BKTH = new_BKTH.astype(cache_BKSH.dtype)
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice(cache_BKSH, new_BKTH, (0, 0, index, 0))
    return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (0, i, 0)))(cache_BKSH, new_BKTH, index)


def write_blocks(blocks: tuple, new_BKTH: jax.Array, index: jax.Array) -> tuple:
    """Blocks of one slab with one new slot per row written at slot `index` (scalar or [B]) of the whole, in
    place: each block takes the rows whose slot falls in it."""
    B, block = new_BKTH.shape[0], blocks[0].shape[2]
    index_B = jnp.broadcast_to(index, (B,))
    rows = jnp.arange(B)
    out = []
    for j, a in enumerate(blocks):
        local = index_B - j * block
        local = jnp.where((local >= 0) & (local < block), local, block)  # out of range: dropped
        out.append(a.at[rows, :, local].set(new_BKTH[:, :, 0].astype(a.dtype), mode="drop"))
    return tuple(out)


@struct.dataclass
class DenseLayer:
    """One layer's [B, K, S, H] keys and values; `filled` reads only the blocks rows have filled (as slices)."""

    k: jax.Array
    v: jax.Array
    filled: bool = struct.field(pytree_node=False, default=False)

    def attend(self, q_BTNH: jax.Array, k_new_BKTH: jax.Array, v_new_BKTH: jax.Array, mask_BTS: jax.Array,
               write_index: jax.Array, attend_len_B: jax.Array, sinks_N: jax.Array | None = None,
               attend_from_B: jax.Array | None = None) -> tuple[jax.Array, "DenseLayer"]:
        """Write the new keys/values at `write_index`, then attend over the slots `mask_BTS` marks (filled: none
        before `attend_from_B`, a sliding window's first slot, which the mask already excludes)."""
        keys = write_slots(self.k, k_new_BKTH, write_index)
        values = write_slots(self.v, v_new_BKTH, write_index)
        if self.filled and keys.shape[2] >= 2 * ATTENTION_BLOCK:
            start = None if attend_from_B is None else jnp.min(attend_from_B)
            out = attention_blocks(q_BTNH, keys, values, mask_BTS, jnp.max(attend_len_B), sinks_N=sinks_N,
                                   attend_from=start)
        else:
            out = attention(q_BTNH, keys, values, mask_BTS, sinks_N)
        return out, self.replace(k=keys, v=values)


@struct.dataclass
class BlockedLayer:
    """One layer of a `BlockedCache`: row groups of tuples of [B / groups, K, block, H] buffers."""

    k: tuple
    v: tuple

    def attend(self, q_BTNH: jax.Array, k_new_BKTH: jax.Array, v_new_BKTH: jax.Array, mask_BTS: jax.Array,
               write_index: jax.Array, attend_len_B: jax.Array, sinks_N: jax.Array | None = None,
               attend_from_B: jax.Array | None = None) -> tuple[jax.Array, "BlockedLayer"]:
        """Write, then attend row group by row group: each group reads the blocks from its own earliest
        `attend_from_B` (a sliding window's first slot; default 0) up to its own longest `attend_len`."""
        B, n = q_BTNH.shape[0], self.k[0][0].shape[0]
        index_B = jnp.broadcast_to(write_index, (B,))
        fill_B = jnp.broadcast_to(attend_len_B, (B,))
        outs, keys, values = [], [], []
        for g, (k_blocks, v_blocks) in enumerate(zip(self.k, self.v)):
            r = slice(g * n, (g + 1) * n)
            keys.append(write_blocks(k_blocks, k_new_BKTH[r], index_B[r]))
            values.append(write_blocks(v_blocks, v_new_BKTH[r], index_B[r]))
            start = None if attend_from_B is None else jnp.min(jnp.broadcast_to(attend_from_B, (B,))[r])
            outs.append(attention_blocks(q_BTNH[r], keys[-1], values[-1], mask_BTS[r], jnp.max(fill_B[r]),
                                         sinks_N=sinks_N, attend_from=start))
        return jnp.concatenate(outs), BlockedLayer(k=tuple(keys), v=tuple(values))


def _put_row(cache: jax.Array, new: jax.Array, row: jax.Array) -> jax.Array:
    """`new` ([..., 1, K, T, H]) written into row `row`, slots [0, T)."""
    return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), (0,) * (cache.ndim - 4) + (row, 0, 0, 0))


@struct.dataclass
class StackedCache:
    """[L, B, K, S, H] keys and values: the layout of blocks scanned over stacked params."""

    k: jax.Array
    v: jax.Array
    filled: bool = struct.field(pytree_node=False, default=False)

    def layer(self, i) -> DenseLayer:
        return DenseLayer(self.k[i], self.v[i], self.filled)

    def with_layer(self, i, layer: DenseLayer) -> "StackedCache":
        return self.replace(k=jax.lax.dynamic_update_index_in_dim(self.k, layer.k, i, 0),
                            v=jax.lax.dynamic_update_index_in_dim(self.v, layer.v, i, 0))

    def write_prompt(self, kv: "StackedCache", row: jax.Array) -> "StackedCache":
        """Row `row` holding one request's prompt (`kv`, as `prefill` returns it for one row)."""
        return self.replace(k=_put_row(self.k, kv.k, row), v=_put_row(self.v, kv.v, row))

    def layout(self, name: str, groups: int = 1) -> "StackedCache":
        """A stacked cache cannot be cut into buffers: 'blocked' reads filled blocks as slices."""
        return self.replace(filled=_check_layout(name) != "dense")


@struct.dataclass
class LayerCache:
    """Tuples of L [B, K, S, H] keys and values: the layout of unrolled blocks over per-layer params."""

    k: tuple
    v: tuple
    filled: bool = struct.field(pytree_node=False, default=False)

    def layer(self, i: int) -> DenseLayer:
        return DenseLayer(self.k[i], self.v[i], self.filled)

    def with_layer(self, i: int, layer: DenseLayer) -> "LayerCache":
        return self.replace(k=self.k[:i] + (layer.k,) + self.k[i + 1:], v=self.v[:i] + (layer.v,) + self.v[i + 1:])

    def write_prompt(self, kv: "LayerCache", row: jax.Array) -> "LayerCache":
        return self.replace(k=tuple(map(_put_row, self.k, kv.k, [row] * len(self.k))),
                            v=tuple(map(_put_row, self.v, kv.v, [row] * len(self.v))))

    def layout(self, name: str, groups: int = 1) -> "LayerCache | BlockedCache":
        """'blocked' cuts the cache into buffers where it spans two blocks or more (else reads it as slices)."""
        if _check_layout(name) == "blocked" and self.k[0].shape[2] >= 2 * ATTENTION_BLOCK:
            return BlockedCache.cut(self, groups=groups)
        return self.replace(filled=name != "dense")


@struct.dataclass
class BlockedCache:
    """Per layer, row groups of [B / groups, K, block, H] buffers (read in place; a slice of one buffer is a copy
    on XLA:CPU)."""

    k: tuple
    v: tuple

    @classmethod
    def cut(cls, cache: LayerCache, block: int = ATTENTION_BLOCK, groups: int = 1) -> "BlockedCache":
        B, S = cache.k[0].shape[0], cache.k[0].shape[2]
        if S % block or B % groups:
            raise ValueError(f"a cache of {B} rows and {S} slots cannot be cut into {groups} row groups of "
                             f"{block}-slot blocks; size it with kv_cache.cache_length.")
        n = B // groups

        def cut(a: jax.Array) -> tuple:
            return tuple(tuple(a[g:g + n, :, j:j + block] for j in range(0, S, block)) for g in range(0, B, n))

        return cls(k=tuple(map(cut, cache.k)), v=tuple(map(cut, cache.v)))

    def layer(self, i: int) -> BlockedLayer:
        return BlockedLayer(self.k[i], self.v[i])

    def with_layer(self, i: int, layer: BlockedLayer) -> "BlockedCache":
        return BlockedCache(k=self.k[:i] + (layer.k,) + self.k[i + 1:], v=self.v[:i] + (layer.v,) + self.v[i + 1:])

    def write_prompt(self, kv: LayerCache, row: jax.Array) -> "BlockedCache":
        """The prompt ([1, K, T, H] per layer) spread over the first blocks of `row`'s group."""
        def spread(groups: tuple, n_1KTH: jax.Array) -> tuple:
            rows, block, T = groups[0][0].shape[0], groups[0][0].shape[2], n_1KTH.shape[2]
            out = []
            for g, blocks in enumerate(groups):
                local = row - g * rows
                local = jnp.where((local >= 0) & (local < rows), local, rows)  # another group's row: dropped
                out.append(tuple(a.at[local, :, :min(block, T - j * block)].set(
                    n_1KTH[0, :, j * block:(j + 1) * block].astype(a.dtype), mode="drop") if j * block < T else a
                    for j, a in enumerate(blocks)))
            return tuple(out)

        return BlockedCache(k=tuple(map(spread, self.k, kv.k)), v=tuple(map(spread, self.v, kv.v)))

    def layout(self, name: str, groups: int = 1) -> "BlockedCache":
        return self


KVCache = Union[StackedCache, LayerCache, BlockedCache]
LayerKV = Union[DenseLayer, BlockedLayer]


def _check_layout(name: str) -> str:
    if name not in LAYOUTS:
        raise ValueError(f"cache layout {name!r} is unknown; choose one of {LAYOUTS}.")
    return name
