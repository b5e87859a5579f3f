"""The requirements policy's file-level checks, shared by the API's upload and the agent's install.

The line-by-line policy is tested where the agent uses it (`tests/agent/test_requirements.py`)."""

import pytest

from shared.enums import ReasonCode
from shared.requirements import MAX_REQUIREMENTS_BYTES, RequirementRefused, check_requirements_file


def test_a_file_is_read_as_pip_reads_it() -> None:
    assert check_requirements_file(b"\xef\xbb\xbfnumpy\r\n# c\r\ntorch>=2\r\n") == ["numpy", "torch>=2"]
    assert check_requirements_file(b"numpy\n" + b"#" * (MAX_REQUIREMENTS_BYTES - 7) + b"\n") == ["numpy"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"numpy\n\xff\n", "requirements.txt is not UTF-8 text"),
        (
            b"#" * (MAX_REQUIREMENTS_BYTES + 1),
            f"requirements.txt is larger than {MAX_REQUIREMENTS_BYTES} bytes",
        ),
        (b"numpy\n-e .\n", "requirements.txt line 2, '-e .': editable installs are refused"),
    ],
)
def test_a_file_the_policy_refuses_says_why_with_the_runs_reason(content: bytes, message: str) -> None:
    with pytest.raises(RequirementRefused) as refused:
        check_requirements_file(content)
    assert str(refused.value).startswith(message)
    assert refused.value.code == ReasonCode.INVALID_PACKAGE.value
