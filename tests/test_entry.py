"""The console script's entry: a Ctrl-C while the CLI, or torch inside a command, is being imported is one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

# Raises KeyboardInterrupt at the moment an import reaches `module`, as a Ctrl-C there would.
INTERRUPT_IMPORTING = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
import kronypt_entry
sys.argv = {argv!r}
kronypt_entry.main()
"""


def test_the_console_script_runs_the_guarded_entry() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"kronypt": "kronypt_entry:main"}


@pytest.mark.parametrize(("module", "argv"), [("typer", ["kronypt", "--help"]),  # importing the CLI
                                             ("torch", ["kronypt", "plan", "gpt2"])])  # inside a command
def test_ctrl_c_during_the_imports_is_one_line_and_exit_130(module: str, argv: list[str]) -> None:
    code = INTERRUPT_IMPORTING.format(module=module, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "kronypt: interrupted\n"
    assert done.stdout == ""


def test_without_an_interrupt_the_entry_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-c", "import kronypt_entry, sys; sys.argv = ['kronypt', '--help'];"
                           " kronypt_entry.main()"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage: kronypt" in done.stdout and "compress" in done.stdout


def test_python_dash_m_kronypt_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "kronypt", "plan", "gpt2", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert any(row["name"] == "81M" for row in json.loads(done.stdout))
