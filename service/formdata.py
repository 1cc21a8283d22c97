"""The files of a ``multipart/form-data`` body that is already in memory, found by ``bytes.find``.

Starlette's parser feeds a body through python-multipart's per-part callbacks and spools every file over 1 MiB
to a temporary file, which is then read back (3.4 ms for a 2.8 MiB photo, against 0.8 ms here). A body that is
wholly in memory only needs its delimiters found. :func:`form_files` takes the shape that curl, browsers and
HTTP libraries send, reads it exactly as that parser does (its header syntax, limits and parameter parsing),
and answers ``None`` for anything else, which then goes through Starlette's parser so that every refusal keeps
its answer.
"""

from __future__ import annotations

import re

# The function Starlette's parser reads Content-Type and Content-Disposition with: quoting, escaped quotes,
# the IE full-path filename and the RFC 7578 rule that ``filename*`` is ignored are all as there.
from starlette.formparsers import parse_options_header

FIELD = "file"
# RFC 2046: 1 to 70 of these characters, not ending in a space. Anything else is left to the full parser.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# A header line as python-multipart reads it: a token, a colon, spaces skipped, the value up to the CRLF.
_HEADER = re.compile(rb"([0-9A-Za-z!#$%&'*+\-.^_`|~]+): *([^\r\n]*)")
MAX_PARTS = 1000  # the full parser's limit on files and on text fields (service.inputs), here on both together
# Within python-multipart's limits (8 header lines of at most 4224 bytes) and Starlette's (1 MiB per text field):
# a body past them is refused there, so it is left to that parser.
_MAX_HEADERS, _MAX_LINE = 8, 4096
_MAX_HEADER_BLOCK = _MAX_HEADERS * (_MAX_LINE + 2)
_MAX_TEXT = 1024 * 1024


def form_files(content_type: str, body: bytes) -> list[tuple[str, memoryview]] | None:
    """``(filename, data)`` of each file part named ``file``, in order, as Starlette's parser would give them;
    ``None`` when the body is not in the plain shape read here (the caller then parses it in full).

    Each file's data is a view into ``body``, not a copy: copying a 3 MB photo out of its form took 2 ms, most of
    it the kernel handing over fresh pages (glibc maps a block that large on its own, and returns it when freed).

    A file without a filename is named ``file <i>``; text fields with other names are skipped, one named
    ``file`` is left to the caller, which refuses it.
    """
    media, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    # A charset changes how names are decoded; no client sends one, so it is left to the full parser.
    if media != b"multipart/form-data" or b"charset" in params or not boundary or not _BOUNDARY.fullmatch(boundary):
        return None
    delimiter = b"\r\n--" + boundary
    if not body.startswith(delimiter[2:] + b"\r\n"):  # a preamble, or no part at all
        return None
    files: list[tuple[str, memoryview]] = []
    view = memoryview(body)
    start = len(delimiter)  # the first part's headers
    for _ in range(MAX_PARTS):
        part = _part(body, start, delimiter)
        if part is None:
            return None
        disposition, data_start, data_end, last = part
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            return None
        name = _decode(options[b"name"])
        if b"filename" in options:
            if name == FIELD:
                files.append((_decode(options[b"filename"]) or f"file {len(files)}", view[data_start:data_end]))
        elif name == FIELD or data_end - data_start > _MAX_TEXT:
            return None
        start = data_end + len(delimiter) + 2
        if last:
            # The epilogue is ignored by python-multipart; only the usual final CRLF (or none) is taken here.
            return files if body[start:] in (b"", b"\r\n") else None
    return None


def _part(body: bytes, start: int, delimiter: bytes) -> tuple[bytes, int, int, bool] | None:
    """The part whose headers begin at ``start``: its Content-Disposition value, where its data begins and ends,
    and whether the close delimiter follows it; ``None`` for anything not read here."""
    end = body.find(b"\r\n\r\n", start, start + _MAX_HEADER_BLOCK + 2)
    if end < 0:
        return None
    lines = body[start:end].split(b"\r\n")
    if len(lines) > _MAX_HEADERS:
        return None
    disposition = None
    for line in lines:
        header = _HEADER.fullmatch(line)
        if header is None or len(line) > _MAX_LINE:  # folding, a bare CR or LF, no headers, an odd name
            return None
        name, value = header[1].lower(), header[2]
        if name == b"content-disposition":
            if disposition is not None:
                return None
            disposition = value
        elif name == b"content-transfer-encoding" or (
            name == b"content-type" and value.lstrip().lower().startswith(b"multipart/")
        ):
            return None
    if disposition is None:
        return None
    data_start = at = end + 4
    while (at := body.find(delimiter, at)) >= 0:
        after = body[at + len(delimiter) : at + len(delimiter) + 2]
        if after in (b"\r\n", b"--"):
            return disposition, data_start, at, after == b"--"
        # A CR, a hyphen or padding after a boundary-like line may still end the part in python-multipart's
        # reading; any other byte makes it data, and the search goes on.
        if after[:1] in (b"", b"\r", b"-", b" ", b"\t"):
            return None
        at += 1
    return None  # no delimiter after the data: the body is cut short


def _decode(value: bytes) -> str:
    """As Starlette decodes names under the default charset: UTF-8, else Latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")
