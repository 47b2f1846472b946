"""Compile the project's programs for a TPU topology on a machine without a TPU (libtpu's compiler on abstract
devices, `jax.experimental.topologies`), with abstract params at the model's real shapes, and read per chip what
the compiler says: memory beside `plan`'s arithmetic, compile time, flops and bytes of one decode step against
the chip's HBM roofline. Needs the `libtpu` package (`pip install "jax[tpu]==<jax version>"`); run with
JAX_PLATFORMS=cpu so everything else stays on the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selfguard_jax import decode, extract
from selfguard_jax.config import ModelConfig
from selfguard_jax.decode_loop import DecodeLoop, run_compiled
from selfguard_jax.heads import tp_config
from selfguard_jax.kv_cache import LayerCache, StackedCache, cache_length
from selfguard_jax.model import SteerInput, decode_step, prefill
from selfguard_jax.plan import plan
from selfguard_jax.policy import ExecutionPolicy
from selfguard_jax.reminder import Reminder, Thinking
from selfguard_jax.sharding import param_shardings, spec_for
from selfguard_jax.spec import GenerationSpec
from selfguard_jax.steering import Steering
from selfguard_jax.weights import KV_AXES, is_weight, kv_cache_shape, weight_table

GIB = 2 ** 30
DOCS = "https://cloud.google.com/tpu/docs/"


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's HBM capacity (bytes) and bandwidth (bytes/s) and bf16 peak (flop/s), as the system
    architecture page of Google Cloud's TPU docs (`source`) states them."""

    name: str
    hbm_bytes: float
    hbm_bandwidth: float
    bf16_flops: float
    source: str


CHIPS = {
    "v5e": Chip("TPU v5e", 16e9, 819e9, 197e12, DOCS + "v5e"),          # "16 GB, 819 GBps", 197 TFLOPs
    "v6e": Chip("TPU v6e", 32e9, 1638e9, 918e12, DOCS + "v6e"),         # "32 GB", "1638 GBps", 918 TFLOPs
    "v4": Chip("TPU v4", 32 * GIB, 1200e9, 275e12, DOCS + "v4"),        # "32 GiB, 1200 GBps", 275 TFLOPs
    "v5p": Chip("TPU v5p", 95e9, 2765e9, 459e12, DOCS + "v5p"),         # "95 GB, 2765 GBps", 459 TFLOPs
}


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the programs are compiled for: rows decoded at once, prompt bucket, new tokens per request."""

    batch: int = 8
    prompt_len: int = 512
    new_tokens: int = 512
    judge_response_len: int = 1024


@dataclasses.dataclass
class Compiled:
    """One program's compiler figures, per chip (bytes), or why it did not compile. `temp` is the temporaries'
    allocation as buffer assignment lays it out (holes included); `peak` the live bytes at the busiest point,
    arguments included, which is what the compiler checks against HBM."""

    name: str
    seconds: float = 0.0
    argument: float = 0.0
    output: float = 0.0
    alias: float = 0.0
    temp: float = 0.0
    peak: float = 0.0
    flops: float = 0.0
    bytes_accessed: float = 0.0
    error: str | None = None
    hlo: str = ""
    hbm_limit: float = float("inf")

    @property
    def total(self) -> float:
        """Live bytes per chip: arguments + outputs (less the ones aliased to arguments) + temporaries."""
        return self.argument + self.output - self.alias + self.temp

    @property
    def fits(self) -> bool:
        """Compiled, and its per-chip total (the laid-out allocations, not only the live `peak` that the compiler
        checks) within the chip's usable HBM (`hbm_limit`) (BENCHMARKS.md, mixture-of-experts section)."""
        return self.error is None and self.total <= self.hbm_limit


