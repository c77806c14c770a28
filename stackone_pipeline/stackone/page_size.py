"""Asking for the largest page the API serves, when no page size is configured.

At StackOne's 1000 requests/minute a key fetches page size x 1000 rows a minute, and StackOne
documents no maximum page size (its default is 25). So with STACKONE_PAGE_SIZE unset the client
asks for `LARGEST` and learns from the answers, per base URL:

- a page that carries a `next` cursor and fewer records than asked reveals a silent clamp: from
  then on the ask is the largest number of records the API has served on such a page (never less
  than `SMALLEST`). Pagination follows `next` only, so a page short for any other reason can cost
  throughput (a smaller ask) but never records.
- a 400 about the page size (`refuses_size`) makes the walk ask for the same page again at the
  next smaller size (`smaller`: the largest number the message names below the refused size, else
  the next step of `LADDER`), and that smaller size is remembered; a 400 at `SMALLEST` fails.

The ask never goes up again for a base URL in this process, except to a size the API was seen to
serve (two walks of one run learning at once). A configured STACKONE_PAGE_SIZE is sent as it is
and never adapted; the client fails with a message naming it when the API refuses it.
"""

from __future__ import annotations

import re
import threading

LARGEST = 10_000  # the first ask when nothing is known of a base URL
LADDER = (5000, 2000, 1000, 500, 200, 100, 50, 25)  # after a refusal, the next smaller size
SMALLEST = LADDER[-1]  # StackOne's documented default: the API serves pages of this size

_ABOUT_PAGE_SIZE = re.compile(r"page.?size", re.I)
_ABOUT_A_LIMIT = re.compile(r"size|limit|maximum|too (large|big|many)|exceed", re.I)
_NUMBER = re.compile(r"\d+")


def refuses_size(message: str, asked: int, first_page: bool) -> bool:
    """Whether a 400 with `message` complains of the page size `asked`: it names the page size, or
    it answered a walk's first page asked above `SMALLEST` and speaks of a size, limit or maximum."""
    if _ABOUT_PAGE_SIZE.search(message):
        return True
    return first_page and asked > SMALLEST and bool(_ABOUT_A_LIMIT.search(message))


def smaller(asked: int, message: str = "") -> int | None:
    """The size to try after `asked` was refused: the largest number the message names below it
    ("page_size must not be greater than 500" -> 500), else the next step of `LADDER` below it;
    None when `asked` is already `SMALLEST` or less."""
    named = [n for n in (int(m) for m in _NUMBER.findall(message)) if SMALLEST <= n < asked]
    if named:
        return max(named)
    return next((step for step in LADDER if step < asked), None)


class PageSizeMemo:
    """The page size to ask for, per base URL, learnt from clamps and refusals. Process-level (as
    the filter-encoding memo), thread-safe: the walks of one run share what each learns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ceiling: dict[str, int] = {}  # the size to try after the last refusal
        self._served: dict[str, int] = {}  # the largest page served with `next` when more was asked

    def ask(self, base_url: str) -> int:
        with self._lock:
            return min(LARGEST, self._ceiling.get(base_url, LARGEST), self._served.get(base_url, LARGEST))

    def page(self, base_url: str, asked: int, served: int, has_next: bool) -> None:
        """Note a page of `served` records answered to `asked`: with a `next` cursor and fewer
        records than asked, it reveals a clamp."""
        if has_next and 0 < served < asked:
            with self._lock:
                self._served[base_url] = max(self._served.get(base_url, 0), served, SMALLEST)

    def refused(self, base_url: str, asked: int, message: str = "") -> int | None:
        """Note that the API refused `asked`; the next size to try (now remembered), or None when
        nothing smaller is left to try."""
        nxt = smaller(asked, message)
        if nxt is None:
            return None
        with self._lock:
            self._ceiling[base_url] = min(self._ceiling.get(base_url, LARGEST), nxt)
        return nxt

    def clear(self) -> None:
        with self._lock:
            self._ceiling.clear()
            self._served.clear()


PAGE_SIZE_MEMO = PageSizeMemo()
