"""`selfguard-jax`: convert | info | generate | extract | sweep | eval | report | demo | lm-eval."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from pathlib import Path


def cmd_convert(args: argparse.Namespace) -> None:
    from selfguard_jax import checkpoint, gguf_checkpoint, lm

    check_convert_target(args.hf_dir, args.out_dir, args.overwrite)
    model = lm.load(args.hf_dir, dtype=args.dtype, tokenizer=False, scan_layers=True)  # the layout written
    if args.format == "orbax":
        out = checkpoint.save_orbax(model.params, model.config, args.out_dir, tokenizer_from=args.hf_dir)
    else:
        out = checkpoint.export_hf(model.params, model.config, args.out_dir, tokenizer_from=args.hf_dir)
    if gguf_checkpoint.is_gguf(args.hf_dir):  # the tokenizer and chat template live inside the file
        gguf_checkpoint.save_tokenizer(args.hf_dir, out)
    print(f"wrote {args.format} params ({args.dtype}) to {out}")


def check_convert_target(src: str, out_dir: str, overwrite: bool) -> None:
    """Refuse converting in place, into a file, or into a non-empty folder without --overwrite."""
    out = Path(out_dir)
    if out.exists() and Path(src).exists() and os.path.samefile(src, out):
        raise ValueError(f"OUT_DIR {out} is the source {src}; converting in place is refused (it would replace the "
                         "source weights). Give a new folder.")
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR {out} is a file; expected a folder (new, empty, or with --overwrite).")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"OUT_DIR {out} exists and is not empty; pass --overwrite to replace its weights, config.json "
                         "and tokenizer files (other files are kept), or give a new folder.")


def cmd_info(args: argparse.Namespace) -> None:
    from selfguard_jax.tensor_source import read_config

    cfg = read_config(args.path)
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
    from selfguard_jax.plan import describe
    from selfguard_jax.tensor_source import read_config

    cfg = read_config(args.model)
    try:
        mesh = {k.strip(): int(v) for k, v in (kv.split("=") for kv in (args.mesh or "data=1,model=1").split(","))}
    except ValueError:
        raise ValueError(f"--mesh {args.mesh!r} is not of the form data=N,model=M.") from None
    bad = set(mesh) - {"data", "model"}
    if bad:
        raise ValueError(f"--mesh takes data=N,model=M; got unknown axes {sorted(bad)}.")
    if any(n < 1 for n in mesh.values()):
        raise ValueError(f"--mesh {args.mesh!r}: axis sizes must be positive integers.")
    if args.max_len > cfg.max_position_embeddings:
        raise ValueError(f"--max-len {args.max_len} exceeds the model's max_position_embeddings "
                         f"{cfg.max_position_embeddings}; expected at most that.")
    if args.prompt_len > args.max_len:
        raise ValueError(f"--prompt-len {args.prompt_len} exceeds --max-len {args.max_len}; expected at most that.")
    dtype_bytes = {"float32": 4, "bfloat16": 2}[args.dtype]
    if args.topology is None:
        print(describe(cfg, int(mesh.get("data", 1)), int(mesh.get("model", 1)), args.batch, args.max_len,
                       dtype_bytes, args.prompt_len))
        return
    from selfguard_jax import tpu_compile

    if args.prompt_len == args.max_len:
        raise ValueError("--topology compiles the decode loop: --max-len must exceed --prompt-len.")
    judge = None if args.judge is None else read_config(args.judge)
    shape = tpu_compile.Shape(args.batch, args.prompt_len, args.max_len - args.prompt_len)
    data, model = (None, None) if args.mesh is None else (mesh.get("data", 1), mesh.get("model", 1))
    print(tpu_compile.describe(cfg, args.topology, shape, data, model, args.dtype, args.layers == "scan", judge))


def build_parser() -> argparse.ArgumentParser:
    from selfguard_jax.cli_run import positive_int

    p = argparse.ArgumentParser(prog="selfguard-jax", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="HF safetensors folder or .gguf file -> orbax params (or an HF folder)")
    c.add_argument("hf_dir")
    c.add_argument("out_dir")
    c.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--format", default="orbax", choices=["orbax", "hf"])
    c.add_argument("--overwrite", action="store_true", help="replace the checkpoint in a non-empty OUT_DIR")
    c.set_defaults(fn=cmd_convert)

    i = sub.add_parser("info", help="architecture, parameter count and bytes per dtype of a model folder or .gguf file")
    i.add_argument("path")
    i.set_defaults(fn=cmd_info)

    pl = sub.add_parser("plan", help="bytes per device for params, KV cache and activations on a mesh")
    pl.add_argument("--model", required=True, help="a folder with config.json, or a .gguf file")
    pl.add_argument("--mesh", default=None, help="data=N,model=M (default data=1,model=1; with --topology, "
                    "every chip on model)")
    pl.add_argument("--batch", type=positive_int, default=8)
    pl.add_argument("--max-len", type=positive_int, default=4096, help="prompt + generated tokens (the KV cache length)")
    pl.add_argument("--prompt-len", type=positive_int, default=512, help="longest prompt (sizes the prefill activations)")
    pl.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    pl.add_argument("--topology", default=None, help="compile every program for this TPU topology (v5e:2x4, "
                    "v6e:2x4, v4:2x2x2, ...) with libtpu's compiler, no TPU needed, and report what it says")
    pl.add_argument("--judge", default=None, help="with --topology: a judge model's folder (config.json), "
                    "compiled at the prompt + response length")
    pl.add_argument("--layers", default="scan", choices=["scan", "unrolled"],
                    help="with --topology: the layer layout (scan: what sgj.load gives on TPU)")
    pl.set_defaults(fn=cmd_plan)

    from selfguard_jax import cli_run

    cli_run.add_commands(sub)
    from selfguard_jax import cli_lm_eval

    cli_lm_eval.add_command(sub)
    for command in sub.choices.values():  # --debug is accepted after the command too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def describe_error(e: BaseException) -> tuple[str, int]:
    """One line for the user and the exit status: 2 for a bad input or environment, 1 for an unexpected error."""
    if isinstance(e, OSError) and e.filename is not None:
        hint = {errno.ENOSPC: "not enough free space on the disk; free space and rerun (finished work is kept)",
                errno.EDQUOT: "the disk quota is exceeded; free space and rerun (finished work is kept)",
                errno.EACCES: "permission denied; expected a path you can read or write",
                errno.EROFS: "the file system is read-only; expected a writable path",
                errno.EISDIR: "is a folder; expected a file",
                errno.ENOTDIR: "a part of the path is not a folder",
                errno.ENOENT: "no such file or folder",
                errno.EFBIG: "the file grew past the size limit; free space or raise the limit and rerun"}
        detail = "" if e.strerror == os.strerror(e.errno or 0) else f"{e.strerror}; "
        return f"{e.filename}: {detail}{hint.get(e.errno, e.strerror)}", 2
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"write failed: {e.strerror}; free space and rerun (finished work is kept)", 2
    if isinstance(e, (ValueError, OSError)):
        return str(e), 2
    try:
        import yaml

        if isinstance(e, yaml.YAMLError):
            return f"malformed YAML: {' '.join(str(e).split())}", 2
    except ImportError:
        pass
    return (f"unexpected {type(e).__name__}: {e}. This is probably a bug; rerun with --debug for the traceback "
            "and report it."), 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error ends in one line on stderr (the traceback only with --debug)."""
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.fn(args) or 0
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.fn(args) or 0
        except KeyboardInterrupt:
            print(f"selfguard-jax {args.command}: interrupted (finished work is kept)", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - the CLI's one handler: no traceback for an ordinary mistake
            message, code = describe_error(e)
            print(f"selfguard-jax {args.command}: error: {message}", file=sys.stderr)
            return code


if __name__ == "__main__":
    sys.exit(main())
