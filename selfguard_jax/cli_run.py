"""CLI commands that run models: generate, extract, sweep, eval, report, demo."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import sys
from pathlib import Path

import numpy as np

from selfguard_jax.prompts import REMINDER_PRESETS
from selfguard_jax.spec import Sampling


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 30,31,32, got {text!r}") from None
    if not out or any(k < 0 for k in out):
        raise argparse.ArgumentTypeError(f"expected non-negative layer indices like 30,31,32, got {text!r}")
    return out


def _checked(kind: str, parse, ok):
    """An argparse type: parse the text, then require ok(value); the error says what was expected."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
        return value
    convert.__name__ = kind
    return convert


positive_int = _checked("a positive integer", int, lambda v: v >= 1)
nonneg_int = _checked("a non-negative integer", int, lambda v: v >= 0)
finite_float = _checked("a finite number", float, math.isfinite)
nonneg_float = _checked("a finite number >= 0", float, lambda v: math.isfinite(v) and v >= 0)
probability = _checked("a number in (0, 1]", float, lambda v: 0 < v <= 1)
nonempty_text = _checked("a non-empty text", str, lambda v: bool(v.strip()))


def _floats(text: str) -> list[float]:
    values = [finite_float(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0,0.3,0.5, got {text!r}")
    return values


def _layer_sets(text: str) -> list[list[int]]:
    sets = [_ints(x) for x in text.split(";") if x.strip()]
    if not sets:
        raise argparse.ArgumentTypeError(f"expected ';'-separated layer lists like '30,31,32;20', got {text!r}")
    return sets


def add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="the budget of a one-phase run (default: --max-think-tokens + --max-answer-tokens on a "
                   "thinking model, --max-answer-tokens otherwise); a two-phase run (--remind) is budgeted by its "
                   "caps")
    p.add_argument("--temperature", type=nonneg_float, default=0.0)
    p.add_argument("--top-p", type=probability, default=1.0)
    p.add_argument("--top-k", type=nonneg_int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="decode slots: prompts decoded at once, a slot refilled as soon as its prompt ends")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    add_layer_loop(p)


def _sampling(args: argparse.Namespace) -> Sampling:
    return Sampling(temperature=args.temperature, top_p=getattr(args, "top_p", 1.0), top_k=getattr(args, "top_k", 0),
                    seed=args.seed)


def add_layer_loop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer-loop", default="auto", choices=["auto", "scan", "unrolled"],
                   help="auto: scan on TPU, unrolled per-layer params elsewhere (faster decode, longer compile)")


def load_model(args: argparse.Namespace):
    from selfguard_jax import lm as lm_mod

    scan = {"auto": None, "scan": True, "unrolled": False}[args.layer_loop]
    return lm_mod.load(args.model, dtype=args.dtype, scan_layers=scan)


def add_defense(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="a named recipe (selfguard_jax.recipes.RECIPES)")
    p.add_argument("--vector", default=None, help="steering vectors (.safetensors from extract, .svec or .gguf)")
    p.add_argument("--layers", type=_ints, default=None, help="steered blocks, e.g. 30,31,32")
    p.add_argument("--alpha", type=finite_float, default=None)
    p.add_argument("--steer-rule", default=None, choices=["all", "prompt", "generated", "thinking"])
    p.add_argument("--remind", action="store_true", help="SafeRemind: entropy-triggered reminders")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reminder-text", type=nonempty_text, default=None)
    g.add_argument("--reminder-preset", default=None, choices=sorted(REMINDER_PRESETS))
    p.add_argument("--threshold", type=finite_float, default=None, help="entropy threshold in nats")
    p.add_argument("--criterion", default=None, choices=["lt", "gt"])
    p.add_argument("--max-reminders", type=nonneg_int, default=None)
    p.add_argument("--max-think-tokens", type=positive_int, default=None)
    p.add_argument("--max-answer-tokens", type=positive_int, default=None)
    p.add_argument("--preset", default=None, help="model preset for steering layers/alpha (configs/models NAME or a "
                   ".yaml path); default: the preset matching the model's architecture and size")
    p.add_argument("--think-markers", type=_think_markers, default=None,
                   help="'auto' (default: one-token markers found in the tokenizer), 'none' (the model does not "
                   "think) or START,END (e.g. '<think>,</think>'; may be several tokens)")


