"""The error hierarchy of vrlang.

Every mistake a user can make is reported as a :class:`VrError` subclass carrying a
stable code (``E1xx`` syntax, ``E2xx`` names/types/shapes, ``E3xx`` estimators,
``E4xx`` data, ``E5xx`` solver/run), the source span, and an optional one-line hint.
``str(err)`` renders ``file:line:col``, the offending source line and a caret under the
culprit, in the style of rustc/stanc3.  The wording of each error lives where it is
raised, through the small constructors in the checker, so golden tests pin it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Span:
    """A half-open region of source text; lines and columns are 1-based."""

    line: int
    column: int
    end_line: int
    end_column: int
    source: str | None = field(default=None, repr=False, compare=False)  # whole text, for the caret
    file: str | None = field(default=None, compare=False)

    def render(self) -> str:
        where = f"{self.file or '<source>'}:{self.line}:{self.column}"
        if self.source is None:
            return f"  --> {where}"
        lines = self.source.split("\n")  # as the parser counts lines (splitlines also breaks at \f, \r, ...)
        if not (1 <= self.line <= len(lines)):
            return f"  --> {where}"
        text = lines[self.line - 1].rstrip("\r").expandtabs(1)
        text = "".join(c if c.isprintable() else " " for c in text)  # one column per character, no line breaks
        start = max(self.column - 1, 0)
        if self.end_line == self.line and self.end_column > self.column:
            width = self.end_column - self.column
        else:
            width = max(len(text) - start, 1)
        width = max(1, min(width, max(len(text) - start, 1)))
        gutter = str(self.line)
        pad = " " * len(gutter)
        return (
            f"{pad}--> {where}\n"
            f"{pad} |\n"
            f"{gutter} | {text}\n"
            f"{pad} | {' ' * start}{'^' * width}"
        )


class VrError(Exception):
    """Base class of every error raised for a user's mistake."""

    kind = "error"

    def __init__(self, code: str, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.span = span
        self.hint = hint

    @property
    def file(self) -> str | None:
        return self.span.file if self.span else None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def with_source(self, source: str, file: str | None) -> "VrError":
        """Attach the source text (for the caret) if the span does not carry it yet."""
        if self.span is not None and self.span.source is None:
            s = self.span
            self.span = Span(s.line, s.column, s.end_line, s.end_column, source, file or s.file)
        return self

    def render(self) -> str:
        out = [f"{self.kind}[{self.code}]: {self.message}"]
        if self.span is not None:
            out.append(self.span.render())
        if self.hint:
            out.append(f"  = hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:  # pragma: no cover - exercised through render
        return self.render()

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "kind": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "file": self.file,
            "line": self.line,
            "column": self.column,
        }


class VrSyntaxError(VrError):
    """The text is not a vrlang program (E1xx)."""


class VrTypeError(VrError):
    """A name, type or shape is wrong (E2xx)."""


class VrEstimatorError(VrError):
    """An estimator or solver spec does not apply (E3xx, E5xx)."""


class VrDataError(VrError):
    """Data do not match their declarations, or cannot be read (E4xx)."""


class VrWarning:
    """A diagnostic that does not stop compilation (e.g. bias introduced by composition)."""

    kind = "warning"

    def __init__(self, code: str, message: str, span: Span | None = None, hint: str | None = None):
        self.code, self.message, self.span, self.hint = code, message, span, hint

    render = VrError.render
    to_dict = VrError.to_dict
    file = VrError.file
    line = VrError.line
    column = VrError.column

    def __str__(self) -> str:
        return self.render()
