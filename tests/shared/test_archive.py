"""Zip archives are hostile until proven otherwise: every trick is refused, and a refusal leaves nothing."""

import os
import random
import stat
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.archive import (
    ArchiveError,
    ArchiveLimits,
    common_single_top_folder,
    extract_zip,
    inspect_zip,
    iter_entries,
    read_member,
)

MiB = 1024 * 1024
Entry = tuple[str | zipfile.ZipInfo, bytes]


def make_zip(path: Path, entries: list[Entry], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compression) as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests want
        for name, data in entries:
            archive.writestr(name, data)
    return path


def patch_central_header(path: Path, name: str, offset: int, fmt: str, value: int) -> None:
    """Overwrite one field of `name`'s central-directory record: what zipfile believes about it."""
    data = bytearray(path.read_bytes())
    start = data.index(b"PK\x01\x02")
    while True:
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, start + 28)
        if data[start + 46 : start + 46 + name_length] == name.encode():
            break
        start += 46 + name_length + extra_length + comment_length
    struct.pack_into(fmt, data, start + offset, value)
    path.write_bytes(bytes(data))


def refusal(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> str:
    with pytest.raises(ArchiveError) as raised:
        inspect_zip(path, limits)
    return raised.value.code


def extract_refusal(path: Path, destination: Path, limits: ArchiveLimits = ArchiveLimits()) -> str:
    with pytest.raises(ArchiveError) as raised:
        extract_zip(path, destination, limits)
    assert list(destination.iterdir()) == []
    return raised.value.code


@pytest.fixture
def destination(tmp_path: Path) -> Path:
    return tmp_path / "out" / "run"


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../evil", "a/../../b", "a\\..\\evil", "C:/Windows/evil.dll", "c:evil", "a/\x01b"]
)
def test_unsafe_names_are_refused(tmp_path: Path, destination: Path, name: str) -> None:
    archive = make_zip(tmp_path / "a.zip", [("train.py", b"ok"), (name, b"evil")])

    assert refusal(archive) == "unsafe_path"
    assert extract_refusal(archive, destination) == "unsafe_path"
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "evil").exists()


def test_a_nul_byte_in_a_name_is_refused_not_truncated(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("evil.pyXignored", b"evil")])
    archive.write_bytes(archive.read_bytes().replace(b"evil.pyXignored", b"evil.py\x00ignored"))

    assert refusal(archive) == "unsafe_path"


def test_symlinks_are_refused(tmp_path: Path, destination: Path) -> None:
    link = zipfile.ZipInfo("data/link")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    archive = make_zip(tmp_path / "a.zip", [("train.py", b"ok"), (link, b"/etc/passwd")])

    assert refusal(archive) == "symlink"
    assert extract_refusal(archive, destination) == "symlink"


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["a.txt", "a.txt"], id="same-name"),
        pytest.param(["caf\u00e9.txt", "cafe\u0301.txt"], id="same-after-nfc"),
        pytest.param(["x/a.txt", "x//a.txt"], id="same-after-empty-parts"),
        pytest.param(["a", "a/b.txt"], id="file-and-folder"),
    ],
)
def test_duplicates_are_refused(tmp_path: Path, names: list[str]) -> None:
    archive = make_zip(tmp_path / "a.zip", [(name, b"x") for name in names])

    assert refusal(archive) == "duplicate_entry"


def test_too_many_files(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [(f"f{i}.txt", b"x") for i in range(4)])

    assert refusal(archive, ArchiveLimits(max_files=3)) == "too_many_files"
    assert len(inspect_zip(archive, ArchiveLimits(max_files=4)).entries) == 4


def test_declared_sizes_over_the_limits(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("a.bin", b"x" * 10), ("b.bin", b"y" * 10)])

    assert refusal(archive, ArchiveLimits(max_file_bytes=9)) == "too_large"
    assert refusal(archive, ArchiveLimits(max_total_bytes=19)) == "too_large"
    assert inspect_zip(archive, ArchiveLimits(max_file_bytes=10, max_total_bytes=20)).total_bytes == 20


