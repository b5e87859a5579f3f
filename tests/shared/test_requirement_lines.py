"""The agent's policy on what a package's requirements.txt may say."""

import pytest

from shared.requirements import RequirementRefused, check_requirements


def test_requirements_and_safe_options_are_kept() -> None:
    text = (
        "# a comment\n"
        "\n"
        "numpy\n"
        "torch>=2.1  # the machine's own\n"
        'scikit-learn[alldeps] >= 1.3, <2 ; python_version >= "3.8"\n'
        "requests (>=2)\n"
        "six==1.17.0 \\\n"
        "    --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274\n"
        "--pre\n"
        "--prefer-binary\n"
        "--only-binary :all:\n"
        "--require-hashes\n"
    )
    assert check_requirements(text) == [
        "numpy",
        "torch>=2.1",
        'scikit-learn[alldeps] >= 1.3, <2 ; python_version >= "3.8"',
        "requests (>=2)",
        "six==1.17.0     --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274",
        "--pre",
        "--prefer-binary",
        "--only-binary :all:",
        "--require-hashes",
    ]


@pytest.mark.parametrize(
    "line",
    [
        "-e .",
        "-e.",
        "--editable=git+https://example.org/x.git",
        "-r other.txt",
        "-c constraints.txt",
        "-i https://example.org/simple",
        "--index-url=https://example.org/simple",
        "--extra-index-url https://example.org/simple",
        "--no-index",
        "-f /opt/wheels",
        "--find-links=https://example.org/wheels",
        "--trusted-host example.org",
        "--no-binary :all:",
        "--only-binary",
        "--pre=1",
        "--use-feature=truststore",
        "./vendored",
        "../sibling",
        "/opt/package",
        "~/package",
        "vendored.whl",
        "pkg-1.0.tar.gz",
        "name @ https://example.org/name-1.0.whl",
        "name @ file:///opt/name",
        "git+https://example.org/name.git",
        "https://example.org/name-1.0.tar.gz",
        "name==1 --config-settings key=value",
        "name --global-option=build_ext",
        "name==${TRAINYARD_AGENT_TOKEN}",
        "not a requirement at all",
    ],
)
def test_a_refused_line_is_named(line: str) -> None:
    with pytest.raises(RequirementRefused) as caught:
        check_requirements(f"numpy\n# fine so far\n{line}\n")
    assert "line 3" in str(caught.value)
    assert repr(line) in str(caught.value)


def test_a_continued_line_is_named_by_its_first_line() -> None:
    with pytest.raises(RequirementRefused, match="line 2"):
        check_requirements("numpy\n-e \\\n  .\n")
