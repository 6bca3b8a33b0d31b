"""Entry point of the `kronypt` console script.

Importing the command modules registers their commands on the shared app. Bad input (`KronyptError`,
missing files, invalid values) becomes one line on stderr and exit code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import importlib
import sys

from transformers.utils import logging as transformers_logging

from kronypt.cli.app import app, print_error
from kronypt.errors import KronyptError

# Each module registers its commands on `app` when imported.
COMMAND_MODULES = (
    "kronypt.cli.plan",
    "kronypt.cli.models",
    "kronypt.cli.evaluate",
    "kronypt.cli.data",
    "kronypt.cli.train",
)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn expected errors into one line and a non-zero exit."""
    _register_commands()
    transformers_logging.disable_progress_bar()  # kronypt shows its own progress; keep stderr readable
    try:
        app(args=argv, prog_name="kronypt")
    except (KronyptError, FileNotFoundError, FileExistsError, NotADirectoryError) as exc:
        text = str(exc).strip()
        print_error(" ".join(text.split()) if text else type(exc).__name__)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("kronypt: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
