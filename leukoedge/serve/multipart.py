"""Multipart request bodies parsed in memory, with limits; nothing is written to disk.

The body has already been read into memory by the caller (at most the request-size limit).
It is parsed with python-multipart's streaming parser and callbacks of our own that append
each part to a ``bytearray``: there is no temporary file to spool to, at any size (the
framework's own form parser spools parts over 1 MiB to a temporary file, so it is not
used). Limits: at most ``max_images`` file parts, at most ``max_fields`` other parts, and
the multipart must be complete (a body cut short is refused, not read as fewer images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from ..errors import RequestError, first_line

# python-multipart logs each malformed body as a warning; the client gets the reason in
# its 400 answer, and the server's log is no place for what strangers send
_log = logging.getLogger("python_multipart")
_log.addHandler(logging.NullHandler())
_log.propagate = False

#: headers of one part we keep, and the longest header we accept (bytes)
MAX_HEADER_BYTES = 8192


@dataclass
class Part:
    name: str  # the form field's name
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


def boundary_of(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise RequestError(415, "send the images as multipart/form-data "
                                    "(e.g. curl -F image=@cell.bmp)")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise RequestError(400, "the multipart Content-Type has no valid boundary")
    return boundary


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Collector:
    def __init__(self, max_images: int, max_fields: int) -> None:
        self.max_images = max_images
        self.max_fields = max_fields
        self.parts: list[Part] = []
        self.files = 0
        self.fields = 0
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._current: Part | None = None

    def on_part_begin(self) -> None:
        self._disposition = None
        self._current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._check_header()

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self._header_name) + len(self._header_value) > MAX_HEADER_BYTES:
            raise RequestError(400, "a multipart part header is too long")

    def on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        kind, options = parse_options_header(self._disposition)
        if kind != b"form-data" or b"name" not in options:
            raise RequestError(400, "a multipart part has no Content-Disposition "
                                        "form-data name")
        if b"filename" in options:
            self.files += 1
            if self.files > self.max_images:
                raise RequestError(413, f"too many images in one request (the limit is "
                                            f"{self.max_images}; send several requests)")
            filename: str | None = _text(options[b"filename"])
        else:
            self.fields += 1
            if self.fields > self.max_fields:
                raise RequestError(400, f"too many form fields (the limit is "
                                            f"{self.max_fields}; images are file parts)")
            filename = None
        self._current = Part(_text(options[b"name"]), filename)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current.data += data[start:end]

    def on_part_end(self) -> None:
        if self._current is not None:
            self.parts.append(self._current)
        self._current = None

    def on_end(self) -> None:
        self.ended = True


def parse(body: bytes, content_type: str, max_images: int, max_fields: int = 16) -> list[Part]:
    """The parts of a complete ``multipart/form-data`` body, in order.

    Raises :class:`RequestError` (400 malformed or truncated, 413 too many images,
    415 not multipart).
    """
    boundary = boundary_of(content_type)
    c = _Collector(max_images, max_fields)
    callbacks: python_multipart.multipart.MultipartCallbacks = {
        "on_part_begin": c.on_part_begin,
        "on_part_data": c.on_part_data,
        "on_part_end": c.on_part_end,
        "on_header_field": c.on_header_field,
        "on_header_value": c.on_header_value,
        "on_header_end": c.on_header_end,
        "on_headers_finished": c.on_headers_finished,
        "on_end": c.on_end,
    }
    parser = python_multipart.MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise RequestError(400, f"malformed multipart body ({first_line(exc)})") from exc
    if not c.ended:
        raise RequestError(400, "the multipart body is incomplete (no closing boundary)")
    return c.parts
