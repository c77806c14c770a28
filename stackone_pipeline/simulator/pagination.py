"""Select the cores of one page: by position in event order, or by sorting a window.

Event order is the fast path: a cursor position is (hour, index) and every hour's
time window is an index range, so a page costs O(page_size) (plus a bounded scan
when filters or hidden late records skip rows). Any other order materialises the
window once and the caller pages it by offset.
"""

from __future__ import annotations

from collections.abc import Callable

from .query import Query
from .traffic import H_MS, Core, Traffic

SCAN_BUDGET = 50_000  # raw records examined per page before answering a (legal) short page
Hidden = Callable[[Core], bool] | None


def time_page(
    t: Traffic, q: Query, s: int, e: int, pos: tuple[int, int] | None, boundary: bool, hidden: Hidden
) -> tuple[list[Core], tuple[int, int] | None]:
    """Up to page_size cores of [s, e] in event order from ``pos``; returns (page, next position or None)."""
    asc, pred, size = q.asc, q.predicate, q.page_size
    hs, he = s // H_MS, e // H_MS
    h, i = pos if pos else ((hs if asc else he), -1)
    out: list[Core] = []
    budget = SCAN_BUDGET
    step = 1 if asc else -1
    core = t.core
    while hs <= h <= he:
        n = t.count(h)
        lo, hi = t.index_range(h, n, s, e, boundary)
        if i < 0:
            i = lo if asc else hi - 1
        if (len(out) >= size or budget <= 0) and lo <= i < hi:
            return out, (h, i)
        while lo <= i < hi and len(out) < size and budget > 0:
            c = core(h, i, n, boundary)
            i += step
            budget -= 1
            if (hidden is None or not hidden(c)) and (pred is None or pred(c)):
                out.append(c)
        if lo <= i < hi:
            return out, (h, i)
        h, i = h + step, -1  # hour exhausted: go on, so trailing empty hours do not cost a page
    return out, None


def sorted_cores(t: Traffic, q: Query, s: int, e: int, boundary: bool, hidden: Hidden) -> list[Core]:
    """Every matching core of [s, e] in the query's order (ties broken by event time, then index)."""
    found: list[Core] = []
    if q.request_ids is not None:  # ids encode (hour, index): no scan needed
        for h, i in q.request_ids:
            n = t.count(h)
            lo, hi = t.index_range(h, n, s, e, boundary)
            if lo <= i < hi:
                found.append(t.core(h, i, n, boundary))
    else:
        for h in range(s // H_MS, e // H_MS + 1):
            n = t.count(h)
            lo, hi = t.index_range(h, n, s, e, boundary)
            found.extend(t.core(h, i, n, boundary) for i in range(lo, hi))
    pred = q.predicate
    found = [c for c in found if (hidden is None or not hidden(c)) and (pred is None or pred(c))]
    sort_key = q.sort_key(t)
    found.sort(key=lambda c: (sort_key(c), c.t_ms, c.h, c.i), reverse=not q.asc)
    return found
