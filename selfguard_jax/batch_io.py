"""Prompt files in, result JSONL out: batches sorted by length, flushed per batch, resumable.

A results file is append-only; rerunning skips ids already written, and a torn last line (a run killed
mid-write, or a full disk) is dropped and redone. A prompt's id is its file's `id` field, else a hash of
its content, so editing a prompts file never pairs a row with another prompt. While a run appends to a
results file it holds an advisory lock on it: a second run on the same file stops with an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from selfguard_jax.evaluate.answer_text import THINK_END, THINK_START, split_at
from selfguard_jax.safe_write import write_text

try:
    import fcntl
except ImportError:  # not POSIX: no advisory lock
    fcntl = None


class PromptFileError(ValueError):
    """A prompts file that cannot be read at all."""


class ResultsFileError(ValueError):
    """A results file that cannot be resumed; the message names the file, the line and the fix."""


def content_id(prompt: str | list[int]) -> str:
    """A stable id from a prompt's content: the first 16 hex digits of the SHA-256 of its text or ids."""
    blob = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def read_prompts(path: str | Path) -> tuple[list[dict], list[str]]:
    """Records {id, prompt | input_ids} from a `.jsonl` file, or a text file (a prompt a line); plus per-line errors.

    The format follows the extension only. Bad JSONL lines are reported with their line number and skipped;
    the good ones still run. Ids are the `id` field when given, else `content_id` (a repeated prompt gets
    "-2", "-3" ... on its later copies).
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompts file {path} does not exist." if not path.exists() else
                              f"prompts file {path} is not a file.")
    if path.suffix == ".json":
        raise PromptFileError(f"{path}: a .json prompts file is not read; expected JSONL (.jsonl, one object a line) "
                              "or a text file with one prompt a line.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path} is not UTF-8 text ({e}); expected a prompt a line or JSONL.") from None
    jsonl = path.suffix == ".jsonl"
    records, errors = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            records.append({"prompt": line})
            continue
        try:
            records.append(_prompt_row(line))
        except ValueError as e:
            errors.append(f"{path}:{n}: {e}")
    seen: dict[str, int] = {}
    for r in records:
        if "id" not in r:
            base = content_id(r["prompt"] if "prompt" in r else r["input_ids"])
            seen[base] = seen.get(base, 0) + 1
            r["id"] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    ids = [r["id"] for r in records]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise PromptFileError(f"{path} repeats ids {dupes[:5]}; ids must be unique for resumable output.")
    if not records:
        raise PromptFileError(f"{path} holds no usable prompt" + (f" ({len(errors)} bad lines)" if errors else "."))
    return records, errors


def _prompt_row(line: str) -> dict:
    """One JSONL prompt line, checked: an object with a non-empty 'prompt' or 'input_ids', an optional 'id'."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno}); expected one object a line") from None
    if not isinstance(row, dict) or not ("prompt" in row or "input_ids" in row):
        raise ValueError("needs a 'prompt' (text) or 'input_ids' (list of ints) field")
    if "input_ids" in row and not (isinstance(row["input_ids"], list) and row["input_ids"]
                                   and all(isinstance(i, int) and not isinstance(i, bool) for i in row["input_ids"])):
        raise ValueError("'input_ids' must be a non-empty list of ints")
    if "prompt" in row and not (isinstance(row["prompt"], str) and row["prompt"].strip()):
        raise ValueError("'prompt' must be a non-empty string")
    if "id" in row:
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool) or not str(row["id"]).strip():
            raise ValueError(f"'id' is {row['id']!r}; expected a non-empty string or an integer")
        row["id"] = str(row["id"])
    return row


def finished_ids(out_path: str | Path) -> set[str]:
    """Ids already in a results file; a torn last line is cut off so it is redone."""
    path = Path(out_path)
    if not path.is_file():
        return set()
    raw = path.read_bytes()
    good_end = raw.rfind(b"\n") + 1
    if good_end != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return {row["id"] for row in _rows(path, raw[:good_end])}


def read_results(path: str | Path) -> list[dict]:
    """Every row of a results file; a damaged line or a row without an id is an error naming its line."""
    path = Path(path)
    return list(_rows(path, path.read_bytes()))


def _rows(path: Path, raw: bytes):
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsFileError(f"{path}:{n}: damaged line ({e.msg}); expected one JSON object a line. "
                                   "Delete that line to have the row redone.") from None
        if not isinstance(row, dict) or "id" not in row:
            raise ResultsFileError(f"{path}:{n}: row has no 'id' field; expected rows written by this tool. "
                                   "Delete that line to have the row redone.")
        row["id"] = str(row["id"])
        yield row


