"""Cursor pagination for `GET /requests/logs`, as a small state machine (dlt's paginator shape).

The only end-of-data signal is a null `next`: the server may return fewer rows than asked for,
so a short page is never taken to be the last one. A fresh paginator is made for every walk.
"""

from __future__ import annotations

from dataclasses import dataclass


class MalformedPage(ValueError):
    """A 200 whose JSON is not `{"data": [...], "next": str | null}`."""


@dataclass
class CursorPaginator:
    has_next_page: bool = True
    cursor: str | None = None

    def init_request(self, params: dict) -> None:
        params.pop("next", None)

    def update_state(self, body) -> list[dict]:
        """Validate one page, remember its cursor, return its records."""
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise MalformedPage("expected an object with a `data` list")
        nxt = body.get("next")
        if nxt is not None and not isinstance(nxt, str):
            raise MalformedPage(f"`next` must be a string or null, got {type(nxt).__name__}")
        records = body["data"]
        if not all(isinstance(r, dict) for r in records):
            raise MalformedPage("`data` must hold objects")
        self.cursor = nxt or None
        self.has_next_page = self.cursor is not None
        return records

    def advance(self, cursor: str | None) -> None:
        """Remember the cursor of a page parsed elsewhere (columnar.parse_page validated it)."""
        self.cursor = cursor or None
        self.has_next_page = self.cursor is not None

    def update_request(self, params: dict) -> None:
        params["next"] = self.cursor
