"""Public names of a package imported on first use (PEP 562).

Importing any part of kronypt runs the `__init__` of every package above it: `kronypt.data.prepare` runs
`kronypt/__init__.py`, and `kronypt --help` runs `kronypt/cli/...` under it. Those files name their public
API here instead of importing it, so that a tokeniser or a help text does not load torch and transformers.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any],
                                                                            Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`, whose public names `exports` lists under the
    module that defines them ({module: names}); a name is imported when first read, then kept on the package."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__, sorted(where)
