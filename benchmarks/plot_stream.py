"""Plot what `bench_stream.py --json` wrote: decode-step time against the filled cache length for the
filled-block and whole-cache attentions, and useful tokens/s per decode arm.

    python benchmarks/plot_stream.py stream.json stream.png
"""

from __future__ import annotations

import json
import sys

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot(result: dict, png: str) -> None:
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for kind, style in (("filled blocks", "-o"), ("whole cache", "--s")):
        pts = [(r["filled slots"], r["step ms"]) for r in result["step_vs_filled"] if r["attention"] == kind]
        left.plot(*zip(*pts), style, label=kind)
    cache = result["step_vs_filled"][0]["cache slots"]
    left.set(xlabel="filled cache slots (longest row)", ylabel="decode step, ms",
             title=f"one step, {result['args']['slots']} rows, {cache}-slot cache")
    left.set_ylim(bottom=0)
    left.legend()
    arms = result["arms"]
    right.barh([a["decode"] for a in arms], [a["useful tok/s"] for a in arms])
    right.invert_yaxis()
    a = result["args"]
    right.set(xlabel="useful tokens / s", title=f"{a['requests']} requests, median {a['median']}, cap {a['cap']}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    plot(json.loads(open(sys.argv[1]).read()), sys.argv[2])
