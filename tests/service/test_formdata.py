"""The in-memory multipart reader gives exactly what Starlette's parser gives, or leaves the body to it."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.datastructures import Headers

import service.inputs
from service.errors import ServiceError
from service.formdata import form_files
from service.inputs import parse_form
from tests.service.servicetools import COLOURS, solid_png

CURL = b"------------------------d74496d66958873e"
WEBKIT = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
JPEGISH = b"\xff\xd8\xff\xe0\x00\x10JFIF\r\n\r\n--\r\n\n\r" + bytes(range(256)) + b"\r\n"


def disposition(name: bytes = b'"file"', filename: bytes | None = b'"x.jpg"', kind: bytes = b"form-data") -> bytes:
    return b"Content-Disposition: " + kind + b"; name=" + name + (b"; filename=" + filename if filename else b"")


def file_part(data: bytes, filename: bytes = b'"x.jpg"', name: bytes = b'"file"') -> bytes:
    return disposition(name, filename) + b"\r\nContent-Type: image/jpeg\r\n\r\n" + data


def text_part(name: bytes, value: bytes) -> bytes:
    return disposition(name, None) + b"\r\n\r\n" + value


def form(boundary: bytes, *parts: bytes, epilogue: bytes = b"\r\n") -> bytes:
    """A body as clients write it: each part (headers, blank line, data) after a delimiter, then the close."""
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--" + epilogue


def ctype(boundary: bytes, quoted: bool = False) -> str:
    value = boundary.decode("latin-1")
    return f'multipart/form-data; boundary="{value}"' if quoted else f"multipart/form-data; boundary={value}"


def full_parse(content_type: str, body: bytes) -> list[tuple[str, bytes]] | tuple[int, str, object]:
    """What the full parser answers: the files, or the error's status, code and detail."""
    try:
        return asyncio.run(parse_form(Headers({"content-type": content_type}), body))
    except ServiceError as exc:
        return exc.status, exc.code, exc.detail


def client_body(**kwargs: object) -> tuple[str, bytes]:
    """Content-Type and body exactly as httpx (and so the TestClient) sends them."""
    request = httpx.Request("POST", "http://test/classify", **kwargs)
    return request.headers["content-type"], request.read()


SPACED = b"a b'()+_,-./:=?c"  # every character RFC 2046 allows in a boundary, a space inside
WELL_FORMED = {
    "curl": (ctype(CURL), form(CURL, file_part(JPEGISH, b'"photo.jpg"'))),
    "browser-quoted-boundary": (ctype(WEBKIT, quoted=True), form(WEBKIT, file_part(JPEGISH, b'"my photo (1).png"'))),
    "escaped-quotes": (ctype(WEBKIT), form(WEBKIT, file_part(b"a", rb'"say \"cheese\" \\o/.png"'))),
    "percent-quote": (ctype(WEBKIT), form(WEBKIT, file_part(b"a", b'"say %22cheese%22.png"'))),
    "unicode-filename": (ctype(WEBKIT), form(WEBKIT, file_part(b"a", '"café 猫.png"'.encode()))),
    "latin-1-filename": (ctype(WEBKIT), form(WEBKIT, file_part(b"a", b'"caf\xe9.png"'))),
    "semicolon-in-filename": (ctype(CURL), form(CURL, file_part(b"a", b'"a;b=c.png"'))),
    "filename-star-beside-filename": (
        ctype(CURL),
        form(CURL, file_part(b"a", b"\"plain.png\"; filename*=UTF-8''caf%C3%A9.png")),
    ),
    "windows-path": (ctype(CURL), form(CURL, file_part(b"a", b'"C:\\Users\\me\\a.png"'))),
    "unquoted-parameters": (ctype(CURL), form(CURL, file_part(b"a", b"a.png", name=b"file"))),
    "empty-filename": (ctype(CURL), form(CURL, file_part(b"a", b'""'), file_part(b"b", b'"b.png"'))),
    "empty-file": (ctype(CURL), form(CURL, file_part(b""))),
    "several-files-and-fields": (
        ctype(WEBKIT),
        form(
            WEBKIT,
            text_part(b'"note"', b"hello\r\nworld"),
            file_part(b"first", b'"1.png"'),
            file_part(b"other", b'"o.png"', name=b'"upload"'),
            text_part(b'"empty"', b""),
            file_part(b"second", b'"2.png"'),
            file_part(b"third", b'"3.png"'),
        ),
    ),
    "crlf-and-boundary-like-data": (
        ctype(CURL),
        form(
            CURL,
            file_part(b"\r\n\r\n--" + CURL + b"x\r\n--" + CURL[:-1] + b"\r\na--" + CURL + b"\r\n" + CURL + b"--\r\n"),
        ),
    ),
    "boundary-inside-quoted-filename": (ctype(CURL), form(CURL, file_part(b"a", b'"--' + CURL + b'.png"'))),
    "odd-boundary-characters": (ctype(SPACED, quoted=True), form(SPACED, file_part(JPEGISH))),
    "one-character-boundary": (ctype(b"x"), form(b"x", file_part(b"-x-\r\n-x\r\n--xy"))),
    "no-epilogue": (ctype(CURL), form(CURL, file_part(JPEGISH), epilogue=b"")),
    "other-parameters-first": (f"Multipart/Form-Data; foo=bar; boundary={CURL.decode()}", form(CURL, file_part(b"a"))),
    "lower-case-headers-and-extra-ones": (
        ctype(CURL),
        form(CURL, b'content-disposition:form-data; name="file"; filename="l.png"\r\nContent-ID: <1>\r\n\r\ndata'),
    ),
    "attachment-disposition": (ctype(CURL), form(CURL, disposition(kind=b"attachment") + b"\r\n\r\ndata")),
    "no-file-field": (ctype(CURL), form(CURL, text_part(b'"other"', b"field"), file_part(b"a", name=b'"upload"'))),
    "httpx": client_body(
        files=[("file", ("a b.png", JPEGISH)), ("upload", b"x"), ("file", ("ü.png", b"\r\n"))], data={"k": "v"}
    ),
}


