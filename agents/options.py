"""Training settings as command-line options: one `--option` per `TrainConfig` field.

The help text of each option is the docstring under its dataclass field (read from
the source, as tyro does), and options not given take the algorithm's own defaults
(`ALGORITHMS[algo].defaults`) before `TrainConfig`'s. `cyberdial train`, `evaluate`
and `compare --option` read settings through here.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import textwrap
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from cyberdial.agents.training import (
    ALGORITHMS,
    TARGET_UPDATE_UNITS,
    ConfigError,
    TrainConfig,
    config_for,
)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field, read from the source (as tyro does)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def add_config_arguments(parser: Any, cls: type = TrainConfig) -> None:
    """One `--option` per dataclass field; its docstring is the help text.

    Options not given stay out of the parsed namespace (`argparse.SUPPRESS`), so
    `config_from_args` can tell them apart and fill in the algorithm's own defaults.
    """
    docs = field_docs(cls)
    defaults = cls()
    for item in fields(cls):
        option = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        help_text = docs.get(item.name, "")
        kind = str(item.type)
        if kind == "bool":
            if default:
                parser.add_argument(f"--no-{item.name.replace('_', '-')}", dest=item.name,
                                    action="store_false", default=argparse.SUPPRESS,
                                    help=help_text)
            else:
                parser.add_argument(option, dest=item.name, action="store_true",
                                    default=argparse.SUPPRESS, help=help_text)
            continue
        if kind.startswith("int"):
            converter: Callable[[str], Any] = int
        elif kind.startswith("float"):
            converter = float
        else:
            converter = str
        extra: dict[str, Any] = {}
        if item.name == "algo":
            extra["choices"] = sorted(ALGORITHMS)
        if item.name == "target_update_unit":
            extra["choices"] = TARGET_UPDATE_UNITS
        # None is "as the scenario says" for a game setting, "none" for the others.
        shown = str(default) if default is not None else (
            "the scenario's" if item.name == "message_bits" else "none")
        if cls is TrainConfig:
            own = [f"{name}: {spec.defaults[item.name]}" for name, spec in ALGORITHMS.items()
                   if item.name in spec.defaults]
            shown = "; ".join([shown, *own])
        if "(default:" not in help_text:  # a docstring that says its default keeps it
            help_text = f"{help_text} (default: {shown})"
        parser.add_argument(option, dest=item.name, type=converter, default=argparse.SUPPRESS,
                            help=help_text, **extra)


def config_from_args(args: Any, cls: type = TrainConfig) -> Any:
    """The config the options ask for; options not given take the algorithm's defaults."""
    given = {item.name: getattr(args, item.name) for item in fields(cls)
             if hasattr(args, item.name)}
    if cls is TrainConfig:
        return config_for(given.pop("algo", TrainConfig().algo), **given)
    return cls(**given)


def parse_setting(name: str, raw: str) -> Any:
    """A `TrainConfig` field's value from text, by the field's type (for `compare --option`)."""
    kinds = {item.name: str(item.type) for item in fields(TrainConfig)}
    if name not in kinds:
        raise ConfigError(f"unknown setting {name!r} (see `cyberdial train --help`)")
    kind = kinds[name]
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if "None" in kind and raw.lower() == "none":
            return None
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        wanted = ("true or false" if kind == "bool" else "an integer" if kind.startswith("int")
                  else "a number")
        raise ConfigError(f"{name} takes {wanted}, not {raw[:40]!r}") from None
    return raw
