"""Strict YAML files with line numbers: the machinery `config` and `webconfig` share.

PyYAML's node tree (not plain dicts) keeps every value's line, so each problem can be
reported as `FILE:LINE: key.path: message`. `NodeWalker` collects all problems of a
document; the typed scalar checks raise `InvalidError`, which the walker turns into one.

A file is input from anyone who can write it, so the work it can cause is bounded: at most
MAX_FILE_BYTES are read (a symlink to `/dev/zero` ends there), aliases may not expand the
tree past MAX_EXPANDED_NODES (a "billion laughs" file is refused before it is walked), and at
most MAX_PROBLEMS problems are reported, with a count of the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import yaml
from yaml.constructor import SafeConstructor

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

try:  # libyaml composes several times faster; the pure-Python loader gives the same nodes
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

_T = TypeVar("_T")

MAX_FILE_BYTES: Final = 1 << 20
"""1 MiB: about 20,000 servers of three models each, parsed in about 1.5 s of CPU."""
MAX_EXPANDED_NODES: Final = 500_000
"""Nodes of the tree with every alias expanded (a 1 MiB file without aliases has fewer)."""
MAX_PROBLEMS: Final = 100
"""Problems reported per file; the rest are counted in one last line."""
_READ_CHUNK: Final = 1 << 16


def read_text(path: str, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of the file at `path`; raises `FileReadError` naming file (and line).

    Reads at most `limit` bytes: a bigger file (or a device that never ends) is an error.
    """
    try:
        data = _read_at_most(Path(path), limit)
    except OSError as exc:
        raise FileReadError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise FileReadError(f"{path}: {what} is larger than {_size(limit)}: refusing to read it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileReadError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})"
        ) from None


