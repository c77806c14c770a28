"""Read what the simulator saw, for assertions counted at the server."""


def request_log(sim) -> list[tuple[float, int]]:
    """(monotonic time, status) of every request to /requests/logs*."""
    return [(t, status) for t, _wall, path, status in sim.simulator.stats.events if path.startswith("/requests/logs")]
