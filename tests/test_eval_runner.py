"""The eval runner end to end on a tiny model and the offline set; SIGKILL mid-run then resume; 8 devices; two
processes; the typed config, the per-pair settings check and the run-folder lock."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import yaml

from selfguard_jax import cli
from selfguard_jax.evaluate import runner


def write_config(tmp_path, model_dir, out, limit=3, extra=None):
    cfg = {
        "model": str(model_dir), "out_dir": str(out),
        # the random model seldom emits a newline token, so the reminder is placed at the start of the answer,
        # after the thinking cap forces </think>: reminders really happen on every row
        "recipes": ["vanilla", {"recipe": "reminder-answer-start", "max_think_tokens": 6, "max_answer_tokens": 4,
                                "reminder_text": "\nWait, is this safe?\n\n", "label": "remind"}],
        "datasets": [{"name": "offline", "split": s, "limit": limit} for s in ("harmful", "benign", "utility")],
        "generation": {"batch_size": 2, "max_new_tokens": 10}, "judges": ["keyword"], "bootstrap": 50,
        **(extra or {}),
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def generations(out):
    return {p.name: sorted(p.read_text().splitlines()) for p in sorted((out / "generations").glob("*.jsonl"))}


@pytest.mark.slow
def test_end_to_end_outputs(chat_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["eval", "--config", str(write_config(tmp_path, chat_model_dir, out))]) == 0
    assert len(generations(out)) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["remind__offline-harmful"]["reminders_per_prompt"]["value"] > 0
    assert "| remind |" in (out / "summary.md").read_text()
    assert (out / "summary.csv").is_file()
    pngs = list((out / "plots").glob("*.png"))
    assert any(p.name.startswith("entropy_") for p in pngs) and (out / "plots" / "trigger_steps.png").is_file()
    assert cli.main(["report", str(out)]) == 0
    assert "remind" in capsys.readouterr().out


def test_overrides_and_bad_config(chat_model_dir, tmp_path):
    path = write_config(tmp_path, chat_model_dir, tmp_path / "o")
    cfg = runner.EvalConfig.from_yaml(path, ["generation.batch_size=3", "bootstrap=10"])
    assert cfg.generation["batch_size"] == 3 and cfg.bootstrap == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nrecipes: [vanilla]\ndatsets: []\n")
    assert cli.main(["eval", "--config", str(bad)]) == 2


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(chat_model_dir, tmp_path):
    full = tmp_path / "full"
    cli.main(["eval", "--config", str(write_config(tmp_path, chat_model_dir, full, limit=6)), "--stage", "generate"])
    killed = tmp_path / "killed"
    config = write_config(tmp_path, chat_model_dir, killed, limit=6)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "selfguard_jax.cli", "eval", "--config", str(config), "--stage", "generate"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once some rows are on disk but not all
        done = sum(len(v) for v in generations(killed).values()) if (killed / "generations").exists() else 0
        if done >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = sum(len(v) for v in generations(killed).values())
    assert 0 < partial < 36, partial
    victim = sorted((killed / "generations").glob("*.jsonl"))[0]
    with open(victim, "a") as f:  # a torn last line, as a kill mid-write leaves
        f.write('{"id": "offline-torn", "prompt": "half a rec')
    assert cli.main(["eval", "--config", str(config), "--stage", "generate"]) == 0
    assert generations(killed) == generations(full)
    for lines in generations(killed).values():
        ids = [json.loads(x)["id"] for x in lines]
        assert len(ids) == len(set(ids)) == 6


@pytest.mark.slow
def test_eight_devices_equal_single_device(chat_model_dir, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    cli.main(["eval", "--config", str(write_config(tmp_path, chat_model_dir, single, limit=5)), "--stage", "generate",
              "generation.batch_size=8"])
    cli.main(["eval", "--config", str(write_config(tmp_path, chat_model_dir, multi, limit=5,
                                                   extra={"mesh": {"data": 8, "model": 1}})),
              "--stage", "generate", "generation.batch_size=8"])
    strip = lambda g: {k: [{kk: vv for kk, vv in json.loads(x).items() if kk != "entropy"} for x in v]
                       for k, v in g.items()}
    assert strip(generations(single)) == strip(generations(multi))


@pytest.mark.multihost
@pytest.mark.slow
def test_two_processes_equal_one(chat_model_dir, tmp_path):
    """Two processes on localhost with jax.distributed run every stage: each generates its slice into its own
    shard; only process 0 judges and reports, after the barrier on both hosts' shards; the judged rows equal a
    single process's."""
    import socket

    single, multi = tmp_path / "single", tmp_path / "multi"
    cli.main(["eval", "--config", str(write_config(tmp_path, chat_model_dir, single, limit=3))])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path, chat_model_dir, multi, limit=3)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [subprocess.Popen([sys.executable, "-m", "selfguard_jax.cli", "eval", "--config", str(config),
                               f"distributed.coordinator_address=127.0.0.1:{port}",
                               "distributed.num_processes=2", f"distributed.process_id={i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        outs.append(out)
        assert p.returncode == 0, out[-3000:]
    assert "| recipe |" in outs[0] and "| recipe |" not in outs[1]  # only process 0 reports
    shards = sorted(p.name for p in (multi / "generations").glob("*.host*.jsonl"))
    assert len(shards) == 12 and any(".host1." in s for s in shards)
    assert sorted(p.name for p in (multi / "generations").glob("done.host*.json")) == ["done.host0.json",
                                                                                      "done.host1.json"]
    for f in sorted((single / "judged").glob("*.jsonl")):
        a = [json.loads(x) for x in f.read_text().splitlines()]
        b = [json.loads(x) for x in (multi / "judged" / f.name).read_text().splitlines()]
        drop = lambda rows: [{k: v for k, v in r.items() if k != "entropy"} for r in rows]
        assert drop(a) == drop(b), f.name
    assert (multi / "summary.md").read_text() == (single / "summary.md").read_text()


def test_barrier_names_a_missing_host_and_never_truncates_a_shard(tmp_path):
    gens = tmp_path / "generations"
    gens.mkdir()
    shard = gens / "vanilla__x.host1.jsonl"
    shard.write_bytes(b'{"id": "a"}\n{"id": "b", "te')  # host 1 is mid-write
    (gens / "done.host0.json").write_text(json.dumps({"process": 0, "num_processes": 2, "shards": {}}))
    with pytest.raises(RuntimeError, match=r"no done marker from hosts \[1\]"):
        runner.wait_for_hosts(gens, timeout_s=0)
    (gens / "done.host1.json").write_text(json.dumps(
        {"process": 1, "num_processes": 2, "shards": {"vanilla__x.host1.jsonl": 2}}))
    with pytest.raises(RuntimeError, match=r"vanilla__x.host1.jsonl \(1 of 2 rows\)"):
        runner.wait_for_hosts(gens, timeout_s=0)
    assert [r["id"] for r in runner._read_pair(gens, "vanilla__x")] == ["a"]
    assert shard.read_bytes() == b'{"id": "a"}\n{"id": "b", "te'  # read, never truncated


def test_llama_guard_max_new_tokens_reaches_the_judge(chat_model_dir, tmp_path):
    """`llama_guard.max_new_tokens` is the judge's generation cap (it was accepted and ignored)."""
    config = write_config(tmp_path, chat_model_dir, tmp_path / "o",
                          extra={"judges": ["llama_guard"], "llama_guard": {"model": "m", "max_new_tokens": 3}})
    cfg = runner.EvalConfig.from_yaml(config)
    assert runner._guard(cfg, types.SimpleNamespace(tokenizer=None)).max_new_tokens == 3


@pytest.mark.slow
def test_llama_guard_stage_counts_parse_failures(chat_model_dir, tmp_path):
    """The Llama Guard judge runs through this project's engine; a model that does not answer `safe`/`unsafe`
    gives counted parse failures and rows judged not safe, never silently safe."""
    out = tmp_path / "guard"
    config = write_config(tmp_path, chat_model_dir, out, limit=2,
                          extra={"judges": ["keyword", "llama_guard"],
                                 "llama_guard": {"model": str(chat_model_dir), "protocol": "saferemind"}})
    assert cli.main(["eval", "--config", str(config)]) == 0
    rows = [json.loads(x) for f in (out / "judged").glob("*.jsonl") for x in f.read_text().splitlines()]
    finished = [r for r in rows if r["outcome"] != "unfinished"]
    assert finished and all(r["verdicts"]["llama_guard"] == "unparsed" for r in finished)
    summary = json.loads((out / "summary.json").read_text())
    harmful = summary["vanilla__offline-harmful"]
    assert harmful["guard_parse_failures"] == 2 - harmful["n_unfinished"]
    assert harmful["percent_safe[llama_guard]"]["value"] == 0.0


@pytest.mark.slow
def test_authors_judges_judge_every_row_under_the_selfguard_protocol(chat_model_dir, tmp_path):
    """WildGuard and the SORRY judge run through this project's engine on the whole response (stop text dropped);
    with protocol.unfinished_rows judged, a row cut off mid-thought gets its verdicts too and the report counts
    it; under excluded it gets none."""
    from selfguard_jax import lm as lm_mod
    from selfguard_jax.evaluate import model_judges

    judge_lm = lm_mod.load(chat_model_dir)
    for policy in ("judged", "excluded"):
        out = tmp_path / policy
        config = write_config(tmp_path, chat_model_dir, out, extra={
            "recipes": ["vanilla"], "judges": ["wildguard"], "protocol": {"unfinished_rows": policy},
            "datasets": [{"name": "offline", "split": "harmful", "judges": ["wildguard", "sorry_judge"]}],
            "wildguard": {"model": "unused", "max_new_tokens": 4},
            "sorry_judge": {"model": "unused", "max_new_tokens": 4}})
        cfg = runner.EvalConfig.from_yaml(config)
        (out / "generations").mkdir(parents=True)
        texts = ["<think>\nfine\n</think>\n\nSure.<|im_end|>", "<think>\ncut off mid-thought"]
        (out / "generations" / "vanilla__offline-harmful.jsonl").write_text("".join(json.dumps(
            {"id": str(i), "prompt": "q", "kind": "harmful", "text": t, "generated_ids": [1, 2], "reminder_steps": [],
             "think_tokens": None, "think_open": False, "spliced": [], "stop_texts": ["<|im_end|>"]}) + "\n"
            for i, t in enumerate(texts)))
        seen = []
        real = model_judges.ModelJudge.prompt_ids
        model_judges.ModelJudge.prompt_ids = lambda self, p, r: seen.append(r) or real(self, p, r)
        try:
            runner.judge_stage(cfg, judge_lms={"wildguard": judge_lm, "sorry_judge": judge_lm})
        finally:
            model_judges.ModelJudge.prompt_ids = real
        rows = [json.loads(x) for x in (out / "judged" / "vanilla__offline-harmful.jsonl").read_text().splitlines()]
        assert [r["outcome"] for r in rows] == ["answered", "unfinished"]
        assert set(rows[0]["verdicts"]) == {"wildguard", "sorry_judge"}
        assert set(rows[1]["verdicts"]) == ({"wildguard", "sorry_judge"} if policy == "judged" else set())
        assert seen[0] == "<think>\nfine\n</think>\n\nSure."  # whole text, stop text dropped, as the authors
        assert len(seen) == (4 if policy == "judged" else 2)
        summary = runner.report_stage(out, n_resamples=10)
        assert summary["vanilla__offline-harmful"]["unfinished_rows"] == policy


def test_config_checks_every_nested_key(chat_model_dir, tmp_path):
    path = write_config(tmp_path, chat_model_dir, tmp_path / "o")
    for override, message in [
        ("generation.max_new_token=5", r"generation.max_new_token"),
        ("generation.temperature=hot", r"generation.temperature is 'hot'"),
        ("judges=[keyword, keyword:xstes]", r"unknown \['keyword:xstes'\]"),
        ("llama_guard={model: m, protocl: selfguard}", r"llama_guard.protocl"),
        ("mesh={data: 2, modle: 1}", r"mesh.modle"),
        ("distributed={num_process: 2}", r"distributed.num_process"),
        ("bootstrap=many", r"bootstrap is 'many'"),
        ("scan_layers=sometimes", r"scan_layers is 'sometimes'"),
    ]:
        with pytest.raises(runner.ConfigError, match=message):
            runner.EvalConfig.from_yaml(path, [override])
    raw = yaml.safe_load(path.read_text())
    for key, value, message in [
        ("recipes", ["vanilla", "vanilla"], r"recipes: labels \['vanilla'\] appear more than once"),
        ("recipes", ["vanilla", {"recipe": "saferemind", "label": "vanilla"}], "more than once"),
        ("recipes", [{"recipe": "saferemind", "treshold": 0.3}], r"recipes\[0\].*treshold"),
        ("datasets", [{"name": "offline", "split": "harmful"}] * 2, r"labels \['offline-harmful'\]"),
        ("datasets", [{"name": "offline", "splt": "harmful"}], r"datasets\[0\].splt"),
        ("datasets", [{"name": "offlin"}], r"datasets\[0\].name 'offlin' is unknown"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**raw, key: value}))
        with pytest.raises(runner.ConfigError, match=message):
            runner.EvalConfig.from_yaml(bad)
    bad.write_text(path.read_text() + "datasets: [offline\n")
    with pytest.raises(runner.ConfigError, match=rf"{re.escape(str(bad))}, line \d+, column \d+ is not valid YAML"):
        runner.EvalConfig.from_yaml(bad)
    with pytest.raises(runner.ConfigError, match=r"override 'datasets=\[offline', line 1, column 9 is not valid YAML"):
        runner.EvalConfig.from_yaml(path, ["datasets=[offline"])


def test_every_shipped_eval_config_is_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "eval").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        runner.EvalConfig.from_yaml(path)


@pytest.mark.slow
def test_resume_with_changed_settings_is_refused_saying_what_changed(chat_model_dir, tmp_path):
    out = tmp_path / "resume"
    config = write_config(tmp_path, chat_model_dir, out, extra={
        "recipes": ["vanilla"], "datasets": [{"name": "offline", "split": "harmful", "limit": 1}],
        "generation": {"batch_size": 1, "max_new_tokens": 2}})
    assert cli.main(["eval", "--config", str(config), "--stage", "generate"]) == 0
    assert cli.main(["eval", "--config", str(config), "--stage", "generate", "generation.batch_size=2"]) == 0
    cfg = runner.EvalConfig.from_yaml(config, ["generation.temperature=0.7"])
    with pytest.raises(ValueError, match=r"other settings \(generation: .*'temperature': 0.7"):
        runner.generate_stage(cfg)


def test_a_second_run_on_the_same_folder_is_stopped(chat_model_dir, tmp_path):
    out = tmp_path / "locked"
    cfg = runner.EvalConfig.from_yaml(write_config(tmp_path, chat_model_dir, out, limit=1))
    with runner.run_lock(out):
        with pytest.raises(RuntimeError, match="in use by another run"):
            runner.generate_stage(cfg)
