"""JSON in and out of the scoring routes without stalling the event loop.

A legal request body is tens of megabytes. ``json.loads`` on it is one C call that holds the GIL for the
whole parse (about half a second for 59 MB), and a GIL held by any thread stops the event loop as surely as
running on it: ``/health`` would wait. So bodies are parsed in a worker thread *and* in steps: the
structure with the standard library's Python scanner, each string with one ``str.find`` (C, over that
string only) when it has no escapes, or the C string scanner when it does, so the GIL is given up between
values. Responses are rendered the same way, one value at a time. Both give exactly what ``json`` gives.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute

# Threads for parsing, checking and rendering bodies: the service's own, so nothing else queues with them.
_THREADS = ThreadPoolExecutor(4, thread_name_prefix="lychee-json")

_CONTROL = re.compile(r"[\x00-\x1f]")
_LONG_STRING = 1 << 20  # an escaped string longer than this is scanned in Python, chunk by chunk
_DECODE_CHUNK = 1 << 20
T = TypeVar("T")


def _scan_string(text: str, end: int, strict: bool = True) -> tuple[str, int]:
    """``json.decoder.scanstring`` that never holds the GIL for more than one string, bounded for huge ones."""
    quote = text.find('"', end)
    if quote != -1 and text.find("\\", end, quote) == -1 and not (strict and _CONTROL.search(text, end, quote)):
        return text[end:quote], quote + 1
    if quote == -1 or quote - end > _LONG_STRING:
        return json.decoder.py_scanstring(text, end, strict)  # type: ignore[attr-defined,no-any-return]
    return json.decoder.scanstring(text, end, strict)  # type: ignore[attr-defined,no-any-return]


def _decoder() -> json.JSONDecoder:
    decoder = json.JSONDecoder()
    decoder.parse_string = _scan_string  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


_DECODER = _decoder()


def parse_json(body: bytes) -> Any:
    """The JSON value of a UTF-8 body, as ``json.loads`` gives it, in steps that let other threads run.

    Raises:
        json.JSONDecodeError: Not JSON, not UTF-8, or nested too deeply.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = "".join(
            decoder.decode(body[start : start + _DECODE_CHUNK], final=start + _DECODE_CHUNK >= len(body))
            for start in range(0, max(len(body), 1), _DECODE_CHUNK)
        )
    except UnicodeDecodeError as error:
        raise json.JSONDecodeError(f"the body is not UTF-8 ({error.reason})", "", error.start) from None
    text = text.removeprefix("\ufeff")
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise json.JSONDecodeError("the JSON is nested too deeply", "", 0) from None


def render_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (as Starlette's ``JSONResponse`` renders), one value at a time."""
    return b"".join(_pieces(value))


def _pieces(value: Any) -> Any:
    if isinstance(value, dict):
        yield b"{"
        for number, (key, item) in enumerate(value.items()):
            yield (b',"' if number else b'"') + _dump(str(key))[1:]
            yield b":"
            yield from _pieces(item)
        yield b"}"
    elif isinstance(value, (list, tuple)):
        yield b"["
        for number, item in enumerate(value):
            if number:
                yield b","
            yield from _pieces(item)
        yield b"]"
    else:
        yield _dump(value)


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def json_response(body: bytes, status_code: int = 200) -> Response:
    """A JSON response from a body rendered by :func:`render_json` (off the loop)."""
    return Response(body, status_code, media_type="application/json")


async def off_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` in one of the service's body threads, awaited."""
    return await asyncio.get_running_loop().run_in_executor(_THREADS, partial(function, *args, **kwargs))


class _OffLoopJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_parsed_json"):
            self._parsed_json = await off_loop(parse_json, await self.body())
        return self._parsed_json


class OffLoopJSONRoute(APIRoute):
    """A FastAPI route whose JSON body is parsed by :func:`parse_json` in a worker thread.

    FastAPI parses a declared body with ``request.json()`` on the event loop; this route hands it a
    request whose ``json()`` does the work elsewhere. Validation, errors and the OpenAPI schema are
    FastAPI's as usual.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            return await handler(_OffLoopJSONRequest(request.scope, request.receive))

        return run
