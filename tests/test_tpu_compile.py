"""The `tpu` tier: libtpu's compiler (no TPU: abstract v5e:2x2 devices) compiles prefill, the decode loop and
the stream with steering and reminders on, and extraction, for a tiny config in both layer layouts, and its
memory figures match `plan`'s arithmetic. Skipped where libtpu is not installed (.ci/run installs it)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from selfguard_jax import cli, tpu_compile
from selfguard_jax.config import ModelConfig
from selfguard_jax.plan import plan

pytestmark = [pytest.mark.tpu, pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                                  reason="libtpu is not installed: pip install "
                                                         f"\"jax[tpu]=={jax.__version__}\"")]

HF = dict(architectures=["Qwen3ForCausalLM"], hidden_size=128, num_hidden_layers=3, num_attention_heads=6,
          num_key_value_heads=2, head_dim=32, intermediate_size=256, vocab_size=1024, max_position_embeddings=4096)
CFG = ModelConfig.from_dict(HF)
# a 1,024-slot cache: the decode loop takes the blockwise attention over filled blocks, as on TPU
SHAPE = tpu_compile.Shape(batch=4, prompt_len=512, new_tokens=512)


@pytest.mark.parametrize("stacked", [True, False])
def test_programs_compile_for_tpu_and_match_the_plan(stacked):
    mesh, chip = tpu_compile.topology_mesh("v5e:2x2", data=1, model=4)  # 6 / 2 heads: widened to 8 / 4
    results = {c.name: c for c in tpu_compile.programs(CFG, mesh, SHAPE, stacked=stacked)}
    assert set(results) == {"prefill", "decode loop", "stream", "extraction", "decode step"}
    for c in results.values():
        assert c.error is None, (c.name, c.error)
        assert 0 < c.total < chip.hbm_bytes
    step = results["decode step"]
    p = plan(CFG, 1, 4, SHAPE.batch, 1024)
    # the step's arguments are the params and the KV cache, both sharded as plan counts them, plus a few
    # [B] / [B, S] inputs
    assert p.params_bytes + p.cache_bytes <= step.argument <= (p.params_bytes + p.cache_bytes) * 1.01 + 2 ** 16
    assert step.alias >= p.cache_bytes  # the cache is donated: updated in place
    assert step.flops > 0 and step.bytes_accessed > 0
    text = tpu_compile.report(CFG, mesh, chip, SHAPE, list(results.values()))
    assert "roofline" in text and "does NOT" not in text


def test_plan_command_compiles_for_a_topology(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(HF))
    code = cli.main(["plan", "--model", str(tmp_path), "--topology", "v5e:2x2", "--mesh", "data=2,model=2",
                     "--batch", "4", "--max-len", "160", "--prompt-len", "32", "--judge", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "TPU v5e x4 (mesh data=2 model=2)" in out and "decode loop" in out and "tokens/s" in out
    assert "judge" in out
    assert cli.main(["plan", "--model", str(tmp_path), "--topology", "v7x:2x2"]) != 0


def test_bench_script_runs_at_a_tiny_size(tmp_path):
    """benchmarks/bench_tpu_compile.py once, on a tiny config, so it cannot rot (its table takes an hour)."""
    (tmp_path / "config.json").write_text(json.dumps(HF))
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_tpu_compile.py"
    out = tmp_path / "estimate.json"
    subprocess.run([sys.executable, str(script), "--config", str(tmp_path), "--topology", "v5e:2x2", "--mesh",
                    "1,4", "--prompt", "32", "--new", "96", "--tries", "1", "--no-judge", "--out", str(out)],
                   check=True, capture_output=True, timeout=900,
                   env=os.environ | {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1",  # this process holds libtpu's lock
                                     "PYTHONPATH": str(script.parent.parent)})
    row = json.loads(out.read_text())[0]
    assert row["batch"] > 0 and row["step"]["gflop"] > 0 and row["harmbench_400"]["steps"] > 0


def test_fits_checks_the_total_against_the_hbm_the_compiler_can_use():
    """libtpu states v5e's usable HBM (15.75 GiB) when it refuses a program; a compiled program whose per-chip
    total exceeds it (gpt-oss-20b's decode step before expert parallelism, which libtpu accepted) is reported as
    not fitting, and one under it as fitting."""
    mesh, chip = tpu_compile.topology_mesh("v5e:2x2", data=1, model=4)
    limit = tpu_compile.usable_hbm(mesh)
    assert limit == 15.75 * tpu_compile.GIB
    GIB = tpu_compile.GIB
    over = tpu_compile.Compiled("stream", argument=4.96 * GIB, temp=17.20 * GIB, peak=14.49 * GIB, hbm_limit=limit)
    under = tpu_compile.Compiled("prefill", argument=4.91 * GIB, temp=0.23 * GIB, peak=5.1 * GIB, hbm_limit=limit)
    assert not over.fits and under.fits
    text = tpu_compile.report(CFG, mesh, chip, SHAPE, [under, over])
    assert "NO: total over the 15.75 GiB" in text and text.count(" yes") == 1
