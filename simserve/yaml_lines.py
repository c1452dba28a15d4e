"""Reading YAML input files safely, so that errors name the file and the line (DESIGN §9).

Every input YAML (scenario, sweep spec, evaluation, catalog, links, profile, `--set` values) is
read here, with the same guards:

- files over `MAX_YAML_BYTES` are refused before they are read;
- documents whose aliases expand to more than `MAX_YAML_VALUES` values are refused after
  composing and before anything walks or copies them (a 1 KB "billion laughs" file otherwise
  grows to gigabytes in the line walker, in copies and in validation), as are documents nested
  past the parser's recursion;
- a key repeated in one mapping is refused naming both lines (PyYAML keeps the last one
  silently, so a repeated `grid:` would drop a sweep axis);
- numbers follow YAML 1.2: `1e308` and `1.0e5` are floats (YAML 1.1, PyYAML's default, reads
  them as strings).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from simserve.errors import InputError
from simserve.formatting import fmt_number

__all__ = [
    "MAX_YAML_BYTES",
    "MAX_YAML_VALUES",
    "YamlSyntaxError",
    "compose_yaml",
    "key_lines",
    "line_for",
    "parse_yaml",
    "read_yaml_file",
    "read_yaml_text",
]

# NOTE: the largest shipped input YAML is a calibration profile of a few KB; a scenario, spec or
# catalog a person writes is far below both bounds.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
_MERGE_KEY = "tag:yaml.org,2002:merge"


class YamlSyntaxError(InputError):
    """Text that is not YAML at all (as opposed to YAML simserve refuses)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (an exponent needs no dot or sign)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def _yaml_error(exc: yaml.YAMLError, source: str | None) -> YamlSyntaxError:
    if isinstance(exc, yaml.reader.ReaderError):
        character = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return YamlSyntaxError(f"invalid YAML: character {character!r} is not allowed (at "
                               f"character {exc.position})", source=source)
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    line = mark.line + 1 if mark is not None else None
    return YamlSyntaxError(f"invalid YAML: {problem}", source=source, line=line)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node, source: str | None) -> int:
    """How many values the document has with every alias expanded (each distinct node is
    visited once: an alias reuses its node, so memoising by identity keeps this linear)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the path from the root to the node being expanded
    # Iterative post-order walk: a node's size is 1 + its children's sizes.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            open_nodes.add(id(node))
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise InputError("a YAML alias refers to a node that contains it",
                                     source=source, line=child.start_mark.line + 1)
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        open_nodes.discard(id(node))
        size = 1 + sum(sizes[id(c)] for c in children)
        sizes[id(node)] = size
        if size > MAX_YAML_VALUES:
            raise InputError(
                f"YAML aliases expand to more than {fmt_number(MAX_YAML_VALUES)} values; "
                "refusing it (an alias bomb?)", source=source, line=node.start_mark.line + 1,
            )
    return sizes[id(root)]


def _check_duplicate_keys(root: yaml.Node, source: str | None) -> None:
    """Refuse a key written twice in one mapping (merge keys `<<` aside)."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                stack.extend((key_node, value_node))
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_KEY:
                    continue
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise InputError(
                        f"duplicate key {key_node.value!r} (lines {first_line[key]} and "
                        f"{line}); YAML keeps only one of them", source=source, line=line,
                    )
                first_line[key] = line
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


@contextlib.contextmanager
def _input_errors(source: str | None) -> Iterator[None]:
    """A YAML error or a document nested past Python's recursion limit, as a one-line
    `InputError`."""
    try:
        yield
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except RecursionError:
        raise InputError("YAML nested too deeply", source=source) from None


def compose_yaml(text: str, source: str | None = None) -> yaml.Node | None:
    """The checked node tree of one YAML document (None for an empty one); a syntax error,
    an oversized or alias-bombed document, or a duplicate key is a one-line `InputError`."""
    if len(text) > MAX_YAML_BYTES:
        raise InputError(f"YAML text larger than {MAX_YAML_BYTES // 1024} KiB; refusing it",
                         source=source)
    try:
        loader = _Loader(text)  # checks the characters first
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    try:
        with _input_errors(source):
            root = loader.get_single_node()
    finally:
        loader.dispose()
    if root is not None:
        _expanded_size(root, source)
        _check_duplicate_keys(root, source)
    return root


def parse_yaml(text: str, source: str | None = None) -> tuple[Any, yaml.Node | None]:
    """The Python data of one checked YAML document and its node tree (for line numbers)."""
    # NOTE: experiments load one scenario file hundreds of times; a document is parsed once
    # per process and each caller gets its own copy of the data (callers edit it).
    data, root = _parsed(text, source)
    return copy.deepcopy(data), root


@functools.lru_cache(maxsize=32)
def _parsed(text: str, source: str | None) -> tuple[Any, yaml.Node | None]:
    root = compose_yaml(text, source)
    if root is None:
        return None, None
    loader = _Loader("")
    try:
        with _input_errors(source):
            return loader.construct_document(root), root
    finally:
        loader.dispose()


def read_yaml_text(path: str | Path, what: str) -> str:
    """The text of an input YAML file; missing, unreadable, not UTF-8 or over `MAX_YAML_BYTES`
    is a one-line `InputError` naming `what` and the file (checked before reading it)."""
    source = str(path)
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise InputError(f"{what} is a directory, not a YAML file", source=source)
        if size > MAX_YAML_BYTES:
            raise InputError(f"{what} is {fmt_number(size)} bytes, more than the "
                             f"{MAX_YAML_BYTES // 1024} KiB an input YAML may have",
                             source=source)
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InputError(f"cannot read {what} ({reason})", source=source) from None


def read_yaml_file(path: str | Path, what: str) -> tuple[Any, str]:
    """The parsed document and its text; a missing, unreadable, oversized or malformed file is
    a one-line InputError naming `what` (e.g. "scenario file"), the file and, where there is
    one, the line."""
    text = read_yaml_text(path, what)
    data, _root = parse_yaml(text, str(path))
    return data, text


def key_lines(text: str) -> dict[str, int]:
    """Dotted paths (with [i] for list items) of a YAML document -> 1-based line numbers."""
    return dict(_key_lines(text))


@functools.lru_cache(maxsize=32)
def _key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    try:
        root = compose_yaml(text)
    except InputError:
        return lines
    if root is None:
        return lines
    # Aliases are followed (bounded by compose_yaml), so an aliased section has its lines.
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines.setdefault(dotted, key_node.start_mark.line + 1)
                stack.append((value_node, dotted))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                dotted = f"{prefix}[{i}]"
                lines.setdefault(dotted, item.start_mark.line + 1)
                stack.append((item, dotted))
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
