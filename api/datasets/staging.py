"""An upload's files checked and put in the blob store, before the database is touched.

Two forms (DESIGN.md, datasets): one zip as `file`, whose files become the new version exactly; or
any files as `files`, not unpacked, added onto the previous version at `<path>/<filename>`. Everything
that can refuse an upload is checked before the first blob is stored: a refused archive adds nothing
to the store. (An archive whose headers lie about a size is caught only while it inflates; the
members stored before that point stay as blobs no row names, harmless and shared by content.)
"""

import unicodedata
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import anyio.to_thread

from api.core.blobs import BlobStore, StoredBlob
from api.core.errors import InvalidInput
from api.core.uploads import Upload, UploadedFile, archive_refused
from shared.archive import ArchiveError, ArchiveLimits, MemberReader, inspect_zip, iter_entries
from shared.names import InvalidName, normalize_relative_path

ManifestEntry = tuple[str, str, int]  # (path, sha256, size)

MAX_PATH_LENGTH = 1024  # dataset_files.path
MAX_NAME_BYTES = 255  # one file name, as Linux filesystems take it
MAX_DESCRIPTION_LENGTH = 4096
_FILE_FIELDS = frozenset({"file", "files"})
_TEXT_FIELDS = frozenset({"path", "description"})


@dataclass(frozen=True)
class StagedUpload:
    files: list[ManifestEntry]  # in the blob store
    replaces: bool  # True: the version is exactly these files; False: added onto the previous version
    description: str | None
    # The files' blobs as the store reported them, for `record_blobs` (which checks again the ones it
    # found already stored); for a snapshot, whose files the store held before, built from `files`.
    blobs: list[StoredBlob]


def _has_control_character(text: str) -> bool:
    return any(ord(char) < 0x20 or char == "\x7f" for char in text)


def check_folder(value: str, field: str) -> str:
    """A sub-folder of a dataset, normalised; 422 `invalid_path` when it is not one."""
    try:
        if _has_control_character(value):
            raise InvalidName("must not contain control characters")
        folder = normalize_relative_path(value)
    except InvalidName as error:
        raise InvalidInput(f"{field} {value!r} {error}", code="invalid_path", field=field) from None
    if len(folder) >= MAX_PATH_LENGTH:
        raise InvalidInput(f"{field} is too long", code="path_too_long", field=field)
    return folder


def check_filename(value: str) -> str:
    """A file's name as sent in a multipart part: one name, not a path; NFC."""
    name = unicodedata.normalize("NFC", value)
    if (
        name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or _has_control_character(name)
        or len(name.encode()) > MAX_NAME_BYTES
    ):
        raise InvalidInput(
            f"{value!r} is not a file name (one name of at most {MAX_NAME_BYTES} bytes, no '/' or '\\')",
            code="invalid_filename",
            field="files",
        )
    return name


def _place(folder: str | None, name: str, field: str) -> str:
    path = f"{folder}/{name}" if folder else name
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidInput(
            f"{path[:80]!r}... is longer than {MAX_PATH_LENGTH} characters", code="path_too_long", field=field
        )
    return path


def _chosen(upload: Upload, field: str) -> list[UploadedFile]:
    # A form's file input left empty still sends a part, with no name and no content.
    return [part for part in upload.files_named(field) if part.filename or part.size]


def _check_form(upload: Upload) -> tuple[str | None, str | None]:
    """The upload's folder and description, once its parts make one of the two forms."""
    unknown = sorted(
        ({part.field for part in upload.files} - _FILE_FIELDS) | (set(upload.fields) - _TEXT_FIELDS)
    )
    if unknown:
        raise InvalidInput(
            f"unexpected form fields {', '.join(map(repr, unknown))}: send `file` (a zip) or `files`, "
            "and optionally `path` and `description`",
            code="unexpected_field",
            field=unknown[0],
        )
    archives, files = _chosen(upload, "file"), _chosen(upload, "files")
    if (archives and files) or len(archives) > 1:
        raise InvalidInput(
            "send either one zip as `file` or any number of files as `files`",
            code="invalid_upload",
            field="file",
        )
    if not archives and not files:
        raise InvalidInput("the upload holds no files", code="empty_upload", field="files")
    description = upload.fields.get("description")
    if description is not None and len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInput(
            f"the description is over {MAX_DESCRIPTION_LENGTH} characters",
            code="invalid_description",
            field="description",
        )
    folder = upload.fields.get("path") or None
    return (None if folder is None else check_folder(folder, "path")), description


async def stage(blobs: BlobStore, upload: Upload, limits: ArchiveLimits) -> StagedUpload:
    """Check an upload received into scratch files and put its files in the blob store."""
    folder, description = _check_form(upload)
    archives = _chosen(upload, "file")
    if archives:
        stored = await _stage_zip(blobs, archives[0].path, limits, folder)
        return StagedUpload([entry for entry, _ in stored], True, description, [blob for _, blob in stored])
    stored = await _stage_files(blobs, _chosen(upload, "files"), folder)
    return StagedUpload([entry for entry, _ in stored], False, description, [blob for _, blob in stored])


async def _stage_zip(
    blobs: BlobStore, archive: Path, limits: ArchiveLimits, folder: str | None
) -> list[tuple[ManifestEntry, StoredBlob]]:
    try:
        inventory = await anyio.to_thread.run_sync(inspect_zip, archive, limits)
        if not inventory.entries:
            raise InvalidInput("the zip holds no files", code="empty_upload", field="file")
        for entry in inventory.entries:
            _place(folder, entry.name, "file")
        return await _store_members(blobs, archive, limits, folder)
    except ArchiveError as error:
        raise archive_refused(error) from None


async def _store_members(
    blobs: BlobStore, archive: Path, limits: ArchiveLimits, folder: str | None
) -> list[tuple[ManifestEntry, StoredBlob]]:
    """Each member streamed from the zip into the store, one bounded read per thread hop."""
    stored: list[tuple[ManifestEntry, StoredBlob]] = []
    entries = cast(Generator[tuple[str, int, MemberReader]], iter_entries(archive, limits))
    try:
        while (item := await anyio.to_thread.run_sync(_next_entry, entries)) is not None:
            name, size, reader = item
            blob = await blobs.put(_chunks(reader), max_bytes=size)
            stored.append(((_place(folder, name, "file"), blob.sha256, blob.size), blob))
    finally:
        entries.close()  # closes the zip; synchronous so that a cancellation cannot skip it
    return stored


def _next_entry(entries: Iterator[tuple[str, int, MemberReader]]) -> tuple[str, int, MemberReader] | None:
    return next(entries, None)


async def _chunks(reader: MemberReader) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(reader.read):
        yield chunk


async def _stage_files(
    blobs: BlobStore, files: list[UploadedFile], folder: str | None
) -> list[tuple[ManifestEntry, StoredBlob]]:
    paths = [_place(folder, check_filename(part.filename), "files") for part in files]
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise InvalidInput(f"{path!r} is sent twice", code="duplicate_file", field="files")
        seen.add(path)
    stored: list[tuple[ManifestEntry, StoredBlob]] = []
    for path, part in zip(paths, files, strict=True):
        blob = await blobs.put_file(part.path)
        stored.append(((path, blob.sha256, blob.size), blob))
    return stored
