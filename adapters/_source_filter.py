"""Elasticsearch-style ``_source`` filtering and dotted-path lookup, on plain dicts.

The client-side rescorer fetches the fields it reranks by even when the user's ``_source`` filter leaves
them out, then filters each hit's ``_source`` as the engine would have: include and exclude patterns with
the ``*`` wildcard only (Elasticsearch's ``Regex.simpleMatch``), a pattern naming an object covering all of
it, lists of objects filtered element by element.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lychee_rerank.core.errors import InvalidInputError

__all__ = ["SourceFilter", "field_patterns", "lookup", "refuse_unknown"]


def refuse_unknown(value: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InvalidInputError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Elasticsearch's source filters know only the `*` wildcard (Regex.simpleMatch), not fnmatch's ? and [].
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def field_patterns(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise InvalidInputError(f"{where} must be a field name or a list of field names, got {value!r}")


@dataclass(frozen=True)
class SourceFilter:
    """A ``_source`` filter: off, or include and exclude patterns (``*`` wildcards, dotted paths).

    Example:
        >>> flt = SourceFilter(includes=("title", "meta.*"), excludes=("meta.secret",))
        >>> flt.apply({"title": "t", "body": "b", "meta": {"lang": "en", "secret": 1}})
        {'title': 't', 'meta': {'lang': 'en'}}
    """

    enabled: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: object) -> SourceFilter:
        """Reads a request's ``_source``: a bool, a field, a list of fields, or ``{"includes", "excludes"}``."""
        if isinstance(value, bool):
            return cls(enabled=value)
        if isinstance(value, Mapping):
            refuse_unknown(value, ("includes", "excludes", "include", "exclude"), "_source")
            return cls(
                includes=field_patterns(value.get("includes", value.get("include")), "_source.includes"),
                excludes=field_patterns(value.get("excludes", value.get("exclude")), "_source.excludes"),
            )
        return cls(includes=field_patterns(value, "_source"))

    def to_request(self) -> bool | dict[str, list[str]]:
        """The ``_source`` value to send."""
        if not self.enabled:
            return False
        request: dict[str, list[str]] = {}
        if self.includes:
            request["includes"] = list(self.includes)
        if self.excludes:
            request["excludes"] = list(self.excludes)
        return request or True

    def keeps(self, path: str) -> bool:
        """Whether the whole of the field at ``path`` comes back under this filter."""
        if not self.enabled:
            return False
        included = not self.includes or _covered(path, self.includes)
        return included and not _touched(path, self.excludes)

    def apply(self, source: Mapping[str, Any]) -> dict[str, Any]:
        """``source`` filtered as the search engine filters it."""
        return _filter_object(source, "", self.includes, self.excludes, included=not self.includes)

    def widened(self, paths: Sequence[str]) -> SourceFilter:
        """This filter, also returning the fields at ``paths`` in full."""
        if not self.enabled:
            return SourceFilter(includes=tuple(paths))
        includes = self.includes + tuple(path for path in paths if path not in self.includes) if self.includes else ()
        excludes = tuple(pattern for pattern in self.excludes if not any(_hits(pattern, p) for p in paths))
        return SourceFilter(includes=includes, excludes=excludes)


def _ancestors_and_self(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: end + 1]) for end in range(len(parts))]


def _covered(path: str, patterns: Sequence[str]) -> bool:
    # A pattern naming the field or one of its parents covers the whole field.
    return any(_pattern_regex(p).fullmatch(prefix) for p in patterns for prefix in _ancestors_and_self(path))


def _hits(pattern: str, path: str) -> bool:
    # An exclude takes something from the field if it names the field, a parent, or something inside it.
    regex = _pattern_regex(pattern)
    return any(regex.fullmatch(prefix) for prefix in _ancestors_and_self(path)) or pattern.startswith(path + ".")


def _touched(path: str, patterns: Sequence[str]) -> bool:
    return any(_hits(pattern, path) for pattern in patterns)


def _filter_object(
    value: Mapping[str, Any], prefix: str, includes: Sequence[str], excludes: Sequence[str], *, included: bool
) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, child in value.items():
        path = f"{prefix}.{key}" if prefix else key
        if any(_pattern_regex(pattern).fullmatch(path) for pattern in excludes):
            continue
        child_included = included or any(_pattern_regex(pattern).fullmatch(path) for pattern in includes)
        filtered = _filter_value(child, path, includes, excludes, included=child_included)
        if child_included or filtered not in ({}, []):
            kept[key] = filtered
    return kept


def _filter_value(value: Any, path: str, includes: Sequence[str], excludes: Sequence[str], *, included: bool) -> Any:
    if isinstance(value, Mapping):
        return _filter_object(value, path, includes, excludes, included=included)
    if isinstance(value, list):
        items = [_filter_value(item, path, includes, excludes, included=included) for item in value]
        return items if included else [item for item in items if isinstance(item, dict) and item]
    return value if included else {}


def lookup(source: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path; a flat key holding dots wins; lists of objects give a list of values."""
    if path in source:
        return source[path]
    head, _, rest = path.partition(".")
    if not rest or head not in source:
        return None
    child = source[head]
    if isinstance(child, Mapping):
        return lookup(child, rest)
    if isinstance(child, list):
        found = [lookup(item, rest) for item in child if isinstance(item, Mapping)]
        return [item for item in found if item is not None] or None
    return None
