"""The daemon on each target machine; `runtime/` is what runs inside a training run."""

__version__ = "0.1.0"
