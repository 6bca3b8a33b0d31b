"""lm-evaluation-harness's WikiText detokeniser, as a table of rewrite steps applied in order.

lm-eval's `wikitext` task scores the detokenised page (e.g. "1 @,@ 000" -> "1,000", "( a )" -> "(a)") while
counting words and bytes on the original page; word-level perplexities are only comparable across tools if
this step matches lm-eval's byte for byte (checked against lm-eval itself in the tests when it is installed).
"""

from __future__ import annotations

import re

# (old, new, is_regex), applied top to bottom. The second rule is lm-eval's, kept although it can only
# match the literal text "/' <digit>/".
_STEPS: tuple[tuple[str, str, bool], ...] = (
    ("s '", "s'", False),
    (r"/' [0-9]/", r"/'[0-9]/", True),
    (" @-@ ", "-", False),
    (" @,@ ", ",", False),
    (" @.@ ", ".", False),
    *((f" {mark} ", f"{mark} ", False) for mark in ":;.!?,"),
    *((rf"{re.escape(o)}\s*([^{re.escape(c)}]*?)\s*{re.escape(c)}", rf"{o}\1{c}", True)
      for o, c in (("(", ")"), ("[", "]"), ("{", "}"), ('"', '"'), ("'", "'"))),
    ("= = = =", "====", False),
    ("= = =", "===", False),
    ("= =", "==", False),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}", False),
    (" \n", "\n", False),
    ("\n ", "\n", False),
    (" N ", " 1 ", False),
    (" 's", "'s", False),
)


def wikitext_detokenize(page: str) -> str:
    """Undo WikiText's tokenisation spacing the way lm-eval's `wikitext_detokenizer` does."""
    for old, new, is_regex in _STEPS:
        page = re.sub(old, new, page) if is_regex else page.replace(old, new)
    return page
