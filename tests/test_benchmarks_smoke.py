"""Each benchmark script runs once at a tiny size so it cannot rot (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("bench_decode.py", ["--shape", "tiny", "--batches", "2", "--new", "8", "--prompt-len", "8"]),
    ("bench_saferemind.py", ["--shape", "tiny", "--prompts", "2", "--new", "8", "--prompt-len", "8", "--repeats", "1"]),
    ("bench_extract.py", ["--shape", "tiny", "--pairs", "4", "--batch-size", "4"]),
    ("bench_forward.py", ["--shape", "tiny", "--batch", "2", "--seq", "8", "--new", "4"]),
])
def test_benchmark_runs(script, args):
    res = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "|" in res.stdout


@pytest.mark.slow
def test_stream_benchmark_and_its_plot_run(tmp_path):
    out = tmp_path / "stream.json"
    res = subprocess.run([sys.executable, str(BENCH / "bench_stream.py"), "--shape", "tiny", "--requests", "6",
                          "--slots", "4", "--median", "20", "--cap", "40", "--prompt-len", "8", "--fixed-filled",
                          "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "6/6" in res.stdout  # every request's ids equal the stream's, in every arm
    res = subprocess.run([sys.executable, str(BENCH / "plot_stream.py"), str(out), str(tmp_path / "stream.png")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "stream.png").stat().st_size > 0


@pytest.mark.slow
def test_moe_benchmark_runs():
    res = subprocess.run([sys.executable, str(BENCH / "bench_moe.py"), "--shape", "smoke", "--batches", "4", "--new",
                          "4", "--prompt-len", "4", "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| ragged_dot |" in res.stdout and "MoE / dense tok/s" in res.stdout
