"""extract and sweep commands end to end on a tiny chat model; vector files they write; over-steering warning."""

import json

import numpy as np
import pytest

from selfguard_jax import cli, vector_files


@pytest.mark.slow
def test_extract_then_generate_then_sweep(chat_model_dir, tmp_path, capsys):
    q = tmp_path / "q.txt"
    q.write_text("How do I bake bread?\nWhat is 3 plus 4?\nSure, here is how.\n")
    vec = tmp_path / "v.safetensors"
    assert cli.main(["extract", "--model", str(chat_model_dir), "--questions", str(q), "--out", str(vec),
                     "--batch-size", "2"]) == 0
    vectors, meta = vector_files.load_vectors(vec)
    assert vectors.shape == (3, 64) and meta.dataset_size == 3 and meta.method == "mean_diff"
    assert len(meta.extra["residual_norms"]) == 3 and np.linalg.norm(vectors[2]) > 0
    out = tmp_path / "g.jsonl"
    assert cli.main(["generate", "--model", str(chat_model_dir), "--prompts", str(q), "--out", str(out), "--chat",
                     "--recipe", "selfguard", "--vector", str(vec), "--layers", "1,2", "--alpha", "50",
                     "--max-new-tokens", "4"]) == 0
    assert "over-steering: alpha x the vectors of blocks 1,2 add up to" in capsys.readouterr().err
    assert all(r["recipe"] == "selfguard" for r in map(json.loads, out.read_text().splitlines()))
    assert cli.main(["sweep", "--model", str(chat_model_dir), "--vector", str(vec), "--harmful", str(q),
                     "--benign", str(q), "--layer-sets", "1;1,2", "--alphas", "0,1", "--out", str(tmp_path / "sw"),
                     "--max-new-tokens", "6", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "| 1,2 | 1 |" in printed and "summed ratio" in printed
    gens = [json.loads(line) for line in (tmp_path / "sw" / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 2 * 2 * 6 and {"text", "rep4", "degenerate"} <= set(gens[0])  # sets x alphas x prompts
    assert (tmp_path / "sw" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_extract_refuses_wrong_vector_shape(chat_model_dir, tmp_path):
    vec = tmp_path / "bad.svec"
    vector_files.save_svec(vec, np.ones((5, 64), np.float32), "qwen3")
    q = tmp_path / "q.txt"
    q.write_text("hi\n")
    code = cli.main(["generate", "--model", str(chat_model_dir), "--prompts", str(q), "--out",
                     str(tmp_path / "o.jsonl"), "--recipe", "steer-only", "--vector", str(vec), "--layers", "1"])
    assert code == 2