def topology_mesh(topology: str, data: int | None = None, model: int | None = None) -> tuple[Mesh, Chip]:
    """A (data, model) mesh over the abstract devices of `topology` ("v5e:2x4"); model defaults to all chips."""
    kind = topology.split(":")[0]
    if kind not in CHIPS:
        raise ValueError(f"topology {topology!r}: chip {kind!r} unknown; use one of {sorted(CHIPS)} "
                         "(e.g. v5e:2x4).")
    try:
        devices = topologies.get_topology_desc(topology, "tpu").devices
    except Exception as e:  # libtpu missing or an unknown topology string
        raise RuntimeError(f"cannot build TPU topology {topology!r} ({type(e).__name__}: {e}); install libtpu with "
                           "pip install \"jax[tpu]==<your jax version>\" and use a shape such as v5e:2x4.") from e
    n = len(devices)
    model = model or (n // (data or 1))
    data = data or n // model
    if data * model != n:
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} chips; {topology} has {n}.")
    return Mesh(np.asarray(devices).reshape(data, model), ("data", "model")), CHIPS[kind]


def abstract_params(cfg: ModelConfig, mesh: Mesh, dtype: Any = jnp.bfloat16, stacked: bool = True) -> dict:
    """ShapeDtypeStructs of every param on its sharding (the layout `sgj.load` gives on this mesh)."""
    shardings = param_shardings(cfg, mesh, stacked)
    table = weight_table(tp_config(cfg, mesh.shape["model"]))  # heads widened as `heads.py` lays them out
    if not stacked:
        table = table | {"layers": tuple({k: dataclasses.replace(w, shape=w.layer_shape, axes=w.axes[1:])
                                          for k, w in table["layers"].items() if i in (w.layer_ids or [i])}
                                         for i in range(cfg.num_layers))}
    return jax.tree.map(lambda w, s: jax.ShapeDtypeStruct(w.shape, dtype, sharding=s), table, shardings,
                        is_leaf=is_weight)


def _abstract(tree: Any, sharding: Callable[[Any], NamedSharding]) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype, sharding=sharding(a)), tree)


def _rows(mesh: Mesh) -> Callable[[Any], NamedSharding]:
    """Arrays whose leading axis is rows: over `data` when it divides, replicated otherwise."""
    def one(a) -> NamedSharding:
        shape = np.shape(a)
        if shape and shape[0] % mesh.shape["data"] == 0:
            return NamedSharding(mesh, P("data", *([None] * (len(shape) - 1))))
        return NamedSharding(mesh, P())
    return one


def _cache(cfg: ModelConfig, mesh: Mesh, batch: int, length: int, dtype: Any, stacked: bool,
           filled: bool) -> StackedCache | LayerCache:
    shape = kv_cache_shape(tp_config(cfg, mesh.shape["model"]), batch, length)
    spec = spec_for(shape, KV_AXES, mesh, "kv cache")
    if stacked:
        one = jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
        return StackedCache(k=one, v=one, filled=filled)
    one = jax.ShapeDtypeStruct(shape[1:], dtype, sharding=NamedSharding(mesh, P(*spec[1:])))
    return LayerCache(k=(one,) * cfg.num_layers, v=(one,) * cfg.num_layers, filled=filled)


@functools.lru_cache(maxsize=None)
def usable_hbm(mesh: Mesh) -> float:
    """Bytes of HBM per chip that the TPU compiler places a program in, as it states when it refuses one needing
    more (a probe with terabytes of temporaries per chip); the chip's documented HBM if it does not say."""
    kind = str(mesh.devices.flat[0].device_kind).lower()
    chip = next((c for k, c in CHIPS.items() if k in kind.replace(" ", "").replace("lite", "e")), None)
    a = jax.ShapeDtypeStruct((8, 1024), jnp.float32, sharding=NamedSharding(mesh, P()))

    def probe(a_XY):
        big = jnp.tile(a_XY, (2 ** 26, 1))
        return jnp.sum(jnp.sin(big) * jnp.cos(big[::-1]), axis=0)

    try:
        with jax.set_mesh(mesh):
            jax.jit(probe).lower(a).compile()
    except Exception as e:  # "... exceeds available HBM (15.75G)."
        m = re.search(r"available HBM \(([\d.]+)G\)", str(e))
        if m:
            return float(m.group(1)) * GIB
    return chip.hbm_bytes if chip else float("inf")


