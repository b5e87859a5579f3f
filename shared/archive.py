"""Safe inspection and extraction of zip archives, which are treated as hostile.

The API validates uploaded packages and datasets with it and the agent unpacks packages with it, so it
uses the standard library only. `zipfile` alone trusts an archive: it writes `../` names, believes the
sizes a header declares and inflates whatever it is handed. Here every name and declared size is
checked before a byte is inflated, and every byte inflated is counted, so an archive whose header
lies about a size is stopped one byte past the lie, without ever inflating the rest.
"""

import copy
import itertools
import os
import re
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK_BYTES = MiB
# zipfile inflates bzip2 and LZMA without bounding the output of one read, so a forged header could
# exhaust memory before a byte is counted; stored and deflated are what zip tools write anyway.
_SAFE_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_ENCRYPTED = 0x1
_LOCAL_HEADER_BYTES = 30
_DRIVE = re.compile(r"[A-Za-z]:")
_MAX_PART_BYTES = 255  # the longest file name Linux filesystems take
_T = TypeVar("_T")


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 10_000
    max_total_bytes: int = 2 * GiB
    max_file_bytes: int = 1 * GiB
    max_ratio: int = 200  # inflated / compressed, per entry and in total
    # Below this an entry (or a whole archive) cannot hurt, however well it compresses.
    ratio_floor_bytes: int = MiB


DEFAULT_LIMITS = ArchiveLimits()


