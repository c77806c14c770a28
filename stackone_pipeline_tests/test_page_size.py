"""The page size: with none configured the client asks for the largest page the API serves (a
silent clamp or a 400 teaches it the size, remembered per base URL); a configured one is sent as
it is. Against the simulator over real HTTP; what was asked is counted at the simulator."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stackone_pipeline.simulator import start_simulator
from stackone_pipeline.stackone.client import FetchStats, StackOneBadRequest
from stackone_pipeline.stackone.page_size import LARGEST, PageSizeMemo, refuses_size, smaller

from .conftest import closed_hour


@pytest.fixture
def sim_config(sim_config):
    sim_config.rows_per_hour = 4000  # several pages of 1000: a clamp shows as a short page with next
    return sim_config


def walk(client, hour):
    stats = FetchStats()
    pages = list(client.list_logs(filters={"start_date": hour, "end_date": hour + timedelta(hours=1)}, stats=stats))
    return [r["request_id"] for p in pages for r in p], stats


def expected(sim, hour) -> list[str]:
    return [r["request_id"] for r in sim.simulator.expected_records(hour, hour + timedelta(hours=1))]


def asked(sim) -> list[tuple[int, int]]:
    """(page_size as sent, status) of every list request the simulator answered."""
    return [(int(size), status) for size, status in sim.simulator.stats.page_sizes]


def test_adaptive_asks_the_largest_page_then_what_a_clamping_api_serves(sim, make_client):
    hour = closed_hour()
    ids, stats = walk(make_client(page_size=None), hour)
    assert len(expected(sim, hour)) > 3000 and ids == expected(sim, hour)  # every record once, in order
    log = asked(sim)
    assert log[0] == (LARGEST, 200) and log[1:] and all(a == (1000, 200) for a in log[1:])
    assert stats.page_size == 1000 and stats.page_size_adaptive and stats.page_size_refusals == 0
    assert stats.requests == stats.pages == len(log)
    before = len(log)
    again, stats = walk(make_client(page_size=None), hour - timedelta(hours=1))  # another client, same URL
    assert again == expected(sim, hour - timedelta(hours=1))
    assert asked(sim)[before:] == [(1000, 200)] * stats.pages  # remembered: 1000 from the first request


def test_adaptive_steps_down_when_the_api_refuses_the_size_and_remembers(sim, make_client):
    sim.config.page_size_policy, sim.config.max_page_size = "refuse", 500
    hour = closed_hour()
    ids, stats = walk(make_client(page_size=None), hour)
    assert ids == expected(sim, hour)
    log = asked(sim)
    assert log[0] == (LARGEST, 400) and log[1:] == [(500, 200)] * (len(log) - 1) and len(log) > 5
    assert stats.page_size == 500 and stats.page_size_refusals == 1 and stats.requests == stats.pages + 1
    before = len(log)
    again, stats = walk(make_client(page_size=None), hour - timedelta(hours=1))
    assert again == expected(sim, hour - timedelta(hours=1))
    assert asked(sim)[before:] == [(500, 200)] * stats.pages and stats.page_size_refusals == 0  # no 400 again


def test_a_refusal_naming_no_usable_size_walks_down_the_ladder_and_fails_clearly_at_the_bottom(sim, make_client):
    sim.config.page_size_policy, sim.config.max_page_size = "refuse", 10  # below anything the client asks
    with pytest.raises(StackOneBadRequest) as err:
        walk(make_client(page_size=None), closed_hour())
    assert [size for size, _ in asked(sim)] == [LARGEST, 5000, 2000, 1000, 500, 200, 100, 50, 25]
    assert {status for _, status in asked(sim)} == {400}
    message = str(err.value)
    assert "refused every page size down to page_size=25" in message and "STACKONE_PAGE_SIZE" in message
    assert "page_size must not be greater than 10" in message and err.value.status == 400


def test_a_configured_page_size_the_api_refuses_fails_naming_stackone_page_size(sim, make_client):
    sim.config.page_size_policy, sim.config.max_page_size = "refuse", 500
    with pytest.raises(StackOneBadRequest) as err:
        walk(make_client(page_size=1000), closed_hour())
    message = str(err.value)
    assert "page_size=1000 (STACKONE_PAGE_SIZE)" in message and "Set STACKONE_PAGE_SIZE" in message
    assert "page_size must not be greater than 500" in message and "statusCode" not in message
    assert err.value.status == 400 and err.value.server_message == "page_size must not be greater than 500"
    assert asked(sim) == [(1000, 400)]  # never adapted: one request


def test_a_configured_page_size_is_sent_as_it_is(sim, make_client):
    hour = closed_hour()
    ids, stats = walk(make_client(page_size=2000), hour)  # above the clamp: not adapted either
    assert ids == expected(sim, hour)
    assert {size for size, _ in asked(sim)} == {2000} and len(asked(sim)) > 2
    assert stats.page_size == 2000 and not stats.page_size_adaptive


@pytest.mark.parametrize("every,learnt", [(1, 500), (3, 1000)])
def test_pages_short_for_other_reasons_lose_no_record(sim, make_client, every, learnt):
    """Every `every`th page comes half full with next. All pages short (every=1): the ask drops to
    the first page served (500) and stays there, not lower (the largest page served with next).
    The first page full (every=3): 1000, and a later short page does not lower it."""
    sim.config.faults.short_page_every = every
    hour = closed_hour()
    ids, stats = walk(make_client(page_size=None), hour)
    assert ids == expected(sim, hour)  # every record once, in order
    log = asked(sim)
    assert log[0] == (LARGEST, 200) and all(a == (learnt, 200) for a in log[1:]) and stats.page_size == learnt
    assert stats.pages == len(log) > 4


def test_what_is_learnt_is_per_base_url(sim, sim_config, make_client):
    sim.config.page_size_policy, sim.config.max_page_size = "refuse", 500
    memo = PageSizeMemo()
    walk(make_client(page_size=None, page_size_memo=memo), closed_hour())
    assert memo.ask(sim.url) == 500
    sim_config.page_size_policy, sim_config.max_page_size = "clamp", 1000
    with start_simulator(sim_config) as other:
        hour = closed_hour()
        ids, stats = walk(make_client(page_size=None, page_size_memo=memo, base_url=other.url), hour)
        assert ids == expected(other, hour) and asked(other)[0] == (LARGEST, 200) and stats.page_size == 1000
    assert memo.ask(sim.url) == 500 and memo.ask(other.url) == 1000


def test_the_ladder_and_what_counts_as_a_refused_size():
    assert smaller(LARGEST) == 5000 and smaller(5000) == 2000 and smaller(500) == 200 and smaller(25) is None
    assert smaller(LARGEST, "page_size must not be greater than 500") == 500  # the size the API names
    assert smaller(LARGEST, "page_size must be between 1 and 300") == 300
    assert smaller(500, "page_size must be less than 500") == 200  # named but not below: the ladder
    assert smaller(LARGEST, "limit must not exceed 10") == 5000  # below the smallest size asked: the ladder
    assert refuses_size("page_size must not be greater than 500", 1000, first_page=False)
    assert refuses_size("pageSize too large", 1000, first_page=False)
    assert refuses_size("limit must not be greater than 500", 1000, first_page=True)
    assert not refuses_size("limit must not be greater than 500", 1000, first_page=False)  # later: not the size
    assert not refuses_size("limit must not be greater than 500", 25, first_page=True)
    assert not refuses_size("start_date must be an ISO-8601 date-time", 1000, first_page=True)
