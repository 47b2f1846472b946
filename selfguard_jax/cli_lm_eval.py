"""`selfguard-jax lm-eval`: lm-evaluation-harness tasks on a defended model (lm-eval 0.4's CLI finds no external
model backends, so this command builds the backend and calls `lm_eval.simple_evaluate`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfguard_jax import cli_run
from selfguard_jax.cli_run import positive_int


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks (utility benchmarks) on a defended model")
    p.add_argument("--model", required=True, help="a model folder or .gguf file")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task or group names")
    p.add_argument("--include-path", default=None, help="a folder of extra task YAML files (lm-eval --include_path)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--limit", type=float, default=None, help="documents per task (a fraction below 1)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="rows per forward and decode slots")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--max-gen-toks", type=positive_int, default=256, help="answer cap where a task sets none")
    p.add_argument("--max-length", type=positive_int, default=None, help="default: the model's max positions")
    p.add_argument("--no-chat-template", action="store_true",
                   help="send lm-eval's raw text (recipes that change the prompt then refuse to run)")
    p.add_argument("--no-fewshot-as-multiturn", action="store_true", help="few-shot examples in one user turn")
    p.add_argument("--system-instruction", default=None)
    p.add_argument("--gen-kwargs", default=None, help="lm-eval generation overrides, e.g. max_gen_toks=1024")
    p.add_argument("--confirm-run-unsafe-code", action="store_true", help="needed by code tasks (humaneval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write lm-eval's results (with samples) to this .json file")
    cli_run.add_defense(p)
    cli_run.add_layer_loop(p)
    p.set_defaults(fn=cmd_lm_eval)


def cmd_lm_eval(args: argparse.Namespace) -> int:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table
    except ImportError as e:
        raise ValueError(f"lm-eval is not installed ({e}); install the extra: pip install 'selfguard-jax[lm-eval]'.") \
            from None
    from selfguard_jax.lm_eval_backend import SelfGuardLM

    if args.max_answer_tokens is not None:
        raise ValueError("--max-answer-tokens does not apply here: the task's max_gen_toks caps the answer; set "
                         "--max-gen-toks (tasks without their own) or --gen-kwargs max_gen_toks=N.")
    cli_run.recipe_from_args(args)  # flag mistakes surface before the model loads
    if args.vector and not Path(args.vector).is_file():
        raise FileNotFoundError(f"--vector {args.vector} does not exist.")
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; expected a .json file path.")
    lm = cli_run.load_model(args)
    recipe = cli_run.recipe_from_args(args, lm.config)
    vectors = cli_run.load_vectors_any(args.vector, lm) if args.vector else None
    if vectors is not None:
        cli_run.warn_oversteer(args.vector, vectors, recipe)
    model = SelfGuardLM(lm=lm, recipe=recipe, vectors=vectors, batch_size=args.batch_size, max_length=args.max_length,
                        max_gen_toks=args.max_gen_toks, seed=args.seed)
    results = lm_eval.simple_evaluate(
        model=model, tasks=[t for t in args.tasks.split(",") if t], num_fewshot=args.num_fewshot, limit=args.limit,
        task_manager=TaskManager(include_path=args.include_path), apply_chat_template=not args.no_chat_template,
        fewshot_as_multiturn=not args.no_fewshot_as_multiturn, system_instruction=args.system_instruction,
        gen_kwargs=args.gen_kwargs, confirm_run_unsafe_code=args.confirm_run_unsafe_code, random_seed=args.seed,
        log_samples=args.out is not None)
    print(f"recipe {recipe.name}: {args.model}")
    print(make_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