@pytest.fixture(scope="module")
def zeros_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 MB of zeros in about 100 KB, written a MiB at a time."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zeros = bytes(MiB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("zeros.bin", "w") as out:
        for _ in range(100):
            out.write(zeros)
    return path


def test_a_ratio_bomb_is_refused_without_inflating_it(
    zeros_bomb: Path, destination: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert zeros_bomb.stat().st_size < MiB

    def never_inflate(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", never_inflate)
    with pytest.raises(ArchiveError, match="inflates over 200 times"):
        inspect_zip(zeros_bomb)
    assert extract_refusal(zeros_bomb, destination) == "zip_bomb"


def test_small_archives_that_compress_well_are_not_bombs(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("labels.csv", b"0,0,0\n" * 100_000)])

    assert inspect_zip(archive).entries[0].size == 600_000


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("a.txt", b"a" * 100), ("b.txt", b"b" * 100)])
    patch_central_header(archive, "b.txt", 42, "<I", 0)  # b's data is now a's

    with pytest.raises(ArchiveError, match="overlap") as raised:
        inspect_zip(archive)
    assert raised.value.code == "zip_bomb"


@pytest.fixture
def liar(tmp_path: Path) -> Path:
    """`data.txt` declares 100 bytes and inflates to 120,000; an honest file comes first."""
    archive = make_zip(
        tmp_path / "liar.zip", [("first.txt", b"honest"), ("data.txt", b"hello world\n" * 10_000)]
    )
    patch_central_header(archive, "data.txt", 24, "<I", 100)
    return archive


def test_a_header_that_understates_its_size_is_caught_while_inflating(liar: Path, destination: Path) -> None:
    assert [entry.size for entry in inspect_zip(liar).entries] == [6, 100]  # the lie passes a static look

    assert extract_refusal(liar, destination) == "zip_bomb"
    with pytest.raises(ArchiveError, match="more than the 100 bytes") as raised:
        read_member(liar, "data.txt", max_bytes=1000)
    assert raised.value.code == "zip_bomb"


def test_a_forged_size_is_named_a_bomb_even_when_the_crc_is_forged_too(liar: Path, destination: Path) -> None:
    patch_central_header(liar, "data.txt", 16, "<I", 0x12345678)

    assert extract_refusal(liar, destination) == "zip_bomb"


def test_iter_entries_catches_the_lie_even_when_the_caller_stops_reading(liar: Path) -> None:
    entries = iter_entries(liar)
    for name, size, reader in entries:
        if name == "data.txt":
            assert reader.read(size) == b"hello world\n" * 8 + b"hell"
            with pytest.raises(ArchiveError) as raised:
                next(entries)  # finishing data.txt reads past what it declared
            assert raised.value.code == "zip_bomb"
            return
    pytest.fail("data.txt was never reached")


@pytest.mark.parametrize(
    ("offset", "fmt", "value"),
    [pytest.param(24, "<I", 120_010, id="overstated-size"), pytest.param(16, "<I", 0x12345678, id="bad-crc")],
)
def test_damaged_content_is_refused_while_extracting(
    tmp_path: Path, destination: Path, offset: int, fmt: str, value: int
) -> None:
    archive = make_zip(
        tmp_path / "a.zip", [("first.txt", b"honest"), ("data.txt", b"hello world\n" * 10_000)]
    )
    patch_central_header(archive, "data.txt", offset, fmt, value)

    assert extract_refusal(archive, destination) == "corrupt"


def test_encrypted_entries_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("train.py", b"secret")])
    patch_central_header(archive, "train.py", 8, "<H", 0x1)

    assert refusal(archive) == "encrypted"


def test_compression_methods_zipfile_cannot_bound_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("train.py", b"x")], compression=zipfile.ZIP_BZIP2)

    assert refusal(archive) == "unsupported_compression"


@pytest.mark.parametrize("content", [b"", b"just some text, not a zip", b"PK\x03\x04" + b"\x00" * 100])
def test_what_is_not_a_zip_is_refused(tmp_path: Path, destination: Path, content: bytes) -> None:
    path = tmp_path / "upload.zip"
    path.write_bytes(content)

    assert refusal(path) == "not_a_zip"
    assert extract_refusal(path, destination) == "not_a_zip"


