"""YAML from users, parsed safely and within limits.

Only plain data is built (safe loading: no Python objects). Three limits keep
a hostile document cheap to refuse:
- size: at most MAX_BYTES are read;
- aliases: a "billion laughs" document is tiny but expands exponentially when
  its aliases are followed. While composing we add up how many bytes each alias
  stands for (its scalars' text, plus NODE_BYTES for every node, so empty
  values count too) and stop past MAX_ALIAS_BYTES, long before anything walks
  or prints the expanded data. Bytes, not nodes: a few aliases of a long string
  are few nodes but many megabytes once printed;
- depth: nesting deeper than MAX_DEPTH is refused (it would exhaust the stack).
Duplicate keys are refused too: YAML parsers keep the last one silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from ocho.errors import OchoError

MAX_BYTES = 1024 * 1024
MAX_ALIAS_BYTES = 1024 * 1024
NODE_BYTES = 2
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlProblem(OchoError):
    """The text is not acceptable YAML; `line` and `column` are 1-based when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{message}")
        self.line = line
        self.column = column


class _BoundedComposer(Composer):
    """pyyaml's composer, counting what aliases expand to and how deep nodes nest."""

    def __init__(self) -> None:
        super().__init__()
        self._weights: dict[int, int] = {}  # id(node) -> its bytes with aliases expanded
        self._alias_bytes = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                weight = self._weights.get(id(target))
                if weight is None:
                    raise ComposerError(None, None, f"alias *{event.anchor} refers to a node "
                                        "that contains it (recursive data)", event.start_mark)
                self._alias_bytes += weight
                if self._alias_bytes > MAX_ALIAS_BYTES:
                    raise ComposerError(None, None, f"aliases expand to more than "
                                        f"{MAX_ALIAS_BYTES // 1024} KiB (a 'billion laughs' "
                                        "document?)", event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ComposerError(None, None, f"data is nested more than {MAX_DEPTH} levels deep",
                                self.peek_event().start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._weights[id(node)] = _own_bytes(node) + sum(
            self._weights.get(id(child), NODE_BYTES) for child in _children(node))
        return node

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                if (key.tag, key.value) in seen:
                    raise ComposerError("while reading a mapping", node.start_mark,
                                        f"found duplicate key {key.value!r}", key.start_mark)
                seen.add((key.tag, key.value))
        return node


def _own_bytes(node: Node) -> int:
    if isinstance(node, ScalarNode):
        return NODE_BYTES + len(node.value)
    return NODE_BYTES


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


try:  # libyaml's parser when present (faster), our composer either way
    from yaml.cyaml import CParser as _Parser

    class _Loader(_BoundedComposer, _Parser, SafeConstructor, Resolver):  # type: ignore[misc]
        def __init__(self, text: str) -> None:
            _Parser.__init__(self, text)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

except ImportError:  # pragma: no cover - pyyaml built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, _BoundedComposer, SafeConstructor,  # type: ignore[no-redef]
                  Resolver):
        def __init__(self, text: str) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


def loads(data: str | bytes) -> Any:
    """Parse one YAML document of plain data; raise YamlProblem with line and column."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise YamlProblem(f"is larger than {MAX_BYTES // 1024} KiB")
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise YamlProblem(f"is not UTF-8 text (bad byte at offset {exc.start})") from None
    elif len(data.encode()) > MAX_BYTES:
        raise YamlProblem(f"is larger than {MAX_BYTES // 1024} KiB")
    loader = _Loader(data)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        if mark is None:
            raise YamlProblem(problem) from None
        raise YamlProblem(problem, mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(" ".join(str(exc).split())) from None
    except RecursionError:
        raise YamlProblem(f"data is nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def load_file(path: str | Path) -> Any:
    """Read and parse a YAML file, reading no more than MAX_BYTES (+1 to notice more)."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise YamlProblem("no such file") from None
    except IsADirectoryError:
        raise YamlProblem("is a directory, not a YAML file") from None
    except OSError as exc:
        raise YamlProblem(f"cannot be read: {exc.strerror}") from None
    return loads(data)
