"""Reading YAML a user gives (recipes, their ``key=value`` overrides, degradation presets) at a
cost bounded by what it holds.

``yaml.safe_load`` runs no code, but a few hundred bytes of nested anchors and aliases (the
"billion laughs": ``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ...) stand for billions of
values: each later copy, ``repr`` or dump of them takes minutes and gigabytes. Aliases are allowed
(``betas: *adam``), but the document's size with every alias expanded must stay under
:data:`MAX_VALUES`, an alias must not contain itself, the nesting must stay under
:data:`MAX_DEPTH`, and a file must be under :data:`MAX_BYTES`; anything else is a
:class:`~varestorer.errors.ConfigError` naming the source, found before anything is built
(a recipe holds a few hundred values). A key given twice in one mapping, which YAML resolves
silently to the last, is refused too.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import ConfigError

#: Values (scalars, lists, mappings) a document may hold with its aliases expanded.
MAX_VALUES = 100_000
#: Levels of nested lists and mappings.
MAX_DEPTH = 100
#: Bytes of a YAML file or override (the largest shipped recipe is 4 kB; PyYAML parses ~50 kB/s).
MAX_BYTES = 64 << 10


class _Unbounded(yaml.YAMLError):
    pass


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check(root) -> None:
    """Expanded size and depth of a composed document (each node once: linear in the text)."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    entered: set[int] = set()  # the nodes on the current path
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            entered.discard(key)
            kids = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in kids)
            depths[key] = 1 + max((depths[id(c)] for c in kids), default=0)
            if sizes[key] > MAX_VALUES:
                raise _Unbounded(
                    f"it holds more than {MAX_VALUES:,} values once its aliases (*name) are expanded "
                    f"(nested anchors, a 'billion laughs'?)"
                )
            if depths[key] > MAX_DEPTH:
                raise _Unbounded(f"it nests lists or mappings more than {MAX_DEPTH} levels deep")
            continue
        if key in sizes:
            continue
        if key in entered:
            raise _Unbounded("an alias (*name) is used inside its own anchor's value: it would never end")
        entered.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if getattr(self, "_depth", 0) > MAX_DEPTH:  # before Python's recursion limit
            raise _Unbounded(f"it nests lists or mappings more than {MAX_DEPTH} levels deep")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict = {}
        for key, _ in node.value:  # YAML keeps the last of two equal keys, silently
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                if key.value in seen:
                    raise _Unbounded(
                        f"the key {key.value!r} appears twice in one mapping (lines {seen[key.value] + 1} and "
                        f"{key.start_mark.line + 1}); only the last would count"
                    )
                seen[key.value] = key.start_mark.line
        return node

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check(node)
        return node


def safe_load(text: str, source: str, what: str = "YAML") -> object:
    """``yaml.safe_load(text)``, refusing documents unbounded once expanded (module doc); YAML syntax
    errors are raised as ``yaml.YAMLError`` for the caller to place."""
    if len(text) > MAX_BYTES:
        raise ConfigError(
            f"{source} is refused as {what}: it is {len(text) / 1024:,.0f} kB, more than {MAX_BYTES >> 10} kB"
        )
    try:
        return yaml.load(text, Loader=_Loader)
    except _Unbounded as exc:
        fix = "keep one of them" if "appears twice" in str(exc) else "write the values out"
        raise ConfigError(f"{source} is refused as {what}: {exc}; {fix}") from None
    except RecursionError:
        raise ConfigError(
            f"{source} is refused as {what}: it nests lists or mappings too deeply; write the values out"
        ) from None


def read_text(path: str | Path, what: str = "YAML file") -> str:
    """The text of a YAML file of at most :data:`MAX_BYTES` (a larger one is not a recipe or preset)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(
            f"{path} is {size / 1024:,.0f} kB, not a {what} (they are a few kB; at most {MAX_BYTES >> 10} kB "
            f"is read): pass the right file"
        )
    return path.read_text()