def compile_one(name: str, fn: Callable, args: tuple, mesh: Mesh, keep_hlo: bool = False,
                donate: tuple[int, ...] = ()) -> Compiled:
    """Lower and compile `fn(*args)` on `mesh` (abstract args) and read the compiler's figures; a program the
    compiler refuses comes back with its message in `error`, and `fits` also checks the total against the usable
    HBM."""
    limit = usable_hbm(mesh)
    start = time.perf_counter()
    try:
        with jax.set_mesh(mesh):
            exe = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    except Exception as e:  # the TPU compiler reports an over-full HBM as an XlaRuntimeError
        return Compiled(name, time.perf_counter() - start, error=f"{type(e).__name__}: {str(e).splitlines()[0]}",
                        hbm_limit=limit)
    seconds = time.perf_counter() - start
    mem = exe.memory_analysis()
    cost = exe.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return Compiled(name, seconds, mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                    mem.temp_size_in_bytes, mem.peak_memory_in_bytes, float(cost.get("flops", 0.0)),
                    float(cost.get("bytes accessed", 0.0)), hlo=exe.as_text() if keep_hlo else "", hbm_limit=limit)


def _defended(cfg: ModelConfig) -> tuple[Steering, Reminder]:
    """Self-Guard steering on the last three blocks and a SafeRemind reminder (the SafeRemind protocol's caps),
    with placeholder ids: their values do not change the program."""
    L, V = cfg.num_layers, cfg.vocab_size
    layers = [max(0, L - 3 + i) for i in range(3)]
    steering = Steering.from_vectors(np.zeros((L, cfg.hidden_size), np.float32), layers, 1.0, rule="thinking")
    reminder = Reminder(token_ids=list(range(1, 25)), boundary_ids=list(range(V // 2)),
                        thinking=Thinking(end_ids=[2], max_think_tokens=4096, max_answer_tokens=1024), threshold=0.5)
    return steering, reminder


def _loop_args(cfg: ModelConfig, mesh: Mesh, shape: Shape, requests: int, defended: bool,
               stacked: bool) -> tuple[DecodeLoop, Any, Any, Any]:
    """The decode loop TPU's execution policy runs for `requests` prompts in `shape.batch` slots, and its abstract
    dynamic inputs."""
    steering, reminder = _defended(cfg) if defended else (None, None)
    spec = GenerationSpec(max_new_tokens=shape.new_tokens, steering=steering, reminder=reminder)
    program = decode.prepare(cfg, ExecutionPolicy.for_platform("tpu", stacked), mesh.shape["data"],
                             [[1] * shape.prompt_len] * requests, spec, slots=shape.batch)
    replicated = lambda a: NamedSharding(mesh, P())  # noqa: E731
    return (program.loop, _abstract(program.dp, replicated), _abstract(program.rq, replicated),
            _abstract(program.rng, replicated))


def programs(cfg: ModelConfig, mesh: Mesh, shape: Shape, dtype: Any = jnp.bfloat16, stacked: bool = True,
             judge: ModelConfig | None = None, only: tuple[str, ...] | None = None,
             keep_hlo: bool = False) -> list[Compiled]:
    """Compile every program at `shape` on `mesh`: prefill, the decode loop (steering and reminders on), the
    stream (twice as many requests as slots: refills), extraction's hidden-state pass, one decode step over a
    full cache (the per-step figures; per-layer params, whatever `stacked` says, so that the cost analysis
    counts every layer), and the judge's decode loop when `judge` is given."""
    params = abstract_params(cfg, mesh, dtype, stacked)
    B, T, N = shape.batch, shape.prompt_len, shape.new_tokens
    S = cache_length(T + N)
    rows = _rows(mesh)
    ids = _abstract(np.zeros((B, T), np.int32), rows)
    out = []

    def want(name: str) -> bool:
        return only is None or name in only

    if want("prefill"):
        steer = SteerInput(jax.ShapeDtypeStruct((cfg.num_layers, cfg.hidden_size), jnp.float32,
                                                sharding=NamedSharding(mesh, P())),
                           _abstract(np.zeros((B, T), np.float32), rows))
        fn = lambda p, i, m, s: prefill(p, cfg, i, m, steer=s, cache_len=S, scan_layers=stacked)  # noqa: E731
        out.append(compile_one("prefill", fn, (params, ids, ids, steer), mesh, keep_hlo))
    for name, requests in (("decode loop", B), ("stream", 2 * B)):
        if want(name):
            loop, dp, rq, rng = _loop_args(cfg, mesh, shape, requests, True, stacked)
            fn = lambda p, d, r, k, loop=loop: run_compiled(loop, p, d, r, k)  # noqa: E731
            out.append(compile_one(name, fn, (params, dp, rq, rng), mesh, keep_hlo))
    if want("extraction"):
        fn = lambda p, i, m: extract._last_token_states(p, cfg, i, m, stacked)  # noqa: E731
        out.append(compile_one("extraction", fn, (params, ids, ids), mesh, keep_hlo))
    if want("decode step"):  # per-layer params: XLA's cost analysis counts a scanned body once, not L times
        out.append(compile_step(cfg, mesh, B, S, dtype, stacked=False, keep_hlo=keep_hlo))
    if judge is not None and want("judge"):
        jshape = Shape(B, T + shape.new_tokens + shape.judge_response_len, 16)
        jparams = abstract_params(judge, mesh, dtype, stacked)
        loop, dp, rq, rng = _loop_args(judge, mesh, jshape, B, False, stacked)
        fn = lambda p, d, r, k: run_compiled(loop, p, d, r, k)  # noqa: E731
        out.append(compile_one("judge", fn, (jparams, dp, rq, rng), mesh, keep_hlo))
    return out


def compile_step(cfg: ModelConfig, mesh: Mesh, batch: int, cache_len: int, dtype: Any = jnp.bfloat16,
                 stacked: bool = True, blockwise: bool = False, keep_hlo: bool = False,
                 params: dict | None = None, name: str = "decode step") -> Compiled:
    """One decode step (steering on) over a `cache_len`-slot cache, donated as the loop does: dense attention
    over every slot, or (`blockwise`) the attention over the blocks each row has filled, a run-time length
    (XLA's cost analysis then does not cost the conditional blocks as read)."""
    params = abstract_params(cfg, mesh, dtype, stacked) if params is None else params
    rows = _rows(mesh)
    cache = _cache(cfg, mesh, batch, cache_len, dtype, stacked, blockwise)
    tok = _abstract(np.zeros((batch,), np.int32), rows)
    valid = _abstract(np.zeros((batch, cache_len), bool), rows)
    steer = SteerInput(jax.ShapeDtypeStruct((cfg.num_layers, cfg.hidden_size), jnp.float32,
                                            sharding=NamedSharding(mesh, P())),
                       _abstract(np.zeros((batch, 1), np.float32), rows))
    filled = _abstract(np.zeros((batch,), np.int32), rows) if blockwise else None

    def fn(p, c, t, pos, v, w, s, f):
        return decode_step(p, cfg, t, pos, v, c, w, steer=s, attend_len_B=f, scan_layers=stacked)

    index = _abstract(np.zeros((batch,), np.int32), rows)
    return compile_one(name, fn, (params, cache, tok, tok, valid, index, steer, filled), mesh, keep_hlo, donate=(1,))


def floor_bytes(cfg: ModelConfig, data: int, model: int, batch: int, filled: int, dtype_bytes: int = 2) -> float:
    """The least a decode step must read per chip: its weight shard and its cache shard up to `filled` slots."""
    p = plan(cfg, data, model, batch, filled, dtype_bytes)
    return p.params_bytes + p.cache_bytes


def step_seconds(c: Compiled, chip: Chip, hbm_bytes: float | None = None) -> float:
    """Roofline time of one step per chip: the larger of HBM bytes over bandwidth and flops over bf16 peak.
    `hbm_bytes` defaults to XLA's "bytes accessed", which on TPU also counts the on-chip (VMEM) side of the
    prefetches memory-space assignment inserts: a lone [8, 3584] x [3584, 4736] matmul reports 162 MiB for its
    32.4 MiB of operands. It is an upper bound; the floor (`floor_bytes`) is the lower one."""
    return max((c.bytes_accessed if hbm_bytes is None else hbm_bytes) / chip.hbm_bandwidth, c.flops / chip.bf16_flops)


def report(cfg: ModelConfig, mesh: Mesh, chip: Chip, shape: Shape, results: list[Compiled],
           dtype_bytes: int = 2) -> str:
    """A per-chip table of the compiled programs against `plan`, each program's total checked against the HBM
    the compiler can use (it refuses some programs over it, not all), and the decode step's roofline estimate
    between the floor and XLA's bytes."""
    data, model = mesh.shape["data"], mesh.shape["model"]
    S = cache_length(shape.prompt_len + shape.new_tokens)
    p = plan(cfg, data, model, shape.batch, S, dtype_bytes, shape.prompt_len)
    lines = [f"{chip.name} x{data * model} (mesh data={data} model={model}), batch {shape.batch}, prompt "
             f"{shape.prompt_len} + {shape.new_tokens} new (cache {S} slots); HBM {chip.hbm_bytes / 1e9:g} GB, "
             f"{chip.hbm_bandwidth / 1e9:g} GB/s, {chip.bf16_flops / 1e12:g} bf16 TFLOP/s per chip ({chip.source})",
             f"  plan's arithmetic: params {p.params_bytes / GIB:.2f} + KV cache {p.cache_bytes / GIB:.2f} + "
             f"peak activation {p.activation_bytes / GIB:.2f} = {p.total / GIB:.2f} GiB per chip",
             f"  {'program':12s} {'compile s':>9s} {'args GiB':>9s} {'temp GiB':>9s} {'total GiB':>9s} "
             f"{'peak GiB':>9s}  fits"]
    for c in results:
        if c.error:
            lines.append(f"  {c.name:12s} {c.seconds:9.1f}  does NOT fit / compile: {c.error[:200]}")
        else:
            verdict = "yes" if c.fits else (f"NO: total over the {c.hbm_limit / GIB:.2f} GiB the compiler can use per "
                                             "chip (it compiled it: it checks the live peak)")
            lines.append(f"  {c.name:12s} {c.seconds:9.1f} {c.argument / GIB:9.2f} {c.temp / GIB:9.2f} "
                         f"{c.total / GIB:9.2f} {c.peak / GIB:9.2f}  {verdict}")
    for c in results:
        if c.name == "decode step" and not c.error:
            floor = floor_bytes(cfg, data, model, shape.batch, S, dtype_bytes)
            lo, hi = step_seconds(c, chip, floor), step_seconds(c, chip)
            lines.append(f"  decode step over the full cache: {c.flops / 1e9:.1f} GFLOP; floor (weight shard + cache "
                         f"shard) {floor / GIB:.2f} GiB, XLA bytes accessed {c.bytes_accessed / GIB:.2f} GiB "
                         f"({c.bytes_accessed / floor:.2f}x, counts VMEM traffic too)")
            lines.append(f"  roofline {lo * 1e3:.2f} ms/step at the floor ({shape.batch / lo:,.0f} tokens/s on the "
                         f"mesh), {hi * 1e3:.2f} ms/step at XLA's bytes ({shape.batch / hi:,.0f} tokens/s)")
    return "\n".join(lines)


def describe(cfg: ModelConfig, topology: str, shape: Shape, data: int | None = None, model: int | None = None,
             dtype: Any = jnp.bfloat16, stacked: bool = True, judge: ModelConfig | None = None) -> str:
    """Compile everything for `topology` and report it (the `plan --topology` command)."""
    mesh, chip = topology_mesh(topology, data, model)
    if shape.batch % mesh.shape["data"]:
        raise ValueError(f"batch {shape.batch} does not divide over data={mesh.shape['data']}; pick a multiple.")
    results = programs(cfg, mesh, shape, dtype, stacked, judge)
    return report(cfg, mesh, chip, shape, results, jnp.dtype(dtype).itemsize)


__all__ = ["CHIPS", "Chip", "Compiled", "Shape", "abstract_params", "compile_one", "compile_step", "describe",
           "floor_bytes", "programs", "report", "step_seconds", "topology_mesh"]
