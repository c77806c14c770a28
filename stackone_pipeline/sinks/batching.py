"""Cut a stream of entries into batches per destination key, bounded by entries and bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterable, Iterator


@dataclass
class Batch:
    key: Hashable
    entries: list = field(default_factory=list)
    nbytes: int = 0


def batches(
    items: Iterable[tuple[Hashable, object, int]], max_entries: int, max_bytes: int
) -> Iterator[Batch]:
    """`items` are (key, entry, size in bytes). A batch never mixes keys and never exceeds
    either bound (an entry larger than max_bytes travels alone). Memory: one open batch per key."""
    open_: dict[Hashable, Batch] = {}
    for key, entry, size in items:
        batch = open_.get(key)
        if batch is not None and (len(batch.entries) >= max_entries or batch.nbytes + size > max_bytes):
            yield open_.pop(key)
            batch = None
        if batch is None:
            batch = open_[key] = Batch(key)
        batch.entries.append(entry)
        batch.nbytes += size
    yield from open_.values()
