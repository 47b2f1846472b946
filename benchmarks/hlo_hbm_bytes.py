"""An approximate HBM-traffic reading of an optimised TPU HLO module (`compiled.as_text()`), because XLA's
`bytes accessed` on TPU also counts VMEM traffic (BENCHMARKS.md, "TPU compiler estimate"). Per scheduled
instruction (fused computations are read through their call sites): operands and results that live in HBM (no
S(1)/S(2) memory space); a fusion parameter read only through slices or a gather counts the slices' size; an
in-place dynamic-update-slice counts its update twice; an async copy or slice into VMEM counts its destination
once. Loops and conditionals are not multiplied or weighed (use it on a per-layer step). Partial prefetches of
an operand that a fusion also reads from HBM are counted twice, so it errs high.

    python benchmarks/hlo_hbm_bytes.py step.hlo [TOP]
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

BYTES = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "s64": 8, "u64": 8, "s16": 2, "u16": 2, "s8": 1,
         "u8": 1, "pred": 1}
ARRAY = re.compile(r"(\w+)\[([\d,]*)\](\{[^}]*\})?")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?(%?[\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "copy-done", "slice-done", "after-all",
        "partition-id", "replica-id", "all-reduce-done", "all-gather-done", "collective-permute-done",
        "opt-barrier", "while", "conditional", "call", "iota"}


def arrays(t: str) -> list[tuple[int, bool]]:
    """(bytes, on chip) of every array in a shape string."""
    out = []
    for ty, dims, layout in ARRAY.findall(t):
        if ty in BYTES:
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            out.append((n * BYTES[ty], "S(1)" in layout or "S(2)" in layout))
    return out


def hbm(t: str) -> int:
    return sum(b for b, on_chip in arrays(t) if not on_chip)


def operands(rest: str) -> list[str]:
    depth, cur, out = 0, "", []
    for ch in rest:
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return [o.split(" ")[-1] for o in out]


def parse(text: str) -> tuple[dict, list]:
    comps, order, cur = {}, [], None
    for line in text.split("\n"):
        if line and not line.startswith(" ") and "{" in line and not line.startswith("HloModule"):
            cur = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
            comps[cur], order = [], order + [cur]
            continue
        m = INSTRUCTION.match(line)
        if m and cur:
            comps[cur].append((*m.groups(), line))
    return comps, order


def fusion_reads(insts: list) -> tuple[dict[int, int], int]:
    """Per parameter index, the bytes a fused computation reads when less than the whole; and the bytes of the
    updates when it updates a buffer in place (0 otherwise)."""
    params = {name: int(re.search(r"parameter\((\d+)\)", line).group(1))
              for name, ty, op, rest, line in insts if op == "parameter"}
    types = {name: ty for name, ty, *_ in insts}
    users = defaultdict(list)
    for name, ty, op, rest, line in insts:
        for o in operands(rest):
            users[o].append((op, ty))
    read = {}
    for p, i in params.items():
        ops = {op for op, _ in users.get(p, [])}
        if ops and ops <= {"dynamic-slice", "slice", "gather"}:
            read[i] = sum(hbm(ty) for _, ty in users[p])
        elif ops == {"dynamic-update-slice"}:
            read[i] = 0
    update = sum(hbm(types.get(operands(rest)[1], "")) for name, ty, op, rest, line in insts
                 if op == "dynamic-update-slice" and len(operands(rest)) > 1)
    return read, update


def hbm_bytes(text: str, top: int = 0) -> tuple[float, dict[str, float]]:
    comps, order = parse(text)
    fused = {m.group(1) for insts in comps.values() for *_, line in insts
             for m in re.finditer(r"(?:calls|to_apply)=(%?[\w.\-]+)", line)}
    summary = {c: fusion_reads(insts) for c, insts in comps.items() if c in fused}
    types = {name: ty for insts in comps.values() for name, ty, *_ in insts}
    total, by_op, rows = 0.0, defaultdict(float), []
    for c in order:
        if c in fused:
            continue
        for name, ty, op, rest, line in comps[c]:
            if op in FREE:
                continue
            ops = operands(rest)
            if op in ("copy-start", "slice-start"):
                sizes = arrays(ty)
                b = sum(x for x, on_chip in sizes if on_chip) or (sizes[0][0] if sizes else 0)
            elif op == "dynamic-update-slice":
                b = 2 * hbm(types.get(ops[1], ""))
            else:
                called = re.search(r"calls=(%?[\w.\-]+)", line)
                read, update = summary.get(called.group(1), ({}, 0)) if called else ({}, 0)
                b = sum(read.get(i, hbm(types[o])) for i, o in enumerate(ops) if o in types)
                b += update if update else hbm(ty)
            total += b
            by_op[op] += b
            rows.append((b, op, name, ty[:60]))
    for b, op, name, ty in sorted(rows, reverse=True)[:top]:
        print(f"  {b / 2**20:9.1f} MiB {op:14s} {name} {ty}")
    return total, dict(by_op)


if __name__ == "__main__":
    total, by_op = hbm_bytes(open(sys.argv[1]).read(), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(f"{total / 2**30:.2f} GiB from HBM", {k: round(v / 2**30, 2) for k, v in sorted(by_op.items(), key=lambda x: -x[1])[:6]})
