"""Text for the command lines: aligned tables (also `PynencConfig.format_table`), times,
ages and shortened lines.

It only formats; what goes in the rows is the caller's business.
"""

from __future__ import annotations

import datetime
from typing import Optional, Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart; a column whose cells are all
    numbers is right-aligned; None shows as "-"; trailing spaces are cut."""
    cells = [list(headers)] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        bool(rows) and all(isinstance(row[i], (int, float)) for row in rows)
        for i in range(len(headers))
    ]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if is_number else cell.ljust(width)
            for cell, width, is_number in zip(row, widths, numeric)
        ).rstrip()
        for row in cells
    )


def format_time(at: Optional[float]) -> Optional[str]:
    """Local time with its UTC offset, to the millisecond; None stays None."""
    if at is None:
        return None
    return datetime.datetime.fromtimestamp(at).astimezone().isoformat(" ", "milliseconds")


def format_age(seconds: float) -> str:
    """A short duration: `4.2s`, `12m05s`, `3h07m`, `2d05h`."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
