"""Small pictures drawn with numpy alone: heat maps with a colour bar and tick labels in
a 3x5-pixel font, as ``H x W x 3`` ``uint8`` arrays.

A run draws its partition picture before the first round (:mod:`fedsim.tracking.report`);
matplotlib's import and first draw cost about a second there, more than the round of a
default run.  These few primitives (text, a colour ramp, a labelled heat-map panel,
stacking) draw the same information in milliseconds and the same pixels on every
machine (no fonts, no back-end).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]

#: Each glyph: five rows of three pixels ("#" on).  Letters are drawn as capitals;
#: characters without a glyph are drawn as "?".
_GLYPHS = {
    "0": "### #.# #.# #.# ###",
    "1": ".#. ##. .#. .#. ###",
    "2": "### ..# ### #.. ###",
    "3": "### ..# .## ..# ###",
    "4": "#.# #.# ### ..# ..#",
    "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###",
    "7": "### ..# .#. .#. .#.",
    "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###",
    "a": ".#. #.# ### #.# #.#",
    "b": "##. #.# ##. #.# ##.",
    "c": ".## #.. #.. #.. .##",
    "d": "##. #.# #.# #.# ##.",
    "e": "### #.. ##. #.. ###",
    "f": "### #.. ##. #.. #..",
    "g": ".## #.. #.# #.# .##",
    "h": "#.# #.# ### #.# #.#",
    "i": "### .#. .#. .#. ###",
    "j": "..# ..# ..# #.# .#.",
    "k": "#.# #.# ##. #.# #.#",
    "l": "#.. #.. #.. #.. ###",
    "m": "#.# ### ### #.# #.#",
    "n": "##. #.# #.# #.# #.#",
    "o": ".#. #.# #.# #.# .#.",
    "p": "##. #.# ##. #.. #..",
    "q": ".#. #.# #.# ##. .##",
    "r": "##. #.# ##. #.# #.#",
    "s": ".## #.. .#. ..# ##.",
    "t": "### .#. .#. .#. .#.",
    "u": "#.# #.# #.# #.# ###",
    "v": "#.# #.# #.# #.# .#.",
    "w": "#.# #.# ### ### #.#",
    "x": "#.# #.# .#. #.# #.#",
    "y": "#.# #.# .#. .#. .#.",
    "z": "### ..# .#. #.. ###",
    " ": "... ... ... ... ...",
    ":": "... .#. ... .#. ...",
    ".": "... ... ... ... .#.",
    ",": "... ... ... .#. #..",
    "-": "... ... ### ... ...",
    "_": "... ... ... ... ###",
    "(": "..# .#. .#. .#. ..#",
    ")": "#.. .#. .#. .#. #..",
    "/": "..# ..# .#. #.. #..",
    "%": "#.# ..# .#. #.. #.#",
    "+": "... .#. ### .#. ...",
    "=": "... ### ... ### ...",
    "?": "### ..# .#. ... .#.",
}
_MASKS = {
    c: np.array([[p == "#" for p in row] for row in rows.split()], dtype=bool)
    for c, rows in _GLYPHS.items()
}

#: Font pixels per glyph pixel; a glyph is ``3 * SCALE`` wide and ``5 * SCALE`` high.
SCALE = 2
#: Horizontal advance and line height of the font, in pixels.
ADVANCE, LINE = 4 * SCALE, 7 * SCALE
INK = np.array([40, 40, 40], dtype=np.uint8)
WHITE = 255
#: A short perceptual ramp (dark blue -> teal -> yellow), as in the confusion matrix.
STOPS = np.array([[68, 1, 84], [33, 145, 140], [253, 231, 37]], dtype=np.float64)


def text_mask(s: str) -> npt.NDArray[np.bool_]:
    """The pixels of ``s`` in one line: ``5 * SCALE`` rows, ``ADVANCE`` per character."""
    if not s:
        return np.zeros((5 * SCALE, 0), dtype=bool)
    gap = np.zeros((5, 1), dtype=bool)
    cols = [np.hstack([_MASKS.get(c, _MASKS["?"]), gap]) for c in s.lower()]
    line = np.hstack(cols)[:, :-1]  # no gap after the last character
    return np.repeat(np.repeat(line, SCALE, axis=0), SCALE, axis=1)


def text_width(s: str) -> int:
    return text_mask(s).shape[1]


def put_text(canvas: Image, s: str, x: int, y: int) -> None:
    """Draw ``s`` with its top-left corner at ``(x, y)``, clipped to the canvas."""
    mask = text_mask(s)
    h, w = mask.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    canvas[y0:y1, x0:x1][mask[y0 - y : y1 - y, x0 - x : x1 - x]] = INK


def blank(height: int, width: int) -> Image:
    return np.full((height, width, 3), WHITE, dtype=np.uint8)


def label(s: str, pad: int = 2) -> Image:
    """One line of text on white, ``pad`` pixels around it."""
    canvas = blank(5 * SCALE + 2 * pad, text_width(s) + 2 * pad)
    put_text(canvas, s, pad, pad)
    return canvas


def ramp(frac: npt.NDArray[np.float64]) -> Image:
    """Colours of values in ``[0, 1]``: linear between :data:`STOPS`."""
    pos = np.clip(frac, 0.0, 1.0) * (len(STOPS) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(STOPS) - 2)
    t = (pos - lo)[..., None]
    rgb = STOPS[lo] * (1 - t) + STOPS[lo + 1] * t
    return np.rint(rgb).astype(np.uint8)


def _every(count: int, cell: int, need: int) -> int:
    """Label every ``k``-th of ``count`` cells of ``cell`` pixels so that labels of
    ``need`` pixels do not overlap."""
    return max(1, -(-need // max(cell, 1))) if count else 1


def heat_panel(
    counts: npt.NDArray[np.int64],
    row_names: Sequence[str],
    col_names: Sequence[str],
    title: str,
    width: int = 600,
    left: int = 0,
) -> Image:
    """``counts`` (rows x columns) as coloured cells (0 dark, the maximum yellow), with
    row and column labels, a title above and a colour bar from 0 to the maximum.

    Cells are as wide as ``width`` allows (3 to 24 pixels) and 12 pixels high up to 30
    rows, lower beyond; labels are thinned so that they never overlap.  The cells start
    ``left`` pixels from the edge at least (panels stacked with one ``left`` line up).
    """
    rows, cols = counts.shape
    cw = max(3, min(24, width // max(cols, 1)))
    ch = 12 if rows <= 30 else max(2, 360 // rows)
    top = max(int(counts.max(initial=0)), 0)
    frac = counts / top if top else np.zeros(counts.shape)
    cells = np.repeat(np.repeat(ramp(frac), ch, axis=0), cw, axis=1)

    left = max(left, max((text_width(n) for n in row_names), default=0) + 6)
    bar_x = left + cols * cw + 8
    right = bar_x + 10 + 4 + text_width(str(top)) + 4
    head = LINE + 4
    span = max(rows * ch, 2 * LINE)  # the colour bar: room for its two labels
    height = head + span + 4 + LINE + 2
    canvas = blank(height, max(right, text_width(title) + 4))
    put_text(canvas, title, 2, 2)

    canvas[head : head + rows * ch, left : left + cols * cw] = cells
    step = _every(rows, ch, 5 * SCALE + 2)
    for r in range(0, rows, step):
        y = head + r * ch + (ch - 5 * SCALE) // 2
        put_text(canvas, row_names[r], left - 4 - text_width(row_names[r]), y)
    widest = max((text_width(n) for n in col_names), default=0)
    step = _every(cols, cw, widest + ADVANCE)
    for c in range(0, cols, step):
        x = left + c * cw + (cw - text_width(col_names[c])) // 2
        put_text(canvas, col_names[c], max(x, left), head + rows * ch + 4)

    # the colour bar: the maximum at the top, 0 at the bottom
    levels = np.linspace(1.0, 0.0, span)[:, None]
    canvas[head : head + span, bar_x : bar_x + 10] = np.repeat(ramp(levels), 10, axis=1)
    put_text(canvas, str(top), bar_x + 14, head)
    put_text(canvas, "0", bar_x + 14, head + span - 5 * SCALE)
    return canvas


def stack(parts: Sequence[Image], gap: int = 6, pad: int = 6) -> Image:
    """The parts one below the other, left-aligned on white, ``pad`` pixels around."""
    width = max(p.shape[1] for p in parts) + 2 * pad
    height = sum(p.shape[0] for p in parts) + gap * (len(parts) - 1) + 2 * pad
    canvas = blank(height, width)
    y = pad
    for p in parts:
        canvas[y : y + p.shape[0], pad : pad + p.shape[1]] = p
        y += p.shape[0] + gap
    return canvas
