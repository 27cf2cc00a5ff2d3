"""engine.core.poller: rounds at the interval, early after wake(), failures logged and
retried (with on_error told), a stop that ends the thread, and never a start after close."""

from __future__ import annotations

import logging
import threading

import pytest

from engine.core.poller import Poller


def test_runs_at_start_then_at_each_wake() -> None:
    rounds: list[int] = []
    ran = threading.Semaphore(0)

    def work() -> None:
        rounds.append(len(rounds))
        ran.release()

    poller = Poller("test", work, 3600, at_start=True)
    poller.start()
    poller.start()  # a second start is a no-op: still one thread
    assert ran.acquire(timeout=5)
    poller.wake()
    assert ran.acquire(timeout=5)
    poller.close()
    assert rounds == [0, 1]
    assert not [t for t in threading.enumerate() if t.name == "test"]


def test_waits_first_without_at_start() -> None:
    calls: list[int] = []
    poller = Poller("test", lambda: calls.append(1), 3600)
    poller.start()
    poller.close()
    assert calls == []


def test_a_failure_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    attempts = iter([ValueError("boom"), None])

    def work() -> None:
        outcome = next(attempts)
        if outcome is not None:
            raise outcome
        done.set()

    poller = Poller(
        "test", work, 0.01, at_start=True, failed="the test round failed", on_error=errors.append
    )
    with caplog.at_level(logging.ERROR, logger="engine.core.poller"):
        poller.start()
        assert done.wait(timeout=5)
    poller.close()
    assert [str(e) for e in errors] == ["boom"]
    assert [r.message for r in caplog.records] == ["the test round failed"]


def test_the_interval_may_be_a_function() -> None:
    waits = iter([0.01, 0.01, 3600.0])
    count = threading.Semaphore(0)
    poller = Poller("test", count.release, lambda: next(waits), at_start=True)
    poller.start()
    for _ in range(3):  # at start, then after 0.01 twice; the third wait is an hour
        assert count.acquire(timeout=5)
    poller.close()


def test_never_starts_after_close() -> None:
    poller = Poller("test", lambda: None, 1.0)
    poller.close()
    poller.start()
    assert not poller.started


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        Poller("test", lambda: None, 0)
