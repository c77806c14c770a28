"""Batching a chunk: per key, in event-time order, within both bounds; and reading a batch's
entries straight out of Arrow's buffers."""

from __future__ import annotations

import random

import pyarrow as pa

from stackone_pipeline.sinks.batching import batches, joined


def chunk(n: int, seed: int = 7) -> pa.Table:
    rnd = random.Random(seed)
    keys = [rnd.choice(["a", "b", None]) for _ in range(n)]
    ns = [rnd.randrange(10**9) for _ in range(n)]
    entries = [f'{{"n":{i}}},'.encode() + b"x" * rnd.choice([0, 10, 500]) for i in range(n)]
    return pa.table({"key": keys, "ns": ns, "entry": entries, "size": [len(e) for e in entries]})


def test_batches_keep_keys_apart_in_time_order_within_both_bounds():
    table = chunk(2_000)
    out = list(batches(table, max_entries=50, max_bytes=4_000))
    assert sum(rows.num_rows for _, rows in out) == 2_000  # every entry once
    seen = set()
    for key, rows in out:
        assert set(rows.column("key").to_pylist()) == {key}
        stamps = rows.column("ns").to_pylist()
        assert stamps == sorted(stamps)
        assert rows.num_rows <= 50 and sum(rows.column("size").to_pylist()) <= 4_000
        seen.update(e for e in rows.column("entry").to_pylist())
    assert len(seen) == 2_000
    # greedy: a batch is cut only when the next entry would not fit
    for (key, rows), (next_key, nxt) in zip(out, out[1:]):
        if key == next_key:
            full = rows.num_rows == 50 or sum(rows.column("size").to_pylist()) + nxt.column("size")[0].as_py() > 4_000
            assert full


def test_an_entry_larger_than_the_byte_bound_travels_alone():
    table = pa.table(
        {"key": ["k"] * 3, "ns": [1, 2, 3], "entry": [b"a,", b"b" * 100 + b",", b"c,"], "size": [2, 101, 2]}
    )
    assert [rows.column("entry").to_pylist() for _, rows in batches(table, 10, 50)] == [
        [b"a,"],
        [b"b" * 100 + b","],
        [b"c,"],
    ]


def test_joined_reads_a_sliced_batch_without_its_last_separator():
    table = pa.table({"entry": pa.chunked_array([[b"1,", b"22,"], [b"333,", b"4,"]])})
    assert b"".join(joined(table.column("entry"))) == b"1,22,333,4"
    assert b"".join(joined(table.slice(1, 2).column("entry"))) == b"22,333"
