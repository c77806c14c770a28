"""Cut a chunk of entries into batches per destination key, bounded by entries and bytes.

A chunk is an Arrow table with `key`, `ns` (event time) and `size` (bytes) columns. It is
sorted by key, and by event time where the sink wants each push in time order (Loki), and
each key's run is cut greedily: a batch never mixes keys and never exceeds either bound (an
entry larger than `max_bytes` travels alone). Python handles batches, never single entries, and
a chunk's last, partly filled batch per key is sent as it is, so no push spans two chunks and
memory stays bounded by a chunk.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def batches(
    chunk: pa.Table, max_entries: int, max_bytes: int, time_ordered: bool = True
) -> Iterator[tuple[Hashable, pa.Table]]:
    """(key, rows) for each batch of `chunk`; rows in event-time order if `time_ordered`."""
    if chunk.num_rows == 0:
        return
    order = [("key", "ascending"), ("ns", "ascending")] if time_ordered else [("key", "ascending")]
    if time_ordered or len(pc.unique(chunk.column("key"))) > 1:
        chunk = chunk.take(pc.sort_indices(chunk, order))
    runs = pc.run_end_encode(chunk.column("key").combine_chunks())  # one run per key, now
    ends = np.cumsum(chunk.column("size").to_numpy(), dtype=np.int64)  # bytes up to each entry
    run_start = 0
    for key, run_end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist()):
        start = run_start
        while start < run_end:  # greedy: as many entries as fit from `start`
            before = ends[start - 1] if start else 0
            stop = start + int(np.searchsorted(ends[start:run_end], before + max_bytes, side="right"))
            stop = max(start + 1, min(stop, start + max_entries))
            yield key, chunk.slice(start, stop - start)
            start = stop
        run_start = run_end


def joined(column: pa.ChunkedArray) -> list[memoryview]:
    """A binary column's values back to back, as views of Arrow's buffers, with the very last byte
    left out: entries that each end with their separator (",") become the inside of a JSON array
    without a copy."""
    views = []
    for arr in column.chunks:
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
        views.append(memoryview(arr.buffers()[2])[offsets[0] : offsets[-1]])
    views[-1] = views[-1][:-1]
    return views
