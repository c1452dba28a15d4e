"""The one exception type that user-facing input errors raise.

The CLI turns it into a one-line message and exit code 2, so every loader (scenario YAML,
catalog YAML, trace CSV) reports bad input the same way: which file, which line or row, which
field, and what is wrong.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["InputError", "InputNotice", "InputWarning", "show_warning"]


def _printable(text: str) -> str:
    """`text` with control characters (line breaks included) escaped as Python would."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class InputError(ValueError):
    """Bad user input: names the field and, when known, the file and the line or row."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        source: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.field = field
        self.source = source
        self.line = line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """`FILE:LINE: FIELD: message`, on one line whatever the input held (a key or value
        with a line break or a control character is shown escaped)."""
        where = ""
        if self.source:
            where = f"{self.source}:{self.line}: " if self.line else f"{self.source}: "
        what = f"{self.field}: " if self.field else ""
        return _printable(f"{where}{what}{self.message}")

    def located(self, source: str | None, line: int | None) -> InputError:
        """The same error with a file/line attached (keeps an existing location)."""
        return InputError(
            self.message,
            field=self.field,
            source=self.source or source,
            line=self.line or line,
        )


class InputWarning(UserWarning):
    """Input simserve accepts but the user should know about (e.g. a scenario written by
    another simserve version); the CLI prints it as one `simserve: warning:` line."""


class InputNotice(UserWarning):
    """What simserve made of its input, worth one line but not a warning (e.g. the trace
    format it detected); the CLI prints it as one `simserve: ` line."""


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: object = None, line: str | None = None) -> None:
    """simserve's own warnings as one line; anything else as Python prints it (a
    `warnings.showwarning`, set by the CLI and in every worker process)."""
    if issubclass(category, InputNotice):
        print(f"simserve: {message}", file=sys.stderr)
    elif issubclass(category, InputWarning):
        print(f"simserve: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="",
              file=sys.stderr)
