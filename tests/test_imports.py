"""What importing a part of kronypt loads: the data tools and recipes without torch, transformers or the
model code; and, after `import kronypt`, kronypt folders loading through the transformers Auto classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kronypt.models import CompressionConfig, compress_


def loaded_after(code: str) -> set[str]:
    """The modules a fresh Python holds after running `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", ["kronypt", "kronypt.data.prepare", "kronypt.data.sources",
                                    "kronypt.data.writer", "kronypt.train.config", "kronypt.errors"])
def test_light_modules_load_no_torch_and_no_model_code(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert module in loaded
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("torch", "transformers")
                   or m.startswith(("kronypt.models", "kronypt.nn", "kronypt.kernels")))
    assert heavy == []


def test_public_names_are_imported_on_first_use() -> None:
    import kronypt

    for name in kronypt.__all__:
        assert getattr(kronypt, name).__name__ == name
    assert set(kronypt.__all__) <= set(dir(kronypt))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        kronypt.nothing  # noqa: B018


LOAD_WITH_AUTO = """
{before}
from transformers import AutoModelForCausalLM
print(type(AutoModelForCausalLM.from_pretrained({folder!r})).__name__)
"""


@pytest.mark.parametrize("before", [
    "import kronypt",  # transformers imported after kronypt (imported before it, kronypt registers at once)
    "import kronypt.models.families",  # a model module imports transformers first, from inside kronypt.models
])
def test_after_import_kronypt_the_auto_classes_load_a_kronypt_folder(tmp_path: Path, before: str) -> None:
    from tests.conftest import tiny_model

    model = tiny_model()
    compress_(model, CompressionConfig(a_shape=(64, 32)))
    model.save_pretrained(tmp_path / "k")
    code = LOAD_WITH_AUTO.format(before=before, folder=str(tmp_path / "k"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "KronyGPT2LMHeadModel"
