"""YAML parsed with positions kept, so scenario errors can say file:line:column.

The loader builds plain Python data (dicts, lists, scalars) and, beside it, a map
from each field path to where it stands in the file. Keys of a mapping point at
the key (what a reader looks for when a key is unknown); items point at the item.

Bounded before anything is built: nesting depth and event count are checked on
the parser's event stream (a state machine, no recursion), and the values built
(aliases expanded) and each scalar's length are capped, so a "billion laughs"
file or a 100,000-deep list ends in one line, in milliseconds. Errors quote at
most a short prefix of what they found (`shorten`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

# A scenario is a few hundred lines; these bounds are far above any real one.
MAX_DEPTH = 64
MAX_EVENTS = 1_000_000
MAX_VALUES = 100_000  # values built, every alias expansion counted
MAX_SCALAR_CHARS = 10_000
SHOWN_CHARS = 40


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """At most `limit` characters of `text` for an error message, marked when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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


def _check_events(text: str) -> None:
    """Depth and size bounds on the event stream, before any node is composed."""
    depth = events = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        events += 1
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlSyntaxError(f"nested more than {MAX_DEPTH} levels deep",
                                      *_mark(event))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            raise YamlSyntaxError(
                f"a value of {len(event.value)} characters (at most {MAX_SCALAR_CHARS}):"
                f" {shorten(event.value)!r}", *_mark(event))
        if events > MAX_EVENTS:
            raise YamlSyntaxError(f"more than {MAX_EVENTS} YAML events: not a scenario",
                                  *_mark(event))


def load_positioned(text: str) -> PositionedData:
    """Parse one YAML document; raise `YamlSyntaxError` with a position if it is not YAML."""
    try:
        _check_events(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = error.problem or error.context or "not valid YAML"
        raise YamlSyntaxError(f"not valid YAML: {shorten(problem, 200)}", line, column) from None
    except yaml.YAMLError as error:
        raise YamlSyntaxError(f"not valid YAML: {shorten(str(error), 200)}", 1, 1) from None
    result = PositionedData(data=None)
    if node is None:
        return result
    constructor = yaml.SafeLoader("")
    budget = _Budget()
    result.data = _build(node, (), result.marks, constructor, budget)
    return result


class _Budget:
    """Counts the values built: aliases let a small file name a huge tree."""

    def __init__(self) -> None:
        self.left = MAX_VALUES

    def take(self, node: yaml.Node) -> None:
        self.left -= 1
        if self.left < 0:
            raise YamlSyntaxError(
                f"more than {MAX_VALUES} values once aliases are expanded (an alias bomb?)",
                *_mark(node))


def _mark(node: yaml.Node | yaml.Event) -> tuple[int, int]:
    mark = node.start_mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _build(
    node: yaml.Node, path: Path, marks: dict[Path, tuple[int, int]], constructor: yaml.SafeLoader,
    budget: _Budget,
) -> Any:
    budget.take(node)
    marks.setdefault(path, _mark(node))
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlSyntaxError("mapping keys must be plain words", *_mark(key_node))
            key = _construct(key_node, constructor)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise YamlSyntaxError("mapping keys must be plain words", *_mark(key_node))
            if key in mapping:
                raise YamlSyntaxError(f"duplicate key {shorten(repr(key))}", *_mark(key_node))
            child: Path = (*path, key if isinstance(key, str | int) else str(key))
            marks[child] = _mark(key_node)
            mapping[key] = _build(value_node, child, marks, constructor, budget)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item_node in enumerate(node.value):
            child = (*path, index)
            marks[child] = _mark(item_node)
            items.append(_build(item_node, child, marks, constructor, budget))
        return items
    return _construct(node, constructor)


def _construct(node: yaml.Node, constructor: yaml.SafeLoader) -> Any:
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError as error:
        raise YamlSyntaxError(f"not a valid value: {shorten(str(error), 200)}",
                              *_mark(node)) from None
