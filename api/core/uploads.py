"""Streamed uploads: a multipart request's files go straight to scratch files of the blob store.

Nothing is held whole in memory and the limits are checked while the bytes arrive: an upload over
its limit is refused at the first byte too many, and a refused, failed or cut-off upload leaves no
scratch file behind (each one is removed on exit unless the blob store adopted it).
"""

from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.core.blobs import BlobStore
from api.core.errors import InvalidInput, PayloadTooLarge
from shared.archive import ArchiveError

MAX_FIELD_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024


@dataclass
class UploadedFile:
    field: str
    filename: str
    path: Path
    size: int = 0


@dataclass
class Upload:
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def files_named(self, name: str) -> list[UploadedFile]:
        return [upload for upload in self.files if upload.field == name]


class _Receiver:
    def __init__(self, store: BlobStore, stack: ExitStack, max_bytes: int, max_files: int) -> None:
        self.store, self.stack = store, stack
        self.max_bytes, self.max_files = max_bytes, max_files
        self.upload = Upload()
        self.total = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._file: UploadedFile | None = None
        self._handle: BinaryIO | None = None
        self._text: bytearray | None = None
        self._name = ""
        self.ended = False  # the closing boundary arrived

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_bytes_in(
                self._header_field, data, start, end
            ),
            "on_header_value": lambda data, start, end: self._header_bytes_in(
                self._header_value, data, start, end
            ),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0

    def _header_bytes_in(self, target: bytearray, data: bytes, start: int, end: int) -> None:
        self._header_bytes += end - start
        if self._header_bytes > MAX_HEADER_BYTES:
            raise InvalidInput("a multipart part's headers are too long", code="malformed_upload")
        target += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = self._header_value.decode(
            "utf-8", "replace"
        )
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = params.get(b"name")
        if name is None:
            raise InvalidInput("a multipart part has no name", code="malformed_upload")
        self._name = name.decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None:
            self._text = bytearray()
            return
        if len(self.upload.files) >= self.max_files:
            raise InvalidInput(f"at most {self.max_files} files per upload", code="too_many_files")
        path = self.stack.enter_context(self.store.temp_file())
        self._handle = self.stack.enter_context(path.open("wb"))
        self._file = UploadedFile(self._name, filename.decode("utf-8", "replace"), path)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._text is not None:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise InvalidInput(f"the form field {self._name!r} is too long", code="malformed_upload")
            return
        assert self._handle is not None and self._file is not None
        self.total += end - start
        if self.total > self.max_bytes:
            raise PayloadTooLarge(f"the upload is over {self.max_bytes} bytes", code="upload_too_large")
        self._handle.write(data[start:end])
        self._file.size += end - start

    def _end(self) -> None:
        self.ended = True

    def _part_end(self) -> None:
        if self._text is not None:
            self.upload.fields[self._name] = self._text.decode("utf-8", "replace")
            self._text = None
        elif self._file is not None and self._handle is not None:
            self._handle.close()
            self.upload.files.append(self._file)
            self._file, self._handle = None, None


@asynccontextmanager
async def receive_multipart(
    request: Request, store: BlobStore, *, max_bytes: int, max_files: int = 1
) -> AsyncIterator[Upload]:
    """Receive a `multipart/form-data` request into scratch files; they are removed when the block
    exits, unless `store.put_file()` adopted them."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidInput("send the file as multipart/form-data", code="multipart_required")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise PayloadTooLarge(f"the upload is over {max_bytes} bytes", code="upload_too_large")
    with ExitStack() as stack:
        receiver = _Receiver(store, stack, max_bytes, max_files)
        try:
            # Inside the `try`: the parser refuses a boundary over 256 bytes as it is built.
            parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except ClientDisconnect:
            raise InvalidInput("the upload was cut off", code="upload_incomplete") from None
        except FormParserError as error:  # the parser's own errors: a body that is not multipart
            # Only these: a failing disk (OSError) is the server's fault, not a malformed body.
            raise InvalidInput(f"the multipart body is malformed: {error}", code="malformed_upload") from None
        if not receiver.ended:  # the parser takes a body that stops before its closing boundary
            raise InvalidInput("the upload ended before its closing boundary", code="upload_incomplete")
        yield receiver.upload


def archive_refused(error: ArchiveError) -> InvalidInput:
    """A zip the archive checks refuse, as a problem document with the check's own stable code."""
    return InvalidInput(f"the archive was refused: {error.message}", code=error.code, field="file")


@asynccontextmanager
async def receive_body(request: Request, store: BlobStore, *, max_bytes: int) -> AsyncIterator[Path]:
    """Receive a raw request body (PUT of one file) into a scratch file, removed on exit unless adopted."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the upload is over {max_bytes} bytes", code="upload_too_large")
    with store.temp_file() as path, path.open("wb") as handle:
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes:
                    raise PayloadTooLarge(f"the upload is over {max_bytes} bytes", code="upload_too_large")
                handle.write(chunk)
        except ClientDisconnect:
            raise InvalidInput("the upload was cut off", code="upload_incomplete") from None
        handle.close()
        yield path
