"""The console's pages, one module each: a module declares `PAGE` (its slug in `api/console/nav.py`)
and `router` (its routes under `/ui/`), and `install_console` includes every module found here."""

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType


def page_modules() -> Iterator[ModuleType]:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda found: found.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")