def _read_at_most(path: Path, limit: int) -> bytes:
    """Up to `limit + 1` bytes of `path`, read in chunks (a FIFO or device may be endless)."""
    chunks: list[bytes] = []
    size = 0
    with path.open("rb", buffering=0) as file:
        while size <= limit:
            chunk = file.read(min(_READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def _size(count: int) -> str:
    return f"{count >> 20} MiB" if count >= 1 << 20 and not count % (1 << 20) else f"{count} bytes"


class ProblemsError(Exception):
    """A file is invalid; `errors` holds every problem as "FILE:LINE: key.path: message"."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


class FileReadError(Exception):
    """The file could not be read as text; the message is ready for the user."""


class BadYamlError(Exception):
    """The text is not YAML; `line` is where the parser gave up."""

    def __init__(self, line: int, message: str) -> None:
        self.line, self.message = line, message


class InvalidError(Exception):
    """A value check failed; the walker adds file, line and key path."""

    def __init__(self, message: str) -> None:
        self.message = message


# What YAML accepts in a stream; checked up front so that both loaders agree and report a line.
_NOT_YAML: Final = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def compose(text: str) -> yaml.Node | None:
    """The node tree of `text` (None for an empty document); raises `BadYamlError`."""
    last_line = max(1, len(text.splitlines()))
    if bad := _NOT_YAML.search(text):
        line = text.count("\n", 0, bad.start()) + 1
        message = f"invalid YAML: character U+{ord(bad.group()):04X} is not allowed"
        raise BadYamlError(line, message)
    try:
        root = yaml.compose(text, Loader=_YamlLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = min(last_line, mark.line + 1) if mark else 1
        context = f"{exc.context}, " if exc.context else ""
        raise BadYamlError(line, f"invalid YAML: {context}{exc.problem}") from None
    except yaml.YAMLError as exc:
        raise BadYamlError(1, f"invalid YAML: {exc}") from None
    except RecursionError:  # only the pure-Python composer recurses per nesting level
        raise BadYamlError(1, "invalid YAML: nested too deeply") from None
    if root is not None and expanded_size(root) > MAX_EXPANDED_NODES:
        message = (
            f"aliases expand the document to more than {MAX_EXPANDED_NODES:,} values:"
            " refusing to read it"
        )
        raise BadYamlError(1, message)
    return root


def expanded_size(root: yaml.Node, cap: int = MAX_EXPANDED_NODES) -> int:
    """Nodes in the tree of `root` with every alias expanded, counted up to just past `cap`.

    Each distinct node is measured once (aliases share node objects), without recursion,
    so even an exponential alias bomb costs time linear in the file.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            sizes[id(node)] = min(total, cap + 1)
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise BadYamlError(line_of(node), "invalid YAML: an alias refers to itself")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


@dataclass(frozen=True, slots=True)
class Opaque:
    """A node that is no plain scalar; `what` describes it for messages."""

    what: str


Scalar = str | int | float | bool | None | Opaque
_CONSTRUCTOR: Final = SafeConstructor()
_CONSTRUCT: Final[dict[str, Callable[[yaml.ScalarNode], Scalar]]] = {
    "tag:yaml.org,2002:str": _CONSTRUCTOR.construct_yaml_str,
    "tag:yaml.org,2002:int": _CONSTRUCTOR.construct_yaml_int,
    "tag:yaml.org,2002:float": _CONSTRUCTOR.construct_yaml_float,
    "tag:yaml.org,2002:bool": _CONSTRUCTOR.construct_yaml_bool,
    "tag:yaml.org,2002:null": _CONSTRUCTOR.construct_yaml_null,
}


def scalar(node: yaml.Node) -> Scalar:
    """The Python value of a scalar with a core tag (YAML 1.1 resolution, as PyYAML does)."""
    if isinstance(node, yaml.SequenceNode):
        return Opaque("a list" if node.value else "an empty list")
    if isinstance(node, yaml.MappingNode):
        return Opaque("a mapping")
    construct = _CONSTRUCT.get(node.tag)
    if construct is None or not isinstance(node, yaml.ScalarNode):
        return Opaque(f"a value tagged {node.tag}")
    try:
        return construct(node)
    except (ValueError, KeyError, IndexError):  # explicit tags on bad text, e.g. `!!int x`
        return Opaque(f"an invalid {node.tag.rpartition(':')[2]}")


def describe(node: yaml.Node) -> str:
    """A value for messages: `string "x"`, `integer 5`, `a list`, `null`."""
    value = scalar(node)
    if isinstance(value, Opaque):
        return value.what
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"string {quote(value)}"
    return f"{kind_of(value)} {node.value}"


def kind_of(value: Scalar) -> str:
    """The type of a value, for messages that must not show the value itself."""
    if isinstance(value, Opaque):
        return value.what
    kinds = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "null")


def quote(text: str) -> str:
    """Double-quoted and escaped, shortened: error messages stay one readable line."""
    short = text if len(text) <= 60 else text[:57] + "..."
    return json.dumps(short, ensure_ascii=False)


def string(node: yaml.Node) -> str:
    """A YAML string (not a number or boolean that looks like one)."""
    value = scalar(node)
    if not isinstance(value, str):
        raise InvalidError(f"expected a string, got {describe(node)}")
    return value


def boolean(node: yaml.Node) -> bool:
    """A real YAML boolean; quoted "false" is a string, and an error."""
    value = scalar(node)
    if not isinstance(value, bool):
        raise InvalidError(f"expected true or false, got {describe(node)}")
    return value


def line_of(node: yaml.Node) -> int:
    """The 1-based line where `node` starts."""
    return int(node.start_mark.line) + 1


def join_path(path: str, key: str) -> str:
    """`servers[0]` + `url` -> `servers[0].url`."""
    return f"{path}.{key}" if path else key


UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class NodeWalker:
    """Walks the node tree of one document, collecting (line, message) problems."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[tuple[int, str]] = []
        """The first MAX_PROBLEMS problems found, as (line, message)."""
        self.more = 0
        """Problems found past MAX_PROBLEMS (counted, not kept)."""

    def messages(self) -> list[str]:
        """The kept problems sorted by line, plus one line counting the ones left out."""
        messages = [message for _, message in sorted(self.problems, key=lambda p: p[0])]
        if self.more:
            messages.append(
                f"{self.source}: ... and {self.more:,} more problems"
                f" (only the first {MAX_PROBLEMS} are shown)"
            )
        return messages

    def format(self, line: int, path: str, message: str) -> str:
        """`FILE:LINE: key.path: message`, control characters escaped (one line per problem)."""
        where = f"{path}: " if path else ""
        text = f"{self.source}:{line}: {where}{message}"
        return UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)

    def error(self, node: yaml.Node | int, path: str, message: str) -> None:
        """Record a problem at `node` (or at a line number)."""
        if len(self.problems) >= MAX_PROBLEMS:
            self.more += 1
            return
        line = node if isinstance(node, int) else line_of(node)
        self.problems.append((line, self.format(line, path, message)))

    def check(
        self, node: yaml.Node, path: str, parse: Callable[[yaml.Node], _T], default: _T
    ) -> _T:
        """`parse(node)`, or `default` after reporting why it failed."""
        try:
            return parse(node)
        except InvalidError as exc:
            self.error(node, path, exc.message)
            return default

    def mapping(self, node: yaml.Node, path: str, keys: Collection[str]) -> dict[str, yaml.Node]:
        """The values of a mapping node by key, after reporting bad, repeated and unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            expected = f"a mapping with keys {', '.join(keys)}"
            self.error(node, path, f"expected {expected}, got {describe(node)}")
            return {}
        found: dict[str, yaml.Node] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = scalar(key_node)
            if key_node.tag.endswith(":merge"):
                self.error(key_node, join_path(path, "<<"), "merge keys are not supported")
            elif not isinstance(key, str):
                self.error(key_node, path, f"keys must be strings, got {describe(key_node)}")
            elif key in first_line:
                message = f"duplicate key (first on line {first_line[key]})"
                self.error(key_node, join_path(path, key), message)
            elif key not in keys:
                first_line[key] = line_of(key_node)
                import difflib  # noqa: PLC0415 - a misspelt key only: 0.1 MiB a valid config spares

                close = difflib.get_close_matches(key, keys, n=1)
                hint = f'did you mean "{close[0]}"?' if close else f"allowed: {', '.join(keys)}"
                self.error(key_node, join_path(path, key), f"unknown key ({hint})")
            else:
                first_line[key] = line_of(key_node)
                found[key] = value_node
        return found
