"""SMS encoding and segments: which alphabet a text needs and how many SMS parts it takes.

GSM-7 fits 160 characters in one SMS and 153 per part of a longer one; a character outside it makes
the whole message UCS-2 (70 and 67). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["GSM_BASIC", "GSM_EXTENSION", "non_gsm", "sms_segments"]

GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")


def _pack(costs: Iterable[int], single: int, multi: int) -> int:
    """Segments needed; a character (escape pair, surrogate pair) is never split across two parts."""
    costs = list(costs)
    if sum(costs) <= single:
        return 1 if costs else 0
    segments, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            segments, used = segments + 1, 0
        used += cost
    return segments


def sms_segments(text: str) -> tuple[str, int]:
    """``("GSM-7", n)`` or ``("UCS-2", n)``: GSM-7 fits 160 characters in one SMS and 153 per part
    of a longer one (extension characters such as ``€ { } [ ] ~ ^ | \\`` count twice); any other
    character (an emoji, a curly quote) makes the whole message UCS-2: 70 single, 67 per part."""
    if all(c in GSM_BASIC or c in GSM_EXTENSION for c in text):
        return "GSM-7", _pack((2 if c in GSM_EXTENSION else 1 for c in text), 160, 153)
    return "UCS-2", _pack((2 if ord(c) > 0xFFFF else 1 for c in text), 70, 67)


def non_gsm(text: str) -> str:
    """The characters of ``text`` that GSM-7 cannot write, each once and sorted: why a text is UCS-2."""
    return "".join(sorted({c for c in text if c not in GSM_BASIC and c not in GSM_EXTENSION}))
