"""The names people give, template parameter names and dataset sub-paths (DESIGN.md, "Names fixed")."""

import re
import unicodedata
from typing import Final

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from shared.names import (
    NAME_MAX_LENGTH,
    InvalidName,
    check_parameter_name,
    normalize_name,
    normalize_relative_path,
)

NFD: Final = "NFD"

ACCEPTED = [
    "Классификатор-счетов_v1.2",  # Cyrillic, the example of the API's own documentation
    "分类器_第一版",  # Chinese
    "請求書モデル-2",  # Japanese: kanji and katakana
    "한국어_모델",  # Hangul
    "café-crème",  # Latin with accents
    "Ærøskøbing.Ünïcödé",
    "μοντέλο",  # Greek
    "نموذج_١٢",  # Arabic letters and Arabic-Indic digits
    "हिन्दी-मॉडल",  # Devanagari: vowel signs and virama are combining marks
    "नमस्ते",
    "a",
    "_",
    "-",
    "0",
    "v1.2.3",
    ".hidden",
    "a..b",
    "...a",
    "x" * NAME_MAX_LENGTH,
]

REFUSED = {
    "": "empty",
    ".": "a dot",
    "..": "two dots",
    "...": "dots only",
    "a b": "a space",
    " a": "a leading space",
    "a ": "a trailing space",
    "a/b": "a slash",
    "a\\b": "a backslash",
    "a:b": "a colon",
    "a@b": "an at sign",
    "a+b": "a plus",
    "a%2Fb": "a percent sign",
    "a\x00b": "NUL",
    "a\nb": "a newline",
    "a\tb": "a tab",
    "a\rb": "a carriage return",
    "\x1b[31mred": "an escape sequence",
    "a\x7fb": "DEL",
    "a\u0085b": "a C1 control",
    "a\u00a0b": "a no-break space",
    "a\u200bb": "a zero-width space",
    "a\u202eb": "a right-to-left override",
    "a\ufeffb": "a byte-order mark",
    "model😀": "an emoji",
    "\u0301a": "a leading combining mark",
    "x" * (NAME_MAX_LENGTH + 1): "129 characters",
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_names_of_any_alphabet_are_accepted_as_given(name: str) -> None:
    assert unicodedata.is_normalized("NFC", name)
    assert normalize_name(name) == name


@pytest.mark.parametrize("name", ACCEPTED)
def test_a_decomposed_name_is_stored_composed(name: str) -> None:
    decomposed = unicodedata.normalize(NFD, name)
    assert normalize_name(decomposed) == name


def test_decomposition_really_changes_the_accented_examples() -> None:
    """Guards the test above: it must exercise names whose NFD differs from their NFC."""
    for name in ("café-crème", "Ærøskøbing.Ünïcödé", "한국어_모델"):
        assert unicodedata.normalize(NFD, name) != name


def test_devanagari_marks_are_part_of_the_name() -> None:
    name = "हिन्दी-मॉडल"
    assert any(unicodedata.category(c).startswith("M") for c in name)
    assert normalize_name(name) == name
    # QA (U+0958) is excluded from composition: its NFC is KA followed by the combining NUKTA.
    assert normalize_name("\u0958ा") == "\u0915\u093cा"


def test_hangul_jamo_compose_into_syllables() -> None:
    assert normalize_name("\u1100\u1161\u11a8") == "각"


def test_the_length_limit_counts_characters_after_composition() -> None:
    composed = "é" * NAME_MAX_LENGTH
    decomposed = unicodedata.normalize(NFD, composed)
    assert len(decomposed) == 2 * NAME_MAX_LENGTH
    assert normalize_name(decomposed) == composed
    with pytest.raises(InvalidName):
        normalize_name(unicodedata.normalize(NFD, "é" * (NAME_MAX_LENGTH + 1)))


@pytest.mark.parametrize("name", list(REFUSED), ids=list(REFUSED.values()))
def test_refused_names(name: str) -> None:
    with pytest.raises(InvalidName) as raised:
        normalize_name(name)
    assert isinstance(raised.value, ValueError)  # pydantic turns it into a validation error
    assert str(raised.value)  # says why


def test_refusals_say_why() -> None:
    with pytest.raises(InvalidName, match="empty"):
        normalize_name("")
    with pytest.raises(InvalidName, match="128"):
        normalize_name("x" * 129)
    with pytest.raises(InvalidName, match="dots"):
        normalize_name("..")
    with pytest.raises(InvalidName, match="'/'"):
        normalize_name("a/b")


# -- properties ------------------------------------------------------------------------------------

_ALLOWED_PUNCTUATION = "-_."


def _matches_the_rule(name: str) -> bool:
    """DESIGN.md's rule, written out independently of shared/names.py."""
    return (
        1 <= len(name) <= NAME_MAX_LENGTH
        and unicodedata.is_normalized("NFC", name)
        and all(c in _ALLOWED_PUNCTUATION or unicodedata.category(c)[0] in "LMN" for c in name)
        and unicodedata.category(name[0])[0] != "M"
        and set(name) != {"."}
    )


@given(st.text(max_size=140))
@example("e\u0301")
@example("..")
@example("\u0301")
def test_normalize_name_is_idempotent_and_anything_accepted_matches_the_rule(text: str) -> None:
    try:
        name = normalize_name(text)
    except InvalidName:
        return
    assert normalize_name(name) == name
    assert name == unicodedata.normalize("NFC", text)
    assert _matches_the_rule(name), repr(name)


_NAME_CHARACTERS = st.characters(categories=["L", "N"], include_characters=_ALLOWED_PUNCTUATION)


@given(st.text(_NAME_CHARACTERS, min_size=1, max_size=NAME_MAX_LENGTH))
def test_every_name_made_of_letters_digits_and_punctuation_is_accepted(text: str) -> None:
    assume(set(text) != {"."})
    name = normalize_name(text)
    assert name == unicodedata.normalize("NFC", text)


@given(st.text(min_size=1, max_size=20))
def test_a_name_and_its_decomposed_twin_are_the_same_name(text: str) -> None:
    """Whatever a client's keyboard produces, NFC and NFD spellings land on one stored name."""
    try:
        composed = normalize_name(unicodedata.normalize("NFC", text))
    except InvalidName:
        with pytest.raises(InvalidName):
            normalize_name(unicodedata.normalize(NFD, text))
        return
    assert normalize_name(unicodedata.normalize(NFD, text)) == composed


# -- template parameter names ------------------------------------------------------------------------

# DESIGN.md, "What runs on the target machine", copied here rather than imported from the code.
DESIGN_RESERVED_NAMES = [
    "data_directory",
    "test_data_directory",
    "artifacts_directory",
    "save_training_data",
    "augmentation",
    "CUDA_VISIBLE_DEVICES",
    "TRAINYARD_PARAMETERS_FILE",
    "PATH",
    "HOME",
    "USER",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
]
DESIGN_RESERVED_PREFIXES = ["LD_", "PYTHON", "CUDA_", "NCCL_", "TRAINYARD_"]
RESERVED_PREFIXED = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHON",
    "CUDA_HOME",
    "CUDA_",
    "NCCL_DEBUG",
    "NCCL_SOCKET_IFNAME",
    "TRAINYARD_AGENT_TOKEN",
    "TRAINYARD_",
]
GOOD_PARAMETER_NAMES = [
    "epochs",
    "batch_size",
    "learning_rate",
    "_private",
    "Lr2",
    "x",
    "RANKING",  # only the exact names are reserved...
    "USERNAME",
    "HOMEWORK",
    "PATHS",
    "LD",  # ...and the prefixes with their underscore
    "path",  # environment variables are case-sensitive
    "cuda_device_hint",
    "dataset_directory",
]
BAD_PARAMETER_NAMES = [
    "",
    "1epochs",
    "batch-size",
    "learning.rate",
    "a b",
    "é",
    "epochs\n",
    "epochs\x00",
    "$X",
]


