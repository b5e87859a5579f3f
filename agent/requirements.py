"""What a package's `requirements.txt` may say: the policy lives in `shared.requirements`, where the
API applies it to every package it stores, so that an upload is refused with the words a run would
end with. Re-exported here for the agent's imports."""

from shared.requirements import (
    MAX_REQUIREMENTS_BYTES,
    TOO_LARGE,
    RequirementRefused,
    check_requirements,
    check_requirements_file,
)

__all__ = [
    "MAX_REQUIREMENTS_BYTES",
    "TOO_LARGE",
    "RequirementRefused",
    "check_requirements",
    "check_requirements_file",
]
