"""Entry point of the `kronypt` console script.

Importing the command modules registers their commands on the shared app; they import torch and transformers
only inside the commands, so `--help` answers at once. Bad input (`KronyptError`, missing files, invalid
values) becomes one line on stderr and exit code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import functools
import importlib
import signal
import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from kronypt.cli.app import app, print_error
from kronypt.errors import KronyptError

# Each module registers its commands on `app` when imported.
COMMAND_MODULES = (
    "kronypt.cli.plan",
    "kronypt.cli.compress",
    "kronypt.cli.models",
    "kronypt.cli.evaluate",
    "kronypt.cli.data",
    "kronypt.cli.train",
    "kronypt.cli.plot",
    "kronypt.cli.bench",
    "kronypt.cli.study",
)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def _quiet_hugging_face() -> None:
    """kronypt shows its own progress; keep stderr readable: no transformers / hub progress bars, and an
    unreachable hub reported once, not as a page of retries."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()


def _quiet_first(command: TyperCommand | TyperGroup) -> TyperCommand | TyperGroup:
    """`command` with `_quiet_hugging_face` run before the callback of each command it holds: as a command
    starts, not at import, so that `--help` and usage errors never load transformers."""
    subcommands = getattr(command, "commands", None)
    if subcommands:  # a group (its callback would run before a subcommand's --help)
        for sub in subcommands.values():
            _quiet_first(sub)
    elif command.callback is not None:
        run = command.callback

        @functools.wraps(run)
        def quiet_then_run(*args: Any, **kwargs: Any) -> Any:
            _quiet_hugging_face()
            return run(*args, **kwargs)

        command.callback = quiet_then_run
    return command


# Typer may vendor its own click: take its usage-error classes from the exception it exports.
_CLICK_ERRORS = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError, ClickException = _CLICK_ERRORS["UsageError"], _CLICK_ERRORS["ClickException"]


def _command_path(argv: list[str] | None) -> str:
    """'kronypt data prepare' for the words of `argv` that name (sub)commands: an option that lacks its
    value is reported before click has a context for the subcommand."""
    command, path = typer.main.get_command(app), ["kronypt"]
    for word in sys.argv[1:] if argv is None else argv:
        commands = getattr(command, "commands", None)
        if not commands or word not in commands:
            break
        command = commands[word]
        path.append(word)
    return " ".join(path)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn expected errors into one line and a non-zero exit."""
    try:
        _register_commands()
        command = _quiet_first(typer.main.get_command(app))
        code = command.main(args=argv, prog_name="kronypt", standalone_mode=False)
    except UsageError as exc:  # unknown option, bad or missing value
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `kronypt` or `kronypt data`: show the help
            exc.show()
            sys.exit(0)
        where = exc.ctx.command_path if exc.ctx is not None and exc.ctx.parent is not None else _command_path(argv)
        print_error(f"{' '.join(exc.format_message().split())} (see '{where} --help')")
        sys.exit(2)
    except ClickException as exc:
        print_error(" ".join(exc.format_message().split()))
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("kronypt: interrupted\n")
        sys.exit(130)
    except SystemExit as exc:  # `data prepare` turns SIGTERM into SystemExit(143) to clean up on the way out
        if exc.code == 128 + signal.SIGTERM:
            sys.stderr.write("kronypt: terminated\n")
        raise
    except (KronyptError, FileNotFoundError, FileExistsError, NotADirectoryError) as exc:
        text = str(exc).strip()
        print_error(" ".join(text.split()) if text else type(exc).__name__)
        sys.exit(2)
    except RuntimeError as exc:  # Path.expanduser on '~user/...' of an unknown user: bad input in any path
        if "home directory" not in str(exc):
            raise
        print_error(f"cannot expand a '~user' path: {exc}")
        sys.exit(2)
    if isinstance(code, int) and code:
        if code == 130:  # Typer turns Ctrl-C into exit code 130
            sys.stderr.write("kronypt: interrupted\n")
        sys.exit(code)


if __name__ == "__main__":
    main()
