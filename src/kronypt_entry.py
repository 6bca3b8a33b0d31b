"""Console-script entry of `kronypt`, outside the package on purpose.

A Ctrl-C while the CLI is being imported would print a KeyboardInterrupt traceback from the generated
script; importing the CLI here, inside a guard, turns it into the same one line and exit code 130 as a
Ctrl-C later in the run (torch and transformers are imported by the commands, where `main` handles it).
"""

from __future__ import annotations

import sys


def main() -> None:
    """Import the CLI (interruptibly), then run it."""
    try:
        from kronypt.cli.main import main as run
    except KeyboardInterrupt:
        sys.stderr.write("kronypt: interrupted\n")
        sys.exit(130)
    run()
