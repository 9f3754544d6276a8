"""The read-out of one image in files: CSV columns, a JSON record for programs, lines of text for the overlay.

``usvl predict`` with a model that has descriptor heads (:class:`usvl.tasks.LexiconTask`) writes, per image, the
descriptors with their probabilities, the points, the category and the one-sentence report:

* ``predictions.csv`` gains, after the classifier's columns, for each single-label descriptor ``<d>`` (the reported
  value) and ``p_<d>`` (its probability); for each multi-label descriptor ``<d>`` (reported values joined by ``;``,
  or ``none``) and ``p_<d>_<value>`` per value; then ``points``, ``expected_points``, ``category``, ``sentence`` and
  ``json`` (the JSON file, relative to the predictions folder).
* ``json/<image stem>.json``: the image's name, class probabilities, predicted class and threshold, and the
  read-out (every descriptor's full probability distribution included).
* the overlay PNG: the image with a panel below it holding the class, the sentence and the descriptors.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from usvl.lexicon.base import Lexicon


def readout_columns(lexicon: Lexicon) -> list[str]:
    """The CSV columns of a read-out, in order (see the module docstring)."""
    columns: list[str] = []
    for name in lexicon.single:
        columns += [name, f"p_{name}"]
    for name, values in lexicon.multi.items():
        columns += [name, *(f"p_{name}_{value}" for value in values)]
    return [*columns, "points", "expected_points", "category", "sentence", "json"]


def readout_row(lexicon: Lexicon, readout: dict[str, Any], json_path: str = "") -> list[Any]:
    """The CSV cells of one read-out, aligned with :func:`readout_columns`."""
    cells: list[Any] = []
    for name in lexicon.single:
        descriptor = readout["descriptors"][name]
        cells += [descriptor["value"], f"{descriptor['probability']:.6f}"]
    for name, values in lexicon.multi.items():
        descriptor = readout["descriptors"][name]
        cells += [";".join(descriptor["values"]), *(f"{descriptor['probabilities'][v]:.6f}" for v in values)]
    return [*cells, readout["points"], f"{readout['expected_points']:.4f}", readout["category"], readout["sentence"],
            json_path]


def readout_lines(lexicon: Lexicon, readout: dict[str, Any]) -> list[str]:
    """The descriptor lines of the overlay: ``composition: solid (0.91)``, ``echogenic foci: punctate (0.80)``."""
    lines = []
    for name in lexicon.single:
        descriptor = readout["descriptors"][name]
        lines.append(f"{name.replace('_', ' ')}: {descriptor['value'].replace('_', ' ')} "
                     f"({descriptor['probability']:.2f})")
    for name in lexicon.multi:
        descriptor = readout["descriptors"][name]
        shown = [f"{v.replace('_', ' ')} ({descriptor['probabilities'][v]:.2f})" for v in descriptor["values"]
                 if v in descriptor["probabilities"]]
        lines.append(f"{name.replace('_', ' ')}: {', '.join(shown) or lexicon.none_value}")
    lines.append(f"expected points {readout['expected_points']:.1f}")
    return lines


def draw_readout(image: Image.Image, title: str, sentence: str, lines: Sequence[str]) -> Image.Image:
    """The image (RGB) with a black panel below it: ``title`` and ``sentence`` in yellow, ``lines`` in white.

    The panel is as wide as the image (at least 320 px, the image centred) and the text is wrapped to it, so the image
    itself stays uncovered.
    """
    width = max(image.width, 320)
    size = max(11, min(width // 28, 28))
    font = ImageFont.load_default(size=size)
    chars = max(20, int(width / (0.56 * size)))
    wrapped = [(text, (255, 255, 80)) for block in (title, sentence) for text in textwrap.wrap(block, chars)]
    wrapped += [(text, (235, 235, 235)) for line in lines for text in textwrap.wrap(line, chars)]
    step = int(size * 1.3)
    panel_height = step * len(wrapped) + 8
    canvas = Image.new("RGB", (width, image.height + panel_height), (0, 0, 0))
    canvas.paste(image.convert("RGB"), ((width - image.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    y = image.height + 4
    for text, colour in wrapped:
        draw.text((4, y), text, fill=colour, font=font)
        y += step
    return canvas
