"""Where each key of a YAML document is, so errors can name the file's line (DESIGN §9)."""

from __future__ import annotations

from collections.abc import Mapping

import yaml

__all__ = ["key_lines", "line_for"]


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
