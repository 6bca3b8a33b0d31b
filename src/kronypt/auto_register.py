"""`import kronypt` makes kronypt folders load through the transformers Auto classes, without loading torch.

`kronypt.models` registers its compressed configs and model classes with `AutoConfig`,
`AutoModelForCausalLM`, ... when it is imported, which needs transformers and torch (seconds).
`register_when_transformers_loads` defers that import to the moment transformers itself is imported, or
does it at once where transformers already is: `AutoModelForCausalLM.from_pretrained(folder)` after
`import kronypt` works, and a process that never loads transformers (`kronypt --help`, tokenising text)
never pays for it. Importing `kronypt.models` from inside an import of one of its own modules is safe: the
package is then already in `sys.modules`, and registers as its import completes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

PACKAGE = "transformers"


def register_when_transformers_loads() -> None:
    """Import `kronypt.models` now if transformers is loaded, else right after it is (once)."""
    if PACKAGE in sys.modules:
        importlib.import_module("kronypt.models")
    elif not any(isinstance(finder, _AfterTransformers) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Finds transformers as the other finders do, with a loader that imports `kronypt.models` after it."""

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != PACKAGE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    """The transformers loader, then `import kronypt.models`; everything else is the wrapped loader's."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        importlib.import_module("kronypt.models")

    def __getattr__(self, name: str) -> Any:  # resource readers, get_source, ...
        return getattr(self.loader, name)
