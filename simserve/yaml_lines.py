"""Reading YAML input files so that errors name the file and the line (DESIGN §9)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from simserve.errors import InputError

__all__ = ["key_lines", "line_for", "read_yaml_file"]


def read_yaml_file(path: str | Path, what: str) -> tuple[Any, str]:
    """The parsed document and its text; a missing, unreadable or malformed file is a one-line
    InputError naming `what` (e.g. "scenario file"), the file and, for bad YAML, the line."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"cannot read {what} ({reason})", source=source) from None
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "syntax error"
        line = mark.line + 1 if mark is not None else None
        raise InputError(f"invalid YAML: {problem}", source=source, line=line) from None


def key_lines(text: str) -> dict[str, int]:
    """Dotted paths (with [i] for list items) of a YAML document -> 1-based line numbers."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines[dotted] = key_node.start_mark.line + 1
                walk(value_node, dotted)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                dotted = f"{prefix}[{i}]"
                lines[dotted] = item.start_mark.line + 1
                walk(item, dotted)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def line_for(dotted: str, lines: Mapping[str, int]) -> int | None:
    """The line of `dotted`, or of its nearest enclosing key that the document has."""
    key = dotted
    while key:
        if key in lines:
            return lines[key]
        cut = max(key.rfind("."), key.rfind("["))
        key = key[:cut] if cut > 0 else ""
    return None
