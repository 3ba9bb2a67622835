"""Loading a project: every definition file of a folder, or a list of dicts.

Problems from all files are gathered into one ``CompileError`` so that a user
fixes them in one pass. Calls between definitions are checked here, where all
names are known.

Loading allocates many objects that all live on (the compiled definitions),
which is the worst case for the cyclic garbage collector: it would scan the
growing heap again and again and find nothing to free. It is paused for the
duration of a load (docs/internals.md, "Compile speed").
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from compiler._definitions import Function, Task, compile_definition
from compiler._errors import CompileError, Diagnostic, did_you_mean

__all__ = ("Definitions", "load_definitions", "load_what_compiles", "decode_json_file", "check_calls")

_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".hypothesis"}
#: the largest definition file accepted (bytes); larger is almost surely a mistake
MAX_DEFINITION_BYTES = 5 * 1024 * 1024
_decoder = msgspec.json.Decoder()


@dataclass(slots=True)
class Definitions:
    """Compiled tasks and functions by name."""

    tasks: dict[str, Task] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)

    def add(self, item: Task | Function, diags: list[Diagnostic]) -> None:
        for table in (self.tasks, self.functions):
            other = table.get(item.name)
            if other is not None:
                diags.append(
                    Diagnostic(
                        f"the name '{item.name}' is already used by {other.file or 'another definition'}",
                        "name",
                        item.file,
                        hint="names must be unique across tasks and functions",
                    )
                )
                return
        (self.functions if isinstance(item, Function) else self.tasks)[item.name] = item


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    before = data[:offset]
    line = before.count(b"\n") + 1
    return line, offset - (before.rfind(b"\n") + 1) + 1


def decode_json_file(path: str | os.PathLike[str], shown: str) -> Any:
    """Read and decode one JSON file, or raise a CompileError saying where it is malformed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CompileError(Diagnostic(f"cannot read the file: {exc.strerror}", file=shown)) from exc
    if len(data) > MAX_DEFINITION_BYTES:
        raise CompileError(
            Diagnostic(f"the file is {len(data)} bytes; definitions are limited to {MAX_DEFINITION_BYTES}", file=shown)
        )
    if data.startswith(_BOM):  # some editors write one; JSON allows a reader to ignore it (RFC 8259, 8.1)
        data = data[len(_BOM) :]
    try:
        value = _decoder.decode(data)
    except RecursionError:
        raise CompileError(
            Diagnostic("the JSON nests too deeply to be a definition", "", shown, hint="flatten the file")
        ) from None
    except (UnicodeDecodeError, msgspec.DecodeError) as exc:
        # msgspec up to 0.22 raised UnicodeDecodeError for bad UTF-8 and 0.23
        # raises DecodeError without a position, so check the bytes ourselves
        if not _is_utf8(data):
            raise _not_utf8(data, shown) from None
        if isinstance(exc, msgspec.ValidationError) and "out of range" in str(exc):
            raise _number_too_big(data, shown) from None
        msg = str(exc)
        where = ""
        if "(byte " in msg:
            try:
                offset = int(msg.rsplit("(byte ", 1)[1].rstrip(")"))
                line, col = _line_col(data, offset)
                msg = msg.rsplit(" (byte ", 1)[0]
                where = f"line {line}, column {col}"
            except ValueError:
                pass
        elif "truncated" in msg:
            line, col = _line_col(data, len(data))
            where = f"line {line}, column {col} (the end of the file)"
            msg = "the file ends before the JSON does"
        raise CompileError(
            Diagnostic(f"invalid JSON: {msg}", where, shown, hint="definitions are plain JSON: no comments, no trailing commas")
        ) from None
    try:
        json.loads(data, object_pairs_hook=_unique_keys)
    except _DuplicateKey as dup:
        raise CompileError(_duplicate(data, dup.key, shown)) from None
    except RecursionError:  # json recurses deeper per level than msgspec
        raise CompileError(
            Diagnostic("the JSON nests too deeply to be a definition", "", shown, hint="flatten the file")
        ) from None
    return value


_BOM = b"\xef\xbb\xbf"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _not_utf8(data: bytes, shown: str) -> CompileError:
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        where = f"line {line}, column {col}"
    return CompileError(
        Diagnostic("the file is not valid UTF-8", where, shown, hint="save the file as UTF-8 (without a byte-order mark)")
    )


#: a JSON string (skipped whole, so digits inside it are not numbers) or a JSON number
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?')


