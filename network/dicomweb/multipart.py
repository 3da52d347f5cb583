"""multipart/related (RFC 2387) for WADO-RS: reading Accept headers, writing streamed bodies.

Accept values come with and without quotes around ``type`` and ``transfer-syntax``
(``multipart/related; type="application/dicom"; transfer-syntax=*`` and
``multipart/related;type=application/dicom``): both read alike. A body is a
generator of byte chunks: parts are written as their content is read, so a
study of 2 GB never sits in memory.
"""

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header: ``multipart/related; type=...; transfer-syntax=...``."""

    type: str  # "multipart/related", "application/dicom+json", "*/*", ...
    params: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def part_type(self) -> str | None:
        """The type of the parts of a multipart range (its ``type`` parameter), lower case."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    parts, current, quoted = [], [], False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first (q=0 left out); ``*/*`` when there is none."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for position, item in enumerate(_split(header, ",")):
        pieces = _split(item, ";")
        media = pieces[0].strip().lower()
        if not media:
            continue
        params, quality = {}, 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"').strip()
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
            elif name:
                params[name] = value
        if quality > 0:
            ranges.append((-quality, position, MediaRange(media, params, quality)))
    return [r for _, _, r in sorted(ranges, key=lambda t: (t[0], t[1]))]


def matches(media: str, wanted: str) -> bool:
    """Does the concrete ``media`` type fall within the range ``wanted`` (``*/*``, ``image/*``)?"""
    if wanted in ("*/*", "*"):
        return True
    if wanted.endswith("/*"):
        return media.split("/")[0] == wanted[:-2]
    return media == wanted


def new_boundary() -> str:
    return "dicomweb-" + secrets.token_hex(16)


def content_type(boundary: str, part_type: str, transfer_syntax: str | None = None) -> str:
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


@dataclass
class Part:
    """One part: its Content-Type (and Content-Location), and its content as chunks."""

    content_type: str
    chunks: Iterable[bytes]
    location: str | None = None


def stream(boundary: str, parts: Iterable[Part]) -> Iterator[bytes]:
    """The body of a multipart/related message, part by part, chunk by chunk."""
    marker = b"--" + boundary.encode("ascii")
    for part in parts:
        head = [marker, b"Content-Type: " + part.content_type.encode("ascii")]
        if part.location:
            head.append(b"Content-Location: " + part.location.encode("ascii"))
        yield CRLF.join(head) + CRLF + CRLF
        for chunk in part.chunks:
            if chunk:
                yield chunk
        yield CRLF
    yield marker + b"--" + CRLF
