"""Rules for the names people give and for template parameter names (DESIGN.md)."""

import re
import unicodedata

NAME_MAX_LENGTH = 128
_NAME_PUNCTUATION = frozenset("-_.")


class InvalidName(ValueError):
    pass


def normalize_name(value: str) -> str:
    """Return the NFC form of a name people give, or raise InvalidName saying why.

    Letters of any alphabet (with their combining marks), digits, `-`, `_` and `.`; 1 to 128 characters
    after normalisation; not only dots (so `.` and `..` never name anything).
    """
    name = unicodedata.normalize("NFC", value)
    if not name:
        raise InvalidName("must not be empty")
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidName(f"must be at most {NAME_MAX_LENGTH} characters")
    for char in name:
        if char in _NAME_PUNCTUATION:
            continue
        if unicodedata.category(char)[0] not in "LMN":
            raise InvalidName(f"must not contain {char!r}: use letters, digits, '-', '_' and '.'")
    if unicodedata.category(name[0])[0] == "M":
        raise InvalidName("must not start with a combining mark")
    if set(name) == {"."}:
        raise InvalidName("must not consist of dots only")
    return name


PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The run's own environment (DESIGN.md, "What runs on the target machine"): a parameter may not shadow it.
RESERVED_PARAMETER_NAMES = frozenset(
    {
        "data_directory",
        "test_data_directory",
        "training_data_directory",  # a full pipeline's split (docs/pipelines.md)
        "evaluation_data_directory",
        "artifacts_directory",
        "save_training_data",
        "augmentation",
        "CUDA_VISIBLE_DEVICES",
        "PATH",
        "HOME",
        "USER",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)
# The executor's own parameters, not the package's (docs/executors.md): a template may name them
# whatever the package declares; the agent uses each only when its administrator allows the value.
EXECUTOR_PARAMETERS = frozenset({"slurm_partition", "slurm_account", "slurm_qos"})
# SLURM_ and the like: Slurm's commands read them as options (docs/executors.md).
RESERVED_PARAMETER_PREFIXES = (
    "LD_",
    "PYTHON",
    "CUDA_",
    "NCCL_",
    "TRAINYARD_",
    "SLURM_",
    "SBATCH_",
    "SALLOC_",
    "SRUN_",
    "PMI_",
    "PMIX_",
)


def check_parameter_name(name: str) -> None:
    """Raise InvalidName unless `name` can be handed to a run as an environment variable of its own."""
    if not PARAMETER_NAME.fullmatch(name):
        raise InvalidName("must match [A-Za-z_][A-Za-z0-9_]*")
    if name in RESERVED_PARAMETER_NAMES or name.startswith(RESERVED_PARAMETER_PREFIXES):
        raise InvalidName("is reserved for the run's own environment")


def normalize_relative_path(value: str) -> str:
    """A sub-folder inside a dataset: relative, `/`-separated, no `..`, no empty or `.` parts."""
    if value.startswith("/") or "\\" in value or "\x00" in value:
        raise InvalidName("must be a relative path with '/' separators")
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if not parts:
        raise InvalidName("must name a sub-folder")
    if any(part == ".." for part in parts):
        raise InvalidName("must not contain '..'")
    return "/".join(unicodedata.normalize("NFC", part) for part in parts)
