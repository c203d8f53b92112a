"""How wide LaTeX sets a short text in Computer Modern 10 pt, without running LaTeX.

The advance widths are the fonts' own (their TFM metrics: cmr10 for text and math digits,
cmbx10 for `\\mathbf`, cmsy10 for the math symbols), so a table's width is estimated to within
kerning and ligatures, which only narrow it. Characters outside these tables count as wide as
the widest glyph of their class, so an estimate errs wide, never narrow.

Two modes, as the table writer sets its entries: `text_width` for text (labels, headers, costs;
a space is the interword space) and `math_width` for a number or `a ± b` set in math mode
(`$12.31 \\pm 0.40$`: spaces vanish, ± brings its binary-operator spacing, a leading minus is
the math minus sign).
"""

_SYMBOL_PT = 7.778  # cmsy10's minus, ± and ×
_CMR10_PT = {
    **dict.fromkeys("0123456789", 5.0),
    **dict.fromkeys(".,:;!'[]", 2.778),
    **dict.fromkeys("il", 2.778),
    **dict.fromkeys("()", 3.889),
    **dict.fromkeys("fj", 3.056),
    **dict.fromkeys("aog/", 5.0),
    **dict.fromkeys("cez", 4.444),
    **dict.fromkeys("bdhnpu", 5.556),
    **dict.fromkeys("kqvxy", 5.278),
    **dict.fromkeys("AHNUVXY", 7.5),
    **dict.fromkeys("OQK", 7.778),
    **dict.fromkeys("CTw", 7.222),
    "m": 8.333,
    "r": 3.917,
    "s": 3.944,
    "t": 3.889,
    "B": 7.083,
    "D": 7.639,
    "E": 6.806,
    "F": 6.528,
    "G": 7.847,
    "I": 3.611,
    "J": 5.139,
    "L": 6.25,
    "M": 9.167,
    "P": 6.806,
    "R": 7.361,
    "S": 5.556,
    "W": 10.278,
    "Z": 6.111,
    "-": 3.333,
    "%": 8.333,
    "=": 7.778,
    " ": 3.333,  # the interword space (cmr10's SPACE parameter, before stretching)
    # Symbols the writer sets in math: $\pm$ and $\times$ between spaces, arrows, \eta, ...
    "±": _SYMBOL_PT,
    "×": _SYMBOL_PT,
    "↓": 5.0,
    "↑": 5.0,
    "—": 10.0,  # ---
    "−": _SYMBOL_PT,
}
_CMBX10_DIGIT_PT = 5.75  # \mathbf bolds digits (and letters), not punctuation or symbols
_MEDMUSKIP_PT = 2.222  # 4 mu at 10 pt: the space each side of a binary operator
_THINMUSKIP_PT = 1.667  # 3 mu: after math punctuation (a comma)
_WIDEST_LOWER_PT, _WIDEST_UPPER_PT, _WIDEST_PT = 8.333, 10.278, 10.278
_BOLD = 1.15  # cmbx10 against cmr10, rounded up (its digits: exactly 1.15)


def _glyph(ch: str) -> float:
    if ch in _CMR10_PT:
        return _CMR10_PT[ch]
    if ch.islower():
        return _WIDEST_LOWER_PT
    if ch.isupper():
        return _WIDEST_UPPER_PT
    return _WIDEST_PT


def text_width(text: str, bold: bool = False) -> float:
    """Width in pt of `text` set as text in cmr10 (bold: cmbx10)."""
    return sum(_glyph(ch) for ch in text) * (_BOLD if bold else 1.0)


def math_width(formula: str, bold: bool = False) -> float:
    """Width in pt of numbers set in math mode, e.g. "-12.31 ± 0.40" as `$-12.31 \\pm 0.40$`
    (bold: inside `\\mathbf`, which bolds the digits, not the punctuation or the symbols)."""
    width = 0.0
    for i, ch in enumerate(formula):
        if ch == " ":
            continue
        if ch in "±×":  # binary operators: spaced on both sides
            width += _SYMBOL_PT + 2 * _MEDMUSKIP_PT
        elif ch in "-−":  # a sign at the start or after an operator; a binary minus otherwise
            before = formula[:i].strip()
            unary = not before or before[-1] in "±×(="
            width += _SYMBOL_PT + (0 if unary else 2 * _MEDMUSKIP_PT)
        elif ch == ",":  # math punctuation: a thin space follows
            width += _glyph(ch) + _THINMUSKIP_PT
        elif ch.isdigit():
            width += _CMBX10_DIGIT_PT if bold else _glyph(ch)
        else:
            width += text_width(ch, bold and ch.isalpha())
    return width