@pytest.mark.parametrize(("content_type", "body"), WELL_FORMED.values(), ids=WELL_FORMED.keys())
def test_well_formed_bodies_read_as_starlette_reads_them(content_type: str, body: bytes) -> None:
    files = form_files(content_type, body)
    assert files is not None, "the body should be read in memory"
    assert files == full_parse(content_type, body)
    assert all(type(data) is memoryview and data.obj is body for _, data in files), "views into the body, not copies"


def test_names_order_and_bytes() -> None:
    assert form_files(*WELL_FORMED["several-files-and-fields"]) == [
        ("1.png", b"first"),
        ("2.png", b"second"),
        ("3.png", b"third"),
    ]
    assert form_files(*WELL_FORMED["escaped-quotes"]) == [('say "cheese" \\o/.png', b"a")]
    assert form_files(*WELL_FORMED["unicode-filename"]) == [("café 猫.png", b"a")]
    assert form_files(*WELL_FORMED["filename-star-beside-filename"]) == [("plain.png", b"a")]
    assert form_files(*WELL_FORMED["empty-filename"]) == [("file 0", b"a"), ("b.png", b"b")]
    assert bytes(form_files(*WELL_FORMED["crlf-and-boundary-like-data"])[0][1]).endswith(CURL + b"--\r\n")


def headers(*lines: bytes, data: bytes = b"data") -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


FILE = file_part(b"not an image")
LEFT_TO_STARLETTE = {
    "no-boundary": ("multipart/form-data", form(CURL, FILE)),
    "empty-boundary": ('multipart/form-data; boundary=""', form(b"", FILE)),
    "boundary-too-long": (ctype(b"b" * 71), form(b"b" * 71, FILE)),
    "boundary-odd-character": (ctype(b"a{b"), form(b"a{b", FILE)),
    "boundary-ends-in-space": (ctype(b"ab ", quoted=True), form(b"ab ", FILE)),
    "charset": (ctype(CURL) + "; charset=latin-1", form(CURL, FILE)),
    "other-media-type": (ctype(CURL).replace("form-data", "mixed"), form(CURL, FILE)),
    "preamble": (ctype(CURL), b"This is a preamble.\r\n" + form(CURL, FILE)),
    "leading-crlf": (ctype(CURL), b"\r\n" + form(CURL, FILE)),
    "epilogue": (ctype(CURL), form(CURL, FILE, epilogue=b"\r\nThis is an epilogue.\r\n")),
    "empty-form": (ctype(CURL), b"--" + CURL + b"--\r\n"),
    "truncated": (ctype(CURL), form(CURL, FILE, FILE)[:-30]),
    "no-close-delimiter": (ctype(CURL), form(CURL, FILE)[: -len(CURL) - 6] + b"\r\n"),
    "open-delimiter-at-the-end": (ctype(CURL), b"--" + CURL + b"\r\n" + FILE + b"\r\n--" + CURL + b"\r\n"),
    "header-folding": (ctype(CURL), form(CURL, headers(b"Content-Disposition: form-data;", b' name="file"'))),
    "no-disposition": (ctype(CURL), form(CURL, headers(b"Content-Type: image/png"))),
    "no-headers": (ctype(CURL), form(CURL, b"\r\ndata")),
    "no-name": (ctype(CURL), form(CURL, headers(b'Content-Disposition: form-data; filename="a.png"'))),
    "two-dispositions": (ctype(CURL), form(CURL, headers(disposition(), disposition(b'"other"')))),
    "transfer-encoding": (ctype(CURL), form(CURL, headers(disposition(), b"Content-Transfer-Encoding: base64"))),
    "nested-multipart": (ctype(CURL), form(CURL, headers(disposition(), b"Content-Type: multipart/mixed; boundary=x"))),
    "space-before-colon": (ctype(CURL), form(CURL, headers(b'Content-Disposition : form-data; name="file"'))),
    "bare-lf-lines": (ctype(CURL), form(CURL, FILE).replace(b"\r\n", b"\n")),
    "bare-cr-in-header": (ctype(CURL), form(CURL, headers(disposition() + b"\rX-A: b"))),
    "nine-headers": (ctype(CURL), form(CURL, headers(disposition(), *[b"X-A: b"] * 8))),
    "long-header": (ctype(CURL), form(CURL, headers(disposition(), b"X-A: " + b"b" * 5000))),
    "text-field-named-file": (ctype(CURL), form(CURL, text_part(b'"file"', b"text, not a file"))),
    "text-field-over-1-mib": (ctype(CURL), form(CURL, FILE, text_part(b'"note"', b"n" * (1024 * 1024 + 1)))),
    "boundary-padding": (
        ctype(CURL),
        form(CURL, FILE, FILE).replace(b"\r\n--" + CURL + b"\r\n", b"\r\n--" + CURL + b" \r\n"),
    ),
    "boundary-then-hyphen-in-data": (ctype(CURL), form(CURL, file_part(b"a\r\n--" + CURL + b"-x"))),
    "boundary-then-cr-in-data": (ctype(CURL), form(CURL, file_part(b"a\r\n--" + CURL + b"\rx"))),
    "over-1000-files": (ctype(CURL), form(CURL, *[file_part(b"", name=b'"upload"')] * 1001)),
    "errors-test-body": ("multipart/form-data", b"--x\r\nbroken"),
}


