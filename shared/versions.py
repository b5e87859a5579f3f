"""Package version numbers: `MAJOR.MINOR` (DESIGN.md, "Names fixed across the project").

An upload takes the next major (1.0, 2.0, ...); a trained version takes one above the highest minor ever
given in its major line; numbers are never reused, so the allocator works from the highest ever given,
not from the versions that still exist.
"""

import re
from dataclasses import dataclass

_VERSION = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> "Version":
        match = _VERSION.fullmatch(text)
        if match is None or match.group(1) == "0":
            raise ValueError(f"{text!r} is not a package version (MAJOR.MINOR, MAJOR >= 1)")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def next_upload_version(highest_major_ever: int) -> Version:
    return Version(highest_major_ever + 1, 0)


def next_trained_version(major: int, highest_minor_ever: int) -> Version:
    return Version(major, highest_minor_ever + 1)
