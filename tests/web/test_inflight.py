"""Requests under way, counted per worker into shared memory and summed over the server's
workers (web.inflight.InFlight): the WSGI middleware, and real forked processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterable
from typing import Any

import pytest

from web.inflight import InFlight


def test_the_middleware_counts_a_request_while_it_runs() -> None:
    in_flight = InFlight()
    seen: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(in_flight.count())
        if environ.get("fail"):
            raise RuntimeError("the view broke")
        return [b"ok"]

    counted = in_flight.wrap(app)
    assert list(counted({}, None)) == [b"ok"]
    with pytest.raises(RuntimeError):
        counted({"fail": True}, None)
    assert seen == [1, 1] and in_flight.count() == 0  # a failed request is counted out too
    assert not in_flight.crowded()


def _busy_worker(in_flight: InFlight, age: int, started: Any) -> None:
    in_flight.claim(age)
    in_flight._add(1)  # a request under way, never finished
    started.set()
    signal.pause()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn's workers are forked")
def test_workers_see_each_others_requests_and_a_dead_ones_are_cleared() -> None:
    fork = multiprocessing.get_context("fork")
    in_flight = InFlight(slots=8)  # made before the fork, as web.server.run makes it
    started = fork.Event()
    worker = fork.Process(target=_busy_worker, args=(in_flight, 3, started), daemon=True)
    worker.start()
    try:
        assert started.wait(30)
        in_flight.claim(2)  # this process: another worker
        assert in_flight.count() == 1 and not in_flight.crowded()  # only the other's
        seen: list[bool] = []
        in_flight.wrap(lambda e, s: seen.append(in_flight.crowded()) or [])({}, None)
        assert seen == [True]  # this request beside the other worker's
    finally:
        os.kill(worker.pid or 0, signal.SIGKILL)
        worker.join(10)
    assert in_flight.count() == 1  # the dead worker's request still shows...
    in_flight.clear(3)  # ...until the master clears its slot (child_exit)
    assert in_flight.count() == 0
