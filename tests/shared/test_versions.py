"""Package version numbers `MAJOR.MINOR` and their allocation (DESIGN.md, "package versions")."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shared.versions import Version, next_trained_version, next_upload_version

MAJORS = st.integers(min_value=1, max_value=999_999_999)
MINORS = st.integers(min_value=0, max_value=999_999_999)
VERSIONS = st.builds(Version, MAJORS, MINORS)


@pytest.mark.parametrize(
    ("text", "major", "minor"),
    [
        ("1.0", 1, 0),
        ("1.1", 1, 1),
        ("2.15", 2, 15),
        ("10.0", 10, 0),
        ("999999999.999999999", 999_999_999, 999_999_999),
    ],
)
def test_parse_reads_major_and_minor_and_str_gives_the_text_back(text: str, major: int, minor: int) -> None:
    version = Version.parse(text)
    assert (version.major, version.minor) == (major, minor)
    assert str(version) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.",
        ".1",
        "0.0",  # majors start at 1: the first upload is 1.0
        "0.1",
        "01.0",  # one spelling per version: no leading zeros
        "1.01",
        "1.0.0",
        "v1.0",
        "1.0a",
        " 1.0",
        "1.0 ",
        "1.0\n",
        "-1.0",
        "1.-1",
        "+1.0",
        "1,0",
        "1_0.0",
        "1e2.0",
        "\u0661.\u0660",  # Arabic-Indic digits are digits to `\d`, but not version numbers
        "\uff11.\uff10",  # fullwidth digits
        "1.\u0660",
        "latest",
    ],
)
def test_invalid_versions_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a package version"):
        Version.parse(text)


def test_versions_order_numerically_not_as_text() -> None:
    texts = ["10.0", "1.10", "2.0", "1.2", "1.9", "1.0", "2.1"]
    ordered = sorted(Version.parse(t) for t in texts)
    assert [str(v) for v in ordered] == ["1.0", "1.2", "1.9", "1.10", "2.0", "2.1", "10.0"]
    assert Version.parse("1.10") > Version.parse("1.9")
    assert Version.parse("2.0") > Version.parse("1.999")
    assert Version.parse("1.2") == Version(1, 2)


def test_versions_are_values() -> None:
    assert len({Version.parse("1.2"), Version(1, 2), Version.parse("1.3")}) == 2
    with pytest.raises(AttributeError):
        Version(1, 2).major = 3  # type: ignore[misc]


@given(VERSIONS)
def test_parse_and_str_round_trip(version: Version) -> None:
    assert Version.parse(str(version)) == version


@given(st.text(alphabet="0123456789.-+ v\n\u0661", max_size=24))
@example("1.00")
@example("00.1")
def test_anything_parse_accepts_is_the_one_spelling_of_its_version(text: str) -> None:
    try:
        version = Version.parse(text)
    except ValueError:
        return
    assert str(version) == text
    assert version.major >= 1 and version.minor >= 0


@given(VERSIONS, VERSIONS)
def test_ordering_is_major_then_minor(a: Version, b: Version) -> None:
    assert (a < b) == ((a.major, a.minor) < (b.major, b.minor))
    assert (a == b) == (str(a) == str(b))


def test_uploads_take_the_next_major() -> None:
    assert next_upload_version(0) == Version(1, 0)
    assert next_upload_version(1) == Version(2, 0)
    assert str(next_upload_version(41)) == "42.0"


def test_trained_versions_count_up_the_minor_line() -> None:
    """1.0 -> 1.1 -> 1.2, as DESIGN.md's example."""
    line = [Version(1, 0)]
    for _ in range(2):
        line.append(next_trained_version(1, line[-1].minor))
    assert [str(v) for v in line] == ["1.0", "1.1", "1.2"]


@given(MAJORS, MINORS)
def test_a_trained_version_is_above_every_version_ever_given_in_its_line(major: int, highest: int) -> None:
    made = next_trained_version(major, highest)
    assert made.major == major
    assert made.minor == highest + 1
    assert made > Version(major, highest)
    assert made < Version(major + 1, 0)
    assert Version.parse(str(made)) == made if made.minor <= 999_999_999 else True


@given(st.integers(min_value=0, max_value=999_999_998), VERSIONS)
def test_an_upload_is_above_every_version_of_the_majors_before_it(highest_major: int, other: Version) -> None:
    made = next_upload_version(highest_major)
    assert made.minor == 0 and made.major == highest_major + 1
    if other.major <= highest_major:
        assert made > other
    assert Version.parse(str(made)) == made
