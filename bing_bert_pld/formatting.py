"""Format an optional number for a table cell: the value with its spec, or a placeholder when there is none."""

from __future__ import annotations

import math
from typing import Optional


def format_number(value: Optional[float], spec: str, missing: str = "n/a", suffix: str = "") -> str:
    """`value` formatted with `spec` and `suffix`; `missing` for None, NaN or an infinity,
    which a table shows as absent rather than as a number."""
    return missing if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"