@pytest.mark.parametrize(("content_type", "body"), LEFT_TO_STARLETTE.values(), ids=LEFT_TO_STARLETTE.keys())
def test_anything_else_is_left_to_starlette(content_type: str, body: bytes) -> None:
    assert form_files(content_type, body) is None


def answer(client: TestClient, content_type: str, body: bytes) -> tuple[int, dict]:
    response = client.post("/classify", content=body, headers={"content-type": content_type})
    payload = response.json()
    payload.pop("request_id", None)
    return response.status_code, payload


def test_every_body_gets_the_answer_it_got_from_starlette_alone(client: TestClient, monkeypatch) -> None:
    red = solid_png(COLOURS["red"])
    bodies = {
        **LEFT_TO_STARLETTE,
        **WELL_FORMED,
        "images": (ctype(WEBKIT), form(WEBKIT, file_part(red, b'"r.png"'), text_part(b'"a"', b"b"), file_part(red))),
        "too-many-images": (ctype(CURL), form(CURL, *[file_part(red)] * 17)),
    }
    fast = {key: answer(client, *body) for key, body in bodies.items()}
    monkeypatch.setattr(service.inputs, "form_files", lambda content_type, body: None)
    slow = {key: answer(client, *body) for key, body in bodies.items()}
    assert fast == slow
    codes = {key: status if status == 200 else payload["code"] for key, (status, payload) in fast.items()}
    assert codes["images"] == 200 and codes["too-many-images"] == "too_many_images"
    assert codes["text-field-named-file"] == "not_a_file" and codes["no-file-field"] == "no_images"
    assert codes["errors-test-body"] == codes["header-folding"] == "invalid_multipart"


def noise_jpeg(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_a_large_upload_is_never_spooled_to_disk(client: TestClient, monkeypatch) -> None:
    photo = noise_jpeg(1024)
    assert len(photo) > 1024 * 1024  # over Starlette's in-memory spool

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("a temporary file was made for the upload")

    monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", no_disk)
    response = client.post("/classify", files=[("file", ("photo.jpg", photo, "image/jpeg"))] * 2)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2


# Small edits of well-formed bodies, the kind that move a delimiter, a quote or a line end.
EDIT_BYTES = st.sampled_from([b"\r", b"\n", b"\r\n", b"-", b"--", b'"', b"\\", b";", b":", b" ", b"=", b"x", b"\xe9"])


@st.composite
def edited_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    content_type, body = draw(st.sampled_from(list(WELL_FORMED.values())))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        if kind == "cut":
            body = body[:at]
        elif kind == "delete":
            body = body[:at] + body[at + draw(st.integers(1, 4)) :]
        else:
            body = body[:at] + draw(EDIT_BYTES) + body[at + (kind == "replace") :]
    return content_type, body


@given(edited_bodies())
@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_an_edited_body_is_read_as_starlette_reads_it_or_left_to_it(case: tuple[str, bytes]) -> None:
    files = form_files(*case)
    if files is not None:
        assert files == full_parse(*case)