@pytest.mark.parametrize("name", GOOD_PARAMETER_NAMES)
def test_parameter_names_that_can_be_environment_variables(name: str) -> None:
    check_parameter_name(name)


@pytest.mark.parametrize("name", BAD_PARAMETER_NAMES)
def test_parameter_names_outside_the_pattern_are_refused(name: str) -> None:
    with pytest.raises(InvalidName, match=re.escape("[A-Za-z_][A-Za-z0-9_]*")):
        check_parameter_name(name)


@pytest.mark.parametrize("name", DESIGN_RESERVED_NAMES + RESERVED_PREFIXED)
def test_reserved_parameter_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName, match="reserved"):
        check_parameter_name(name)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@given(st.from_regex(_ENV_NAME, fullmatch=True) | st.text(max_size=12))
@example("PYTHONPATH")
@example("LD_")
def test_a_parameter_name_is_accepted_exactly_when_the_design_allows_it(name: str) -> None:
    allowed = (
        _ENV_NAME.fullmatch(name) is not None
        and name not in DESIGN_RESERVED_NAMES
        and not any(name.startswith(prefix) for prefix in DESIGN_RESERVED_PREFIXES)
    )
    try:
        check_parameter_name(name)
    except InvalidName:
        assert not allowed, name
    else:
        assert allowed, name


# -- dataset sub-paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_path", "stored"),
    [
        ("images", "images"),
        ("images/train", "images/train"),
        ("./images//train/", "images/train"),
        (unicodedata.normalize(NFD, "données/été"), "données/été"),
    ],
)
def test_dataset_paths_are_normalised(given_path: str, stored: str) -> None:
    assert normalize_relative_path(given_path) == stored


@pytest.mark.parametrize("bad", ["", "/", ".", "./", "/etc", "..", "../x", "a/../../b", "a\\b", "a\x00b"])
def test_dataset_paths_that_could_leave_the_dataset_are_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        normalize_relative_path(bad)