class ArchiveError(ValueError):
    """An archive refused, with a stable `code` for clients (`zip_bomb`, `unsafe_path`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ArchiveEntry:
    name: str  # NFC, `/`-separated, relative, no `.` or `..` parts
    size: int  # as declared; extraction holds the content to it
    compressed_size: int


@dataclass(frozen=True)
class ArchiveInventory:
    entries: tuple[ArchiveEntry, ...]  # regular files only, junk left out
    root_prefix: str  # "" or "folder/" when every file sits in one top-level folder

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(entry.name for entry in self.entries)


@dataclass(frozen=True)
class ExtractedFile:
    name: str  # relative to the destination, `strip_prefix` removed
    path: Path
    size: int


def common_single_top_folder(names: Iterable[str]) -> str:
    """`"folder/"` when every name sits inside one top-level folder, else `""`.

    People often zip a package from its parent folder, so `train.py` arrives as `my_package/train.py`;
    stripping this prefix finds the package's root whichever way it was zipped.
    """
    tops: set[str] = set()
    for name in names:
        top, separator, _ = name.partition("/")
        if not separator:
            return ""
        tops.add(top)
        if len(tops) > 1:
            return ""
    return f"{tops.pop()}/" if tops else ""


def inspect_zip(path: str | os.PathLike[str], limits: ArchiveLimits = DEFAULT_LIMITS) -> ArchiveInventory:
    """Check the whole archive without inflating anything, and list its regular files."""
    with _open_zip(path) as archive:
        entries = tuple(entry for entry, _ in _scan(archive, limits))
    return ArchiveInventory(entries, common_single_top_folder(entry.name for entry in entries))


class MemberReader:
    """One member's content, read in bounded chunks and held to the size its header declares.

    zipfile is told the member may run a chunk past its declared size: an honest member ends first,
    and a lying one shows its extra bytes to the count here and is stopped within one chunk, instead
    of being cut at the declared size by zipfile and failing its CRC. Declared sizes were held to the
    limits, so this bounds the actual ones too.
    """

    def __init__(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
        self.name = name
        self.declared_size = info.file_size
        self.bytes_read = 0
        probe = copy.copy(info)
        probe.file_size = info.file_size + CHUNK_BYTES + 1  # so a read never reaches zipfile's cut
        self._stream = _guard(name, lambda: archive.open(probe))

    def read(self, size: int = CHUNK_BYTES) -> bytes:
        """At most `min(size, CHUNK_BYTES)` bytes; `b""` at the end, once the content proved whole."""
        wanted = CHUNK_BYTES if size < 0 else min(size, CHUNK_BYTES)
        # Asking for no more than one byte past the declared end shows a lie before zipfile can
        # reach the member's end and fail its CRC, so a forged size reads as what it is.
        wanted = min(wanted, self.declared_size - self.bytes_read + 1)
        data = _guard(self.name, lambda: self._stream.read(wanted))
        self.bytes_read += len(data)
        if self.bytes_read > self.declared_size:
            raise ArchiveError(
                "zip_bomb", f"{self.name} holds more than the {self.declared_size} bytes declared"
            )
        if not data and wanted and self.bytes_read != self.declared_size:
            raise ArchiveError("corrupt", f"{self.name} ends before the {self.declared_size} bytes declared")
        return data

    def finish(self) -> None:
        """Read whatever the caller left, so a lie past the declared size is caught all the same."""
        while self.read():
            pass

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def iter_entries(
    path: str | os.PathLike[str], limits: ArchiveLimits = DEFAULT_LIMITS
) -> Iterator[tuple[str, int, MemberReader]]:
    """Yield (name, declared size, reader) per regular file, once the whole archive passed the checks.

    Blocking: an async caller runs it in a thread. A member is checked to its end when the next one
    is asked for, whether or not the caller read it all.
    """
    with _open_zip(path) as archive:
        for entry, info in _scan(archive, limits):
            with MemberReader(archive, info, entry.name) as reader:
                yield entry.name, entry.size, reader
                reader.finish()


def read_member(
    path: str | os.PathLike[str], name: str, max_bytes: int, *, limits: ArchiveLimits = DEFAULT_LIMITS
) -> bytes:
    """The content of one small member (`train.py`, `parameters.json`), by its normalised full name."""
    wanted = unicodedata.normalize("NFC", name)
    with _open_zip(path) as archive:
        for entry, info in _scan(archive, limits):
            if entry.name != wanted:
                continue
            if entry.size > max_bytes:
                raise ArchiveError("too_large", f"{name} is over {max_bytes} bytes")
            with MemberReader(archive, info, entry.name) as reader:
                return b"".join(iter(reader.read, b""))
    raise ArchiveError("missing_member", f"the archive holds no {name}")


def extract_zip(
    path: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    limits: ArchiveLimits = DEFAULT_LIMITS,
    strip_prefix: str = "",
) -> list[ExtractedFile]:
    """Write the archive's regular files under `destination`, which must be empty or absent.

    Files get 0o644 and folders 0o755; nothing is followed or written outside `destination`. On any
    error everything written is removed again, leaving `destination` empty.
    """
    if strip_prefix and not strip_prefix.endswith("/"):
        raise ValueError("strip_prefix must be empty or end with '/'")
    target_root = Path(destination)
    target_root.mkdir(parents=True, exist_ok=True)
    if any(target_root.iterdir()):
        raise ValueError(f"{target_root} is not empty")
    root = target_root.resolve()
    created: list[Path] = []  # in creation order, so undone in reverse
    try:
        with _open_zip(path) as archive:
            members = _scan(archive, limits)
            if any(not entry.name.startswith(strip_prefix) for entry, _ in members):
                raise ValueError(f"not every file of the archive is under {strip_prefix!r}")
            extracted = []
            for entry, info in members:
                name = entry.name.removeprefix(strip_prefix)
                target = _make_parents(root, name, created)
                size = _write_member(archive, info, entry.name, target, created)
                extracted.append(ExtractedFile(name, target, size))
            return extracted
    except BaseException:
        _undo(created)
        raise


def _open_zip(path: str | os.PathLike[str]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as error:  # ValueError: names that fail to decode
        raise ArchiveError("not_a_zip", f"not a zip archive: {error}") from error


def _guard(name: str, action: Callable[[], _T]) -> _T:
    """Run a zipfile read, turning the ways damaged or forged data fails into one ArchiveError."""
    try:
        return action()
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ArchiveError("corrupt", f"{name} is damaged: {error}") from error


def _scan(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[tuple[ArchiveEntry, zipfile.ZipInfo]]:
    """Every check that needs no inflating, over every entry; the regular files that pass."""
    infos = archive.infolist()
    _check_overlaps(infos)
    kept: list[tuple[ArchiveEntry, zipfile.ZipInfo]] = []
    seen: set[str] = set()
    total = compressed_total = 0
    for info in infos:
        name = _normalise(info.orig_filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError("symlink", f"{name} is a symbolic link")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError("special_file", f"{name} is not a regular file or folder")
        if info.flag_bits & _ENCRYPTED:
            raise ArchiveError("encrypted", f"{name} is encrypted")
        if info.is_dir() or stat.S_ISDIR(mode) or not name or _is_junk(name):
            continue
        if info.compress_type not in _SAFE_METHODS:
            raise ArchiveError("unsupported_compression", f"{name}: only stored and deflated are accepted")
        if name in seen:
            raise ArchiveError("duplicate_entry", f"{name} appears more than once")
        seen.add(name)
        if len(seen) > limits.max_files:
            raise ArchiveError("too_many_files", f"more than {limits.max_files} files")
        if info.file_size > limits.max_file_bytes:
            raise ArchiveError("too_large", f"{name} is over {limits.max_file_bytes} bytes")
        total += info.file_size
        compressed_total += info.compress_size
        if total > limits.max_total_bytes:
            raise ArchiveError("too_large", f"the files add up to over {limits.max_total_bytes} bytes")
        if _inflates_too_much(info.file_size, info.compress_size, limits):
            raise ArchiveError("zip_bomb", f"{name} inflates over {limits.max_ratio} times")
        kept.append((ArchiveEntry(name, info.file_size, info.compress_size), info))
    if _inflates_too_much(total, compressed_total, limits):
        raise ArchiveError("zip_bomb", f"the archive inflates over {limits.max_ratio} times")
    _check_clashes(seen)
    return kept


def _normalise(raw: str) -> str:
    """An entry's name as it would be written, or ArchiveError("unsafe_path") saying why not."""
    if any(ord(char) < 0x20 or char == "\x7f" for char in raw):  # NUL too: zipfile cuts names there
        raise ArchiveError("unsafe_path", f"{raw!r} holds a control character")
    if "\\" in raw:
        raise ArchiveError("unsafe_path", f"{raw!r} uses '\\' as a separator")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise ArchiveError("unsafe_path", f"{raw!r} is an absolute path")
    parts = [unicodedata.normalize("NFC", part) for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError("unsafe_path", f"{raw!r} climbs out with '..'")
    if any(len(part.encode()) > _MAX_PART_BYTES for part in parts):
        raise ArchiveError("unsafe_path", f"{raw!r} has a name over {_MAX_PART_BYTES} bytes")
    return "/".join(parts)


def _is_junk(name: str) -> bool:
    """What macOS adds to every zip it makes; no package or dataset means to ship it."""
    return name.split("/", 1)[0] == "__MACOSX" or name.rsplit("/", 1)[-1] == ".DS_Store"


def _inflates_too_much(size: int, compressed_size: int, limits: ArchiveLimits) -> bool:
    return size >= limits.ratio_floor_bytes and size > limits.max_ratio * max(compressed_size, 1)


def _check_overlaps(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse entries that share compressed data: the trick that makes a bomb's ratio look honest.

    The local header's extra field is unknown here, so each span is a lower bound: no false alarms.
    """
    spans = sorted(
        (info.header_offset, info.header_offset + _LOCAL_HEADER_BYTES + info.compress_size) for info in infos
    )
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        if end > next_start:
            raise ArchiveError("zip_bomb", "entries overlap one another")


def _check_clashes(names: set[str]) -> None:
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in names:
                raise ArchiveError("duplicate_entry", f"{folder} is both a file and a folder")


def _make_parents(root: Path, name: str, created: list[Path]) -> Path:
    """Create the folders above `name` under `root`, refusing any that is not a real folder of ours."""
    folder = root
    for part in name.split("/")[:-1]:
        folder = folder / part
        try:
            os.mkdir(folder, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise ArchiveError("unsafe_path", f"{name} would be written through a link") from None
        else:
            created.append(folder)
            os.chmod(folder, 0o755)  # whatever the umask
    if not folder.resolve().is_relative_to(root):
        raise ArchiveError("unsafe_path", f"{name} would land outside the destination")
    return folder / name.rsplit("/", 1)[-1]


def _write_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, target: Path, created: list[Path]
) -> int:
    # O_EXCL refuses an existing name, and with O_NOFOLLOW a link planted there: never write through one.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(target, flags, 0o644)
    created.append(target)
    os.fchmod(descriptor, 0o644)
    with os.fdopen(descriptor, "wb") as output, MemberReader(archive, info, name) as reader:
        while chunk := reader.read():
            output.write(chunk)
    return reader.bytes_read


def _undo(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:
            pass  # best effort: the error being raised matters more than this one