def _think_markers(text: str):
    from selfguard_jax.chat import parse_think_markers

    try:
        return parse_think_markers(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def recipe_from_args(args: argparse.Namespace, model_config=None):
    """The recipe named by --recipe (default: vanilla, or saferemind with --remind) with CLI overrides; with the
    loaded model's config (or --preset), steering layers/alpha not given come from the model's preset."""
    from selfguard_jax.recipes import get_recipe

    name = args.recipe or ("saferemind" if args.remind else "vanilla")
    over = {k: v for k, v in {
        "steer_layers": args.layers, "steer_alpha": args.alpha, "steer_rule": args.steer_rule,
        "threshold": args.threshold, "criterion": args.criterion, "max_reminders": args.max_reminders,
        "max_think_tokens": args.max_think_tokens, "max_answer_tokens": args.max_answer_tokens,
        "reminder_text": args.reminder_text if args.reminder_text is not None else (
            REMINDER_PRESETS[args.reminder_preset] if args.reminder_preset else None),
    }.items() if v is not None}
    if args.remind:
        over["remind"] = True
    if getattr(args, "think_markers", None) is not None:
        over["think_markers"] = args.think_markers
    recipe = get_recipe(name, model_config=model_config, preset=getattr(args, "preset", None), **over)
    if getattr(args, "vector", None) and not recipe.steers:
        raise ValueError(f"--vector {args.vector} is given but recipe {recipe.name!r} does not steer (layers "
                         f"{list(recipe.steer_layers)}, alpha {recipe.steer_alpha}); expected --recipe selfguard or "
                         "steer-only, or --layers with a nonzero --alpha.")
    return recipe


def load_vectors_any(path: str, lm):
    """Vectors from any supported format, checked against the model's shape (vector_files.load_any)."""
    from selfguard_jax.vector_files import load_any

    return load_any(path, lm.config.num_layers, lm.config.hidden_size)[0]


def warn_oversteer(path: str, vectors, recipe) -> None:
    """Warn when the summed |alpha sum_k v_k| passes extract.OVERSTEER_LIMIT x the residual norm recorded at
    extraction time (extract.oversteer_report)."""
    from selfguard_jax import extract, vector_files as vf

    if not path.endswith(".safetensors"):
        return
    norms = vf.load_vectors(path)[1].extra.get("residual_norms")
    if not norms:
        return
    report = extract.oversteer_report(vectors, recipe.steer_layers, recipe.steer_alpha, np.asarray(norms))
    if report.over:
        print(f"warning: {report.message()}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    from selfguard_jax import batch_io

    records, errors = batch_io.read_prompts(args.prompts)
    for e in errors:
        print(f"skipped {e}", file=sys.stderr)
    recipe = recipe_from_args(args)  # flag mistakes surface before the model loads
    if args.vector and not Path(args.vector).is_file():
        raise FileNotFoundError(f"--vector {args.vector} does not exist.")
    if recipe.steers and not args.vector:
        raise ValueError(f"recipe {recipe.name!r} steers layers {list(recipe.steer_layers)} but no --vector was given; "
                         "run `selfguard-jax extract` first and pass --vector.")
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; expected a .jsonl file path.")
    lm = load_model(args)
    recipe = recipe_from_args(args, lm.config)  # steering layers/alpha from the model's preset where not given
    needs_tok = args.chat or recipe.remind or any("prompt" in r and "input_ids" not in r for r in records)
    if needs_tok and lm.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files, needed for text prompts, --chat and --remind; "
                         "give input_ids in a JSONL prompts file instead.")
    vectors = load_vectors_any(args.vector, lm) if args.vector else None
    spec = recipe.spec(lm.tokenizer, vectors, max_new_tokens=args.max_new_tokens, sampling=_sampling(args))
    if spec.steering is not None:
        warn_oversteer(args.vector, vectors, recipe)
    max_new = spec.budget()

    def to_ids(rec):
        if "input_ids" in rec:
            return rec["input_ids"]
        if args.chat:
            return recipe.prompt_ids(lm.tokenizer, rec["prompt"])
        return lm.tokenizer.encode(rec["prompt"])

    def gen(batch):
        return lm.generate(batch, spec, eager=args.eager, slots=args.batch_size)

    decode_text = None if lm.tokenizer is None else (lambda ids: lm.tokenizer.decode(ids))
    found = None if lm.tokenizer is None else recipe.markers(lm.tokenizer)
    markers = None if found is None else [found.start, found.end]  # rows split thinking/answer at these
    settings = {"model": str(Path(args.model).resolve()), "dtype": args.dtype, "chat": args.chat,
                "recipe": dataclasses.asdict(recipe), "vector": _file_digest(args.vector), "max_new_tokens": max_new,
                "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed}
    stats = batch_io.run_to_jsonl(records, args.out, args.batch_size * batch_io.QUEUE_PER_SLOT, to_ids, gen,
                                  decode_text, extra=lambda rec: {"recipe": recipe.name, "think_markers": markers},
                                  settings=settings)
    steady_s, steady_tok = stats["seconds"] - stats["first_seconds"], stats["tokens"] - stats["first_tokens"]
    speed = (f"steady {steady_tok / steady_s:.1f} tokens/s after the first call" if steady_tok and steady_s > 0
             else "one call only, so no steady tokens/s apart from compilation")
    print(f"wrote {stats['rows']} rows to {args.out} ({stats['skipped']} already there); first call "
          f"{stats['first_seconds']:.1f}s (compile included); {speed}; {len(errors)} bad input lines")
    return 1 if errors else 0


def _file_digest(path: str | None) -> str | None:
    """`path` and the first 16 hex digits of its SHA-256 (None for None): a vector file's identity in settings."""
    if path is None:
        return None
    return f"{Path(path).resolve()} sha256:{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"


def _check_new_file(path: str, overwrite: bool, suffix: str) -> None:
    """Before any work: refuse an --out with another extension, a folder, or an existing file without --overwrite."""
    out = Path(path)
    if out.suffix != suffix:
        raise ValueError(f"--out {out} must end in {suffix}.")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; expected a {suffix} file path.")
    if out.exists() and not overwrite:
        raise ValueError(f"--out {out} already exists; pass --overwrite to replace it, or give a new path.")


def _questions(path: str) -> list[str]:
    from selfguard_jax import batch_io

    records, errors = batch_io.read_prompts(path)
    for e in errors:
        print(f"skipped {e}", file=sys.stderr)
    if any("prompt" not in r for r in records):
        raise ValueError(f"{path}: extraction and sweeps need text questions ('prompt'), not input_ids.")
    return [r["prompt"] for r in records]


def _require_tokenizer(lm, what: str):
    if lm.tokenizer is None:
        raise ValueError(f"{lm.path} has no tokenizer files; {what} needs the model's tokenizer and chat template.")


def cmd_extract(args: argparse.Namespace) -> int:
    from selfguard_jax.selfguard import extract_selfguard
    from selfguard_jax.vector_files import save_vectors

    _check_new_file(args.out, args.overwrite, ".safetensors")
    questions = _questions(args.questions)
    lm = load_model(args)
    _require_tokenizer(lm, "extract")
    sg = extract_selfguard(lm, questions, model_id=str(args.model), dataset_name=args.questions, suffix=args.suffix,
                           method=args.method, batch_size=args.batch_size, read=args.read)
    vectors, norms = sg.vectors, sg.residual_norms
    save_vectors(args.out, vectors, sg.meta)
    print(f"wrote {args.method} vectors [{vectors.shape[0]}, {vectors.shape[1]}] from {len(questions)} pairs "
          f"to {args.out}")
    print("layer  |v_k|      residual  |v_k|/residual")
    for k in range(vectors.shape[0]):
        n = float(np.linalg.norm(vectors[k]))
        print(f"{k:5d}  {n:9.3f}  {norms[k]:9.3f}  {n / max(norms[k], 1e-12):8.4f}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from selfguard_jax import recipes, sweep

    earlier = sorted(p.name for p in Path(args.out).glob("sweep.*")) if Path(args.out).is_dir() else []
    if earlier and not args.overwrite:
        raise ValueError(f"--out {args.out} already holds a sweep ({', '.join(earlier)}); pass --overwrite to "
                         "replace it, or give a new folder.")
    lm = load_model(args)
    _require_tokenizer(lm, "sweep")
    vectors = load_vectors_any(args.vector, lm)
    recipe = recipes.get_recipe(args.recipe)
    harmful = [recipe.prompt_ids(lm.tokenizer, q) for q in _questions(args.harmful)]
    benign = [recipe.prompt_ids(lm.tokenizer, q) for q in _questions(args.benign)]
    norms = sweep.reference_norms(lm, args.vector, harmful + benign)  # for the over-steering check
    spec = recipe.spec(lm.tokenizer, max_new_tokens=args.max_new_tokens, sampling=_sampling(args))
    results = sweep.run_sweep(lm, vectors, args.layer_sets, args.alphas, harmful, benign, spec,
                              batch_size=args.batch_size, residual_norms=norms)
    paths = sweep.write_sweep(results, args.out)
    print(sweep.sweep_table(results))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from selfguard_jax.evaluate import runner

    cfg = runner.EvalConfig.from_yaml(args.config, args.overrides)
    if args.stage in ("all", "generate"):
        for pair, st in runner.generate_stage(cfg).items():
            print(f"{pair}: {st['rows']} new rows ({st['skipped']} already done), "
                  f"{st['tokens'] / max(st['seconds'], 1e-9):.1f} tokens/s")
    if args.stage in ("all", "judge"):
        runner.judge_stage(cfg)
    if args.stage in ("all", "report"):
        if runner.report_stage(cfg.out_dir, cfg.bootstrap):  # empty on processes other than 0
            print(open(f"{cfg.out_dir}/summary.md").read())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from selfguard_jax.evaluate import authors, runner
    from selfguard_jax.safe_write import write_text

    if (args.run_dir is None) == (not args.authors):
        raise ValueError("report takes a judged run directory or --authors FILE..., one of the two.")
    if args.authors:
        md = authors.authors_report(args.authors)
        if args.out:
            write_text(args.out, md)
        print(md)
        return 0
    runner.report_stage(args.run_dir)
    print(open(f"{args.run_dir}/summary.md").read())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from selfguard_jax.demo import run_demo

    print(run_demo(args.out, args.limit, args.batch_size))
    print(f"\nwrote {args.out}/summary.md and {args.out}/plots/*.png. These are the model organism's numbers (a "
          "tiny model trained on a synthetic corpus): a testbed for the mechanisms, not evidence about real models.")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the model-running subcommands on the top-level parser."""
    g = sub.add_parser("generate", help="generate for a prompts file (text lines or JSONL) into a JSONL file")
    g.add_argument("--model", required=True)
    g.add_argument("--prompts", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat template")
    g.add_argument("--eager", action="store_true", help="run the decode step in a Python loop (debugging)")
    add_sampling(g)
    add_defense(g)
    g.set_defaults(fn=cmd_generate)

    e = sub.add_parser("extract", help="Self-Guard steering vectors from plain questions (with/without the prompt)")
    e.add_argument("--model", required=True)
    e.add_argument("--questions", required=True, help="text file (a question a line) or JSONL with 'prompt'")
    e.add_argument("--out", required=True, help="output .safetensors (with provenance metadata)")
    e.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca", "probe"])
    e.add_argument("--suffix", default="chatgpt", choices=["chatgpt", "assistant"],
                   help="Self-Reminder user suffix preset")
    e.add_argument("--batch-size", type=positive_int, default=16)
    e.add_argument("--read", default="last_token", choices=["last_token", "authors"],
                   help="last_token: each prompt's true last token; authors: as the Self-Guard authors' trainer "
                        "(right-padded batches of 16, pad id 0, the batch's last column)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="float16 as the authors' trainer loads the model")
    add_layer_loop(e)
    e.set_defaults(fn=cmd_extract)

    w = sub.add_parser("sweep", help="refusal on harmful and benign sets over a grid of layers and alphas")
    w.add_argument("--model", required=True)
    w.add_argument("--vector", required=True)
    w.add_argument("--harmful", required=True)
    w.add_argument("--benign", required=True)
    w.add_argument("--layer-sets", type=_layer_sets, required=True, help="';'-separated layer lists, e.g. '30,31,32;20'")
    w.add_argument("--alphas", type=_floats, default=_floats("0,0.1,0.3,0.5,1.0"))
    w.add_argument("--recipe", default="prompt-only", help="prompting kept during the sweep (paper: prompt-only)")
    w.add_argument("--out", required=True)
    w.add_argument("--overwrite", action="store_true", help="replace an earlier sweep in --out")
    add_sampling(w)
    w.set_defaults(fn=cmd_sweep, max_new_tokens=128)

    v = sub.add_parser("eval", help="recipes x datasets: generate (resumable), judge, report")
    v.add_argument("--config", required=True, help="configs/eval/NAME.yaml")
    v.add_argument("--stage", default="all", choices=["all", "generate", "judge", "report"])
    v.add_argument("overrides", nargs="*", help="key=value overrides, e.g. generation.batch_size=4")
    v.set_defaults(fn=cmd_eval)

    d = sub.add_parser("demo", help="the defended pipeline on the bundled model organism, offline")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--limit", type=positive_int, default=None, help="held-out prompts per kind (default: all)")
    d.add_argument("--batch-size", type=positive_int, default=16)
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("report", help="summary table (Markdown, CSV) and plots of a judged run directory; or, with "
                       "--authors, the Self-Guard authors' released result files recomputed and our judges' agreement")
    r.add_argument("run_dir", nargs="?")
    r.add_argument("--authors", nargs="+", metavar="FILE",
                   help="the Self-Guard authors' result files (eval_results/.../*.json): their aggregates recomputed "
                        "with our metric code, and each keyword judge's agreement with their judge's verdicts")
    r.add_argument("--out", help="with --authors: also write the Markdown to this file")
    r.set_defaults(fn=cmd_report)