@pytest.fixture
def restrictive_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("restrictive_umask")
def test_a_package_with_train_py_at_its_root(tmp_path: Path, destination: Path) -> None:
    weights = random.Random(1).randbytes(3 * MiB + 3)
    archive = make_zip(
        tmp_path / "pkg.zip",
        [("train.py", b"class Main: ...\n"), ("models/", b""), ("models/weights.bin", weights)],
    )

    inventory = inspect_zip(archive)
    extracted = extract_zip(archive, destination)

    assert inventory.root_prefix == ""
    assert inventory.names == {"train.py", "models/weights.bin"}
    assert [(file.name, file.size) for file in extracted] == [
        ("train.py", 16),
        ("models/weights.bin", len(weights)),
    ]
    assert (destination / "models" / "weights.bin").read_bytes() == weights
    assert stat.S_IMODE((destination / "train.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((destination / "models").stat().st_mode) == 0o755


def test_a_package_wrapped_in_one_folder_is_extracted_from_inside_it(
    tmp_path: Path, destination: Path
) -> None:
    archive = make_zip(
        tmp_path / "pkg.zip",
        [
            ("my_pkg/", b""),
            ("my_pkg/train.py", b"class Main: ..."),
            ("my_pkg/./lib//util.py", b"x = 1"),
            ("__MACOSX/my_pkg/._train.py", b"resource fork"),
            ("my_pkg/.DS_Store", b"finder"),
        ],
        compression=zipfile.ZIP_STORED,
    )

    inventory = inspect_zip(archive)
    extracted = extract_zip(archive, destination, strip_prefix=inventory.root_prefix)

    assert inventory.root_prefix == "my_pkg/"
    assert inventory.names == {"my_pkg/train.py", "my_pkg/lib/util.py"}
    assert sorted(file.name for file in extracted) == ["lib/util.py", "train.py"]
    assert sorted(str(path.relative_to(destination)) for path in destination.rglob("*")) == [
        "lib",
        "lib/util.py",
        "train.py",
    ]
    assert read_member(archive, "my_pkg/train.py", max_bytes=100) == b"class Main: ..."


def test_names_are_normalised_to_nfc(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("cafe\u0301/photo.jpg", b"x")])

    assert inspect_zip(archive).names == {"caf\u00e9/photo.jpg"}
    assert read_member(archive, "cafe\u0301/photo.jpg", max_bytes=1) == b"x"


def test_iter_entries_streams_every_file(tmp_path: Path) -> None:
    content = random.Random(2).randbytes(2 * MiB + 1)
    archive = make_zip(tmp_path / "data.zip", [("images/a.png", content), ("labels.csv", b"a,1\n")])

    seen = {name: (size, b"".join(iter(reader.read, b""))) for name, size, reader in iter_entries(archive)}

    assert seen == {"images/a.png": (len(content), content), "labels.csv": (4, b"a,1\n")}


def test_read_member_refuses_what_is_too_large_or_missing(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("parameters.json", b"{}" * 100)])

    with pytest.raises(ArchiveError) as too_large:
        read_member(archive, "parameters.json", max_bytes=199)
    with pytest.raises(ArchiveError) as missing:
        read_member(archive, "train.py", max_bytes=1000)
    assert (too_large.value.code, missing.value.code) == ("too_large", "missing_member")


def test_extraction_needs_an_empty_destination(tmp_path: Path, destination: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("train.py", b"x")])
    destination.mkdir(parents=True)
    (destination / "train.py").write_bytes(b"already here")

    with pytest.raises(ValueError, match="not empty"):
        extract_zip(archive, destination)
    assert (destination / "train.py").read_bytes() == b"already here"


@pytest.mark.parametrize(
    ("names", "prefix"),
    [
        ([], ""),
        (["train.py"], ""),
        (["pkg/train.py", "pkg/lib/a.py"], "pkg/"),
        (["pkg/train.py", "other/a.py"], ""),
        (["pkg/train.py", "train.py"], ""),
        (["a/b/c.py"], "a/"),
    ],
)
def test_common_single_top_folder(names: list[str], prefix: str) -> None:
    assert common_single_top_folder(names) == prefix
