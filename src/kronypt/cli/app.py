"""The shared Typer application and the small output helpers every command uses."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="kronypt",
    help=(
        "Compress GPT-2-family models with (sums of scaled) Kronecker products, then heal, evaluate and "
        "export them.\n\nTypical flow: `kronypt plan gpt2` to pick a scheme, `kronypt compress gpt2 --scheme "
        "81M --out gpt2-81M`, `kronypt train ...` to heal it, `kronypt eval gpt2-81M ...`, and "
        "`kronypt export gpt2-81M --dense --out gpt2-81M-dense` for a plain GPT-2 folder."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # reflow docstring paragraphs; `code` and lists render
)

# Tables must not be squeezed to 80 columns when stdout is a pipe or a file.
console = Console(width=None if sys.stdout.isatty() else 200)


def print_error(message: str) -> None:
    """One line on stderr, never wrapped."""
    sys.stderr.write(f"kronypt: error: {message}\n")


def print_json(payload: Any) -> None:
    """Write machine-readable output to stdout, nothing else on that stream."""
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
