"""YAML parsed with positions kept, so scenario errors can say file:line:column.

The loader builds plain Python data (dicts, lists, scalars) and, beside it, a map
from each field path to where it stands in the file. Keys of a mapping point at
the key (what a reader looks for when a key is unknown); items point at the item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass
class PositionedData:
    data: Any
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path) -> tuple[int, int]:
        """Line and column (1-based) of `path`, or of its nearest ancestor in the file."""
        for end in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:end]))
            if mark is not None:
                return mark
        return (1, 1)


class YamlSyntaxError(Exception):
    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def load_positioned(text: str) -> PositionedData:
    """Parse one YAML document; raise `YamlSyntaxError` with a position if it is not YAML."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = error.problem or error.context or "not valid YAML"
        raise YamlSyntaxError(f"not valid YAML: {problem}", line, column) from None
    except yaml.YAMLError as error:
        raise YamlSyntaxError(f"not valid YAML: {error}", 1, 1) from None
    result = PositionedData(data=None)
    if node is None:
        return result
    constructor = yaml.SafeLoader("")
    result.data = _build(node, (), result.marks, constructor)
    return result


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _build(
    node: yaml.Node, path: Path, marks: dict[Path, tuple[int, int]], constructor: yaml.SafeLoader
) -> Any:
    marks.setdefault(path, _mark(node))
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise YamlSyntaxError("mapping keys must be plain words", *_mark(key_node))
            if key in mapping:
                raise YamlSyntaxError(f"duplicate key {key!r}", *_mark(key_node))
            child: Path = (*path, key if isinstance(key, str | int) else str(key))
            marks[child] = _mark(key_node)
            mapping[key] = _build(value_node, child, marks, constructor)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item_node in enumerate(node.value):
            child = (*path, index)
            marks[child] = _mark(item_node)
            items.append(_build(item_node, child, marks, constructor))
        return items
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError as error:
        raise YamlSyntaxError(f"not a valid value: {error}", *_mark(node)) from None
