"""The one exception type for bad user input.

Raised where the bad input is detected, with the valid options in the message; the CLI turns it into a
single line on stderr and a non-zero exit (no traceback).
"""


class KronyptError(ValueError):
    """A bad input the user can fix (unknown scheme, shapes that do not divide, missing file, ...)."""
