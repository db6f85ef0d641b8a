"""Bounded YAML loading for every table the adapter reads: mapping tables (shipped and ``--mappings``),
site settings, and the protocol and dosing files.

YAML is data a site writes, so loading it must stay cheap whatever the file says:

- **no aliases**: an alias (``*name``) is refused wherever it appears. A "billion laughs" file nests
  aliases so that a few hundred bytes expand to billions of strings as soon as anything walks
  the result; refusing aliases makes that impossible, and no table needs them;
- **bounded size** (``MAX_BYTES``) and nesting (libyaml stops at 1000 levels; a deeper document is
  an error, never a crash);
- **no duplicate keys**: YAML silently keeps the last of two equal keys; here it is an error,
  because a site's second ``neutrophils:`` entry would silently replace its first;
- errors are **one line**, naming the file, the line and the column (pyyaml's own messages span
  several lines with carets).

Every load also returns the SHA-256 of the bytes it parsed (:class:`SourceFile`), so that the
rule-set digest (adapter.ruleset) names exactly what was read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from adapter.errors import MappingTableError

MAX_BYTES = 8 * 1024 * 1024  # no table comes near 1 MiB; a larger file is not a table
Origin = Literal["protocol", "shipped", "site", "settings"]

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present (fast start-up)


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file that shaped a decision: its base name (never a directory: paths can carry user names),
    the SHA-256 of its bytes (hex), and where it comes from."""

    file: str
    sha256: str
    origin: Origin

    def as_json(self) -> dict[str, str]:
        return {"file": self.file, "sha256": self.sha256[:16], "origin": self.origin}


class _BoundedLoader(_Base):  # type: ignore[misc]
    """The safe loader, refusing duplicate mapping keys (aliases are refused on the node graph)."""

    def construct_mapping(self, node: Node, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: the base constructor reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_short(key)}", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _refuse_aliases(root: Node) -> None:
    """The composed graph is a tree unless an alias points back at an anchored node: refuse any
    node reached twice (iteratively, so that depth costs no stack)."""
    seen: set[int] = set()
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise yaml.composer.ComposerError(
                None,
                None,
                "anchors and aliases (&name, *name) are not allowed; write the value out",
                node.start_mark,
            )
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)


def one_line(exc: yaml.YAMLError) -> str:
    """A pyyaml error as one line: "line L, column C: <problem> (<context>)", without snippets."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context}, {_where(exc.context_mark)})" if exc.problem and exc.context else ""
        text = f"{_where(mark)}: {problem}{context}" if mark is not None else f"{problem}{context}"
    elif isinstance(exc, yaml.reader.ReaderError):
        text = f"character {exc.position + 1}: {str(exc).splitlines()[0]}"
    else:
        text = str(exc)
    return " ".join(text.split())


def parse_yaml(text: str) -> Any:
    """Parse one YAML document with the bounds above (raises yaml.YAMLError)."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_aliases(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path, origin: Origin) -> tuple[Any, SourceFile]:
    """The parsed document in ``path`` and what was read; MappingTableError (one line) otherwise."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise MappingTableError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > MAX_BYTES:
        raise MappingTableError(f"{path}: larger than {MAX_BYTES // (1024 * 1024)} MiB; not a table")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MappingTableError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise MappingTableError(f"{path}: not valid YAML: {one_line(exc)}") from None
    except RecursionError:  # only without libyaml, whose parser stops at 1000 levels itself
        raise MappingTableError(f"{path}: not valid YAML: nested too deeply") from None
    return data, SourceFile(path.name, hashlib.sha256(raw).hexdigest(), origin)
