"""`kronypt --help` and every command's `--help` answer without importing torch or transformers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

from kronypt.cli.main import _register_commands, app

HEAVY = ("torch", "transformers")


def command_paths() -> list[tuple[list[str], str]]:
    """(words after `kronypt`, the first line of its help) for the app and every (sub)command it holds."""
    _register_commands()
    found, todo = [], [([], typer.main.get_command(app))]
    while todo:
        words, command = todo.pop(0)
        found.append((words, (command.help or "").strip().splitlines()[0]))
        todo += [([*words, name], sub) for name, sub in sorted(getattr(command, "commands", {}).items())]
    return found


def imported_packages(importtime: str) -> set[str]:
    """The top-level packages named in `python -X importtime` output."""
    return {line.rpartition("|")[2].strip().split(".")[0] for line in importtime.splitlines()
            if line.startswith("import time:")}


def flat(text: str) -> str:
    return " ".join(text.replace("`", "").split())


COMMANDS = command_paths()


@pytest.mark.parametrize(("words", "first_line"), COMMANDS, ids=[" ".join(words) or "kronypt" for words, _ in COMMANDS])
def test_help_answers_without_torch_or_transformers(words: list[str], first_line: str) -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "kronypt", *words, "--help"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert flat(f"Usage: kronypt {' '.join(words)}") in flat(done.stdout)
    assert flat(first_line) in flat(done.stdout)
    assert imported_packages(done.stderr) & set(HEAVY) == set()


def test_the_command_list_covers_every_command() -> None:
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {"plan", "compress", "export", "info", "generate", "eval", "bench", "data prepare", "train",
            "plot curves", "plot tradeoff", "study"} <= names