def _number_too_big(data: bytes, shown: str) -> CompileError:
    """Name the number msgspec could not hold (its own message has no position)."""
    where, number, limit = "", "a number", sys.get_int_max_str_digits()  # 0: no limit
    for m in _TOKEN.finditer(data):
        token = m.group()
        if token[:1] == b'"':
            continue
        digits = token.lstrip(b"-")
        too_big = 0 < limit < len(digits) if digits.isdigit() else math.isinf(float(token))
        if too_big:
            line, col = _line_col(data, m.start())
            where = f"line {line}, column {col}"
            number = token.decode() if len(token) <= 40 else f"{token[:20].decode()}... ({len(token)} characters)"
            break
    return CompileError(
        Diagnostic(
            f"the number {number} is too large: a fraction or exponent must fit a 64-bit float "
            f"(about 1.8e308)" + (f" and a whole number {limit:,} digits" if limit else ""),
            where,
            shown,
            hint="write it as a string if it is an identifier, or use a smaller number",
        )
    )


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s object hook: a key given twice in one object is refused, not silently the last."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def _duplicate(data: bytes, key: str, shown: str) -> Diagnostic:
    """The message for a key given twice, with the lines where the key appears (the JSON
    decoder does not tell which object: with few occurrences, the lines point at it)."""
    tokens = {json.dumps(key).encode(), json.dumps(key, ensure_ascii=False).encode()}  # escaped or not
    pattern = b"(?:" + b"|".join(map(re.escape, tokens)) + rb")\s*:"
    lines = sorted({_line_col(data, m.start())[0] for m in re.finditer(pattern, data)})
    where = "" if not lines or len(lines) > 6 else f"line {lines[0]}" if len(lines) == 1 else (
        f"lines {', '.join(map(str, lines))}")
    return Diagnostic(
        f"the key '{key}' is given twice in one JSON object: all but its last value would be lost",
        where,
        shown,
        hint="keep one of them",
    )


def project_files(root: str) -> Iterable[tuple[str, str]]:
    """``(path, path shown in messages)`` of every definition file below ``root``, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        rel = dirpath[len(root) :].lstrip(os.sep)
        for name in sorted(filenames):
            if name.endswith(".json"):
                yield os.path.join(dirpath, name), (os.path.join(rel, name) if rel else name)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (reference counting still frees)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_calls(defs: Definitions, known: Iterable[str] = ()) -> list[Diagnostic]:
    """Calls of functions that no definition (nor ``known``) provides."""
    names = set(defs.functions) | set(known)
    diags = []
    for item in [*defs.tasks.values(), *defs.functions.values()]:
        for name, path in item.calls:
            if name not in names:
                diags.append(
                    Diagnostic(
                        f"calls the function '{name}', which is not defined",
                        path,
                        item.file,
                        hint=did_you_mean(name, names) or "add a function file with that name, or register a Python function",
                    )
                )
    return diags


def load_definitions(source: str | os.PathLike[str] | Iterable[dict[str, Any]]) -> Definitions:
    """Compile a project folder (every ``*.json`` below it) or a list of definition dicts."""
    defs, diags, _ = load_what_compiles(source)
    if diags:
        raise CompileError(diags)
    return defs


def load_what_compiles(
    source: str | os.PathLike[str] | Iterable[dict[str, Any]],
) -> tuple[Definitions, list[Diagnostic], set[str]]:
    """The definitions that compile, every problem found, and the names of those that did not.

    ``load_definitions`` refuses the whole project when one file fails;
    ``cronstack check`` uses this to go on checking the files that are fine.
    """
    with _gc_paused():
        return _compile_all(source)


def _compile_all(
    source: str | os.PathLike[str] | Iterable[dict[str, Any]],
) -> tuple[Definitions, list[Diagnostic], set[str]]:
    defs = Definitions()
    diags: list[Diagnostic] = []
    failed: set[str] = set()
    if isinstance(source, str | os.PathLike):
        root = Path(source)
        if not root.is_dir():
            return defs, [Diagnostic(f"'{root}' is not a folder of definitions", file=str(root))], failed
        items = []
        for path, shown in project_files(str(root)):
            try:
                items.append((decode_json_file(path, shown), shown))
            except CompileError as exc:
                diags.extend(exc.diagnostics)
    else:
        items = [(raw, f"definitions[{i}]") for i, raw in enumerate(source)]
    for raw, shown in items:
        try:
            defs.add(compile_definition(raw, shown), diags)
        except CompileError as exc:
            diags.extend(exc.diagnostics)
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                failed.add(raw["name"])
    return defs, diags, failed
