"""What a package's `requirements.txt` may say: one policy, applied by the API when a package is
uploaded (or trained) and by the agent before pip ever reads the file.

A package is untrusted input, and pip runs with the agent's privileges, so a requirements file may only
name projects (from the index the machine's operator configured) and ask for a few harmless options.
Accepted, one per line (blank lines, `#` comments and `\\` continuations as pip reads them):

- a requirement: `name`, `name[extra,...]`, version clauses (`==`, `>=`, `~=`, ...), an environment
  marker after `;`, and pip's per-requirement `--hash=sha256:...` (also sha384, sha512);
- `--pre`, `--prefer-binary`, `--require-hashes`, `--only-binary <formats>`.

Refused, naming the line:
- `-e`/`--editable` and every local path, archive or URL (`./lib`, `/opt/x`, `x.whl`,
  `name @ https://...`, `git+...`): a package installs what an index serves, nothing of its own;
- `-r`/`-c` (other files), `-i`/`--index-url`, `--extra-index-url`, `--no-index`,
  `-f`/`--find-links`, `--trusted-host`: where packages come from is the machine's choice (its
  `pip.conf` or `PIP_INDEX_URL` in the agent's environment), not the package's;
- `--no-binary`, `--config-settings`, `--global-option` and any other option: they widen what runs
  at install time;
- `${NAME}`: pip would fill it in from the agent's environment, which holds its token.

The file itself must be UTF-8 (a BOM allowed) and at most `MAX_REQUIREMENTS_BYTES`. It lives in
`shared/` so that an upload is refused with the very words a run of it would end with: one copy of
a safety check, not two that drift apart.
"""

import re

from shared.enums import ReasonCode

MAX_REQUIREMENTS_BYTES = 256 * 1024
TOO_LARGE = f"requirements.txt is larger than {MAX_REQUIREMENTS_BYTES} bytes"

# pip strips a comment that starts the line or follows whitespace.
_COMMENT = re.compile(r"(^|\s+)#.*$")
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_CLAUSE = r"(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
_SPECIFIERS = rf"{_CLAUSE}(?:\s*,\s*{_CLAUSE})*"
_MARKER = r"[\w\s.'\"<>=!~(),*+-]+"
_REQUIREMENT = re.compile(
    rf"{_NAME}\s*(?:\[\s*(?:{_NAME}(?:\s*,\s*{_NAME})*)?\s*\])?"
    rf"\s*(?:\(\s*{_SPECIFIERS}\s*\)|{_SPECIFIERS})?\s*(?:;\s*{_MARKER})?"
)
_HASHES = re.compile(r"(?:--hash(?:=|\s+)(?:sha256|sha384|sha512):[0-9a-fA-F]+\s*)+")
_ARCHIVE = re.compile(r"\.(?:whl|zip|tar|tgz|tbz|txz|tar\.gz|tar\.bz2|tar\.xz)\b", re.IGNORECASE)
_FORMATS = re.compile(r"[A-Za-z0-9_.,:-]+")
_FLAGS = frozenset({"--pre", "--prefer-binary", "--require-hashes"})
_WITH_VALUE = frozenset({"--only-binary"})
_REASONS = {
    "-e": "editable installs are refused: a package installs from the index, not from its own files",
    "--editable": "editable installs are refused: a package installs from the index, not from its own files",
    "-r": "other requirement files are refused",
    "--requirement": "other requirement files are refused",
    "-c": "constraint files are refused",
    "--constraint": "constraint files are refused",
}
_INDEX_REASON = "package indexes are the machine's choice (pip.conf, PIP_INDEX_URL), not the package's"
for _option in (
    "-i",
    "--index-url",
    "--extra-index-url",
    "--no-index",
    "-f",
    "--find-links",
    "--trusted-host",
):
    _REASONS[_option] = _INDEX_REASON


class RequirementRefused(ValueError):
    """A `requirements.txt` the policy above refuses; the message names the line, or says what is wrong
    with the file. `code` is the run's `reason_code`, and the upload's problem code, alike."""

    code = ReasonCode.INVALID_PACKAGE.value


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first physical line number, text) of each logical line, continuations joined as pip does."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        lines.append((start, "".join(pending)))
        pending = []
    if pending:
        lines.append((start, "".join(pending)))
    return lines


def _check_option(line: str) -> str | None:
    """Why an option line is refused, or None."""
    name, value = _split_option(line)
    if name in _FLAGS:
        return None if not value else f"{name} takes no value"
    if name in _WITH_VALUE:
        return None if _FORMATS.fullmatch(value) else f"{name} needs formats such as :all: or numpy,scipy"
    for short in ("-e", "-r", "-c", "-i", "-f"):
        if name.startswith(short) and name not in _REASONS:
            name = short  # `-e.`, `-rother.txt`: a short option glued to its value
    return _REASONS.get(name, "this option is not in the agent's safe set")


def _split_option(line: str) -> tuple[str, str]:
    """`--name=value`, `--name value` or `--name` as (name, value)."""
    match = re.match(r"(-[^=\s]*)(?:=|\s+)?(.*)", line)
    assert match is not None  # the line starts with "-"
    return match.group(1), match.group(2).strip()


def _check_requirement(line: str) -> str | None:
    """Why a requirement line is refused, or None."""
    spec, _, options = line.partition(" -")
    if options and not _HASHES.fullmatch("-" + options.strip()):
        return "the only option allowed after a requirement is --hash"
    spec = spec.strip()
    before_marker = spec.partition(";")[0]
    if "@" in before_marker or "://" in before_marker:
        return "direct references (name @ url) and URLs are refused: name a project on the index"
    if (
        any(char in before_marker for char in "/\\~")
        or before_marker.startswith(".")
        or _ARCHIVE.search(before_marker)
    ):
        return "local paths and archives are refused: name a project on the index"
    if not _REQUIREMENT.fullmatch(spec):
        return "not a requirement of the form name[extras] <version clauses> ; <marker>"
    return None


def check_requirements(text: str) -> list[str]:
    """The requirement and option lines of `text`, each checked.

    Raises `RequirementRefused` naming the first line the policy refuses.
    """
    accepted: list[str] = []
    for number, raw in _logical_lines(text):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        if "${" in line:
            reason: str | None = "${...} is refused: pip would fill it in from the agent's environment"
        elif line.startswith("-"):
            reason = _check_option(line)
        else:
            reason = _check_requirement(line)
        if reason is not None:
            raise RequirementRefused(f"requirements.txt line {number}, {line[:200]!r}: {reason}")
        accepted.append(line)
    return accepted


def check_requirements_file(content: bytes) -> list[str]:
    """`check_requirements` on a file's bytes, which must be UTF-8 and at most `MAX_REQUIREMENTS_BYTES`."""
    if len(content) > MAX_REQUIREMENTS_BYTES:
        raise RequirementRefused(TOO_LARGE)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RequirementRefused("requirements.txt is not UTF-8 text") from None
    return check_requirements(text)
