"""Reporting lexicons (ACR TI-RADS, BI-RADS): vocabularies, points, categories and the one-sentence report.

The one place for these tables: the synthetic generator samples and scores in them, the descriptor heads
(:class:`usvl.tasks.LexiconTask`) predict them, and ``usvl predict`` reports in them
(:mod:`usvl.lexicon.readout`). Importing the tables costs no torch import (the generator's worker processes use them).
"""

from usvl.lexicon.base import MISSING, Lexicon, join_values, normalise_value
from usvl.lexicon.birads import BIRADS, birads_category
from usvl.lexicon.tirads import POINTS, TIRADS, TR_LEVELS, tirads_category, tirads_points

LEXICONS = {lexicon.name: lexicon for lexicon in (TIRADS, BIRADS)}
"""The lexicons by name."""


def get_lexicon(name: str) -> Lexicon:
    """The lexicon called ``name`` (``tirads``, ``birads``).

    Raises:
        KeyError: Unknown name; the message lists the lexicons.
    """
    if name not in LEXICONS:
        raise KeyError(f"Unknown lexicon {name!r}; available: {sorted(LEXICONS)}")
    return LEXICONS[name]


__all__ = ["BIRADS", "LEXICONS", "MISSING", "POINTS", "TIRADS", "TR_LEVELS", "Lexicon", "birads_category",
           "get_lexicon", "join_values", "normalise_value", "tirads_category", "tirads_points"]