def check_settings(out_path: str | Path, settings: dict[str, Any]) -> None:
    """Record the settings that produce a results file beside it (`<out>.settings.json`); refuse to resume
    with different ones, saying what differs."""
    side = Path(f"{out_path}.settings.json")
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    if side.is_file():
        try:
            old = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResultsFileError(f"{side}: not valid JSON ({e}); delete it and {out_path} to start over.") from None
        diff = [f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in sorted(set(old) | set(settings))
                if old.get(k) != settings.get(k)]
        if diff:
            raise ResultsFileError(f"{out_path} holds rows made with other settings ({'; '.join(diff)}); write to "
                                   "another --out, or delete it (and its .settings.json) to start over.")
        return
    write_text(side, json.dumps(settings, indent=1, sort_keys=True) + "\n")


def _lock(f, path: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ResultsFileError(f"{path} is being written by another run right now; wait for it to finish or "
                               "write to another file.") from None


QUEUE_PER_SLOT = 4  # requests queued per decode slot in one generate call: more keeps slots busy, fewer resumes finer


def run_to_jsonl(records: Sequence[dict], out_path: str | Path, batch_size: int,
                 to_ids: Callable[[dict], list[int]], generate: Callable[[list[list[int]]], Any],
                 decode_text: Callable[[list[int]], str] | None, extra: Callable[[dict], dict] | None = None,
                 desc: str = "generate", settings: dict[str, Any] | None = None) -> dict[str, float]:
    """Generate every record not yet in out_path, in input order, appending one JSON line per record.

    Returns counts and throughput. `generate(list_of_ids)` returns a decode.GenerationOutput. With
    `settings`, a resume with other settings is refused (`check_settings`).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size}.")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise IsADirectoryError(21, "is a folder; expected a .jsonl file path", str(out_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _append_rows(records, out_path, batch_size, to_ids, generate, decode_text, extra, desc, settings)
    except OSError as e:  # a failed append (full disk) names no file: name the results file
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(out_path)) from e


def _append_rows(records, out_path: Path, batch_size, to_ids, generate, decode_text, extra, desc,
                 settings) -> dict[str, float]:
    with open(out_path, "a", encoding="utf-8") as f:
        _lock(f, out_path)
        if settings is not None:
            check_settings(out_path, settings)
        done = finished_ids(out_path)
        todo = [(r, to_ids(r)) for r in records if str(r["id"]) not in done]  # input order: the file keeps it
        stats = {"rows": 0, "tokens": 0, "seconds": 0.0, "skipped": len(records) - len(todo),
                 "first_seconds": 0.0, "first_tokens": 0}
        start = time.perf_counter()
        with tqdm(total=len(todo), desc=desc, unit="row", disable=not todo, file=sys.stderr) as bar:
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                batch = [ids for _, ids in chunk]
                out = generate(batch)  # generate(slots=...) pads a short last chunk itself
                for b, (rec, ids) in enumerate(chunk):
                    f.write(json.dumps(_record(rec, ids, out, b, decode_text, extra), allow_nan=False) + "\n")
                    stats["tokens"] += len(out.tokens[b])
                f.flush()
                os.fsync(f.fileno())
                stats["rows"] += len(chunk)
                elapsed = time.perf_counter() - start
                if i == 0:  # the first call compiles the program: its time is reported apart
                    stats["first_seconds"], stats["first_tokens"] = elapsed, stats["tokens"]
                bar.update(len(chunk))
                bar.set_postfix(tok_s=f"{stats['tokens'] / max(elapsed, 1e-9):.1f}")
    stats["seconds"] = time.perf_counter() - start
    return stats


def _record(rec: dict, ids: list[int], out: Any, b: int, decode_text, extra) -> dict:
    """One results row; a non-finite entropy (NaN weights) is written as null, keeping the line valid JSON."""
    toks = out.tokens[b]
    entropy = [round(float(e), 6) if math.isfinite(e) else None for e in out.entropy[b]]
    row = {"id": rec["id"], "prompt": rec.get("prompt"), "prompt_ids": ids, "generated_ids": toks,
           "entropy": entropy, "forced": out.forced[b],
           "reminder_steps": out.reminder_steps[b], "stop_reason": out.stop_reason[b],
           "think_tokens": out.think_tokens[b]}
    fields = extra(rec) if extra is not None else {}
    if decode_text is not None:
        text = decode_text(toks)
        # split at the run's own end marker (extra's "think_markers": [start, end], or None for a model that
        # does not think: all of it is answer); the conventional one when the caller names none
        end = fields.get("think_markers", (THINK_START, THINK_END))
        end = end[1] if end else None
        thinking, closed, answer = split_at(text, end) if end else ("", False, text)
        if not closed:
            thinking, answer = (text if end else ""), text
        row |= {"text": text, "thinking": thinking, "answer": answer}
    for key in ("kind", "reference", "category"):
        if key in rec:
            row[key] = rec[key]
    return row | fields
