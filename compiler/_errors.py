"""Compile errors: every problem of a definition, with where and what to do."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runtime import CronstackError

__all__ = ("Diagnostic", "CompileError", "did_you_mean")


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem: the file, the JSON path, the message and an optional hint.

    ``column`` is the 1-based column inside the expression text at ``path``
    when the problem is in an expression.
    """

    message: str
    path: str = ""
    file: str | None = None
    column: int | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.file, self.path) if p)
        text = self.message
        if self.column is not None:
            text += f" (column {self.column})"
        if self.hint:
            text += f"; {self.hint}"
        return f"{where}: {text}" if where else text


class CompileError(CronstackError):
    """A definition or expression does not compile; lists every problem found."""

    error_type = "CompileError"

    def __init__(self, diagnostics: Iterable[Diagnostic] | Diagnostic | str) -> None:
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    def with_file(self, file: str) -> CompileError:
        """The same problems, located in ``file``."""
        return CompileError(
            Diagnostic(d.message, d.path, d.file or file, d.column, d.hint) for d in self.diagnostics
        )

    def at(self, path: str) -> CompileError:
        """The same problems, located under JSON path ``path`` when they have none."""
        return CompileError(
            Diagnostic(d.message, d.path or path, d.file, d.column, d.hint) for d in self.diagnostics
        )


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A "did you mean 'x'?" hint for the nearest candidate, if any is close."""
    import difflib

    match = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None
