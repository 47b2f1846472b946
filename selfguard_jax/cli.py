"""`selfguard-jax`: convert | info | generate | extract | sweep | eval | report | demo."""

from __future__ import annotations

import argparse
import sys


def cmd_convert(args: argparse.Namespace) -> None:
    from selfguard_jax import checkpoint, lm

    model = lm.load(args.hf_dir, dtype=args.dtype, tokenizer=False, scan_layers=True)  # the layout written
    if args.format == "orbax":
        out = checkpoint.save_orbax(model.params, model.config, args.out_dir, tokenizer_from=args.hf_dir)
    else:
        out = checkpoint.export_hf(model.params, model.config, args.out_dir, tokenizer_from=args.hf_dir)
    print(f"wrote {args.format} params ({args.dtype}) to {out}")


def cmd_info(args: argparse.Namespace) -> None:
    from selfguard_jax.config import ModelConfig

    cfg = ModelConfig.from_pretrained(args.path)
    n = cfg.num_params()
    print(f"architecture   {cfg.architecture} ({cfg.model_type})")
    print(f"layers         {cfg.num_layers}  hidden {cfg.hidden_size}  heads {cfg.num_heads}  kv heads "
          f"{cfg.num_kv_heads}  head_dim {cfg.head_dim}  mlp {cfg.intermediate_size}  vocab {cfg.vocab_size}")
    print(f"rope           theta {cfg.rope_theta:g}  {dict(cfg.rope_scaling)}  max positions "
          f"{cfg.max_position_embeddings}")
    print(f"tied embed     {cfg.tie_word_embeddings}  qkv bias {cfg.qkv_bias}  qk norm {cfg.qk_norm}")
    print(f"parameters     {n:,}")
    for name, size in (("float32", 4), ("bfloat16", 2)):
        print(f"bytes {name:9s}{n * size / 2**30:10.3f} GiB")


def cmd_plan(args: argparse.Namespace) -> None:
    from selfguard_jax.config import ModelConfig
    from selfguard_jax.plan import describe

    cfg = ModelConfig.from_pretrained(args.model)
    try:
        mesh = {k.strip(): int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))}
    except ValueError:
        raise ValueError(f"--mesh {args.mesh!r} is not of the form data=N,model=M.") from None
    bad = set(mesh) - {"data", "model"}
    if bad:
        raise ValueError(f"--mesh takes data=N,model=M; got unknown axes {sorted(bad)}.")
    print(describe(cfg, int(mesh.get("data", 1)), int(mesh.get("model", 1)), args.batch, args.max_len,
                   {"float32": 4, "bfloat16": 2}[args.dtype], args.prompt_len))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfguard-jax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="HF safetensors folder -> orbax params (or a re-exported HF folder)")
    c.add_argument("hf_dir")
    c.add_argument("out_dir")
    c.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--format", default="orbax", choices=["orbax", "hf"])
    c.set_defaults(fn=cmd_convert)

    i = sub.add_parser("info", help="architecture, parameter count and bytes per dtype of a model folder")
    i.add_argument("path")
    i.set_defaults(fn=cmd_info)

    pl = sub.add_parser("plan", help="bytes per device for params, KV cache and activations on a mesh")
    pl.add_argument("--model", required=True, help="a folder with config.json")
    pl.add_argument("--mesh", default="data=1,model=1")
    pl.add_argument("--batch", type=int, default=8)
    pl.add_argument("--max-len", type=int, default=4096, help="prompt + generated tokens (the KV cache length)")
    pl.add_argument("--prompt-len", type=int, default=512, help="longest prompt (sizes the prefill activations)")
    pl.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    pl.set_defaults(fn=cmd_plan)

    from selfguard_jax import cli_run

    cli_run.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"selfguard-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
