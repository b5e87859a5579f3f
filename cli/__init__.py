"""`trainyard`: the command-line client of a Trainyard API (HTTP only; see README.md here)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trainyard")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
