"""A value per worker in shared memory (web.slots.WorkerSlots): written in a forked worker,
read in another process, vacant again once the master clears a dead worker's slot."""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Any

import pytest

from web.slots import WorkerSlots


def _worker(slots: WorkerSlots, age: int, value: int, started: Any) -> None:
    slots.claim(age)
    slots.put(value)
    started.set()
    signal.pause()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn's workers are forked")
def test_a_workers_value_shows_in_the_others_until_its_slot_is_cleared() -> None:
    fork = multiprocessing.get_context("fork")
    slots = WorkerSlots(4, vacant=-1)  # made before the fork, as web.server.run makes it
    started = fork.Event()
    worker = fork.Process(target=_worker, args=(slots, 6, 5, started), daemon=True)
    worker.start()
    try:
        assert started.wait(30)
        slots.claim(1)  # this process: worker number 1, slot 1
        assert slots.values.tolist() == [-1, 0, 5, -1]  # worker 6 is in slot 6 % 4
        assert sorted(slots.others().tolist()) == [-1, -1, 5]
        slots.put(3)
        assert slots.values[1] == 3
    finally:
        os.kill(worker.pid or 0, signal.SIGKILL)
        worker.join(10)
    assert slots.values[2] == 5  # a dead worker's value stays...
    slots.clear(6)  # ...until the master clears its slot (child_exit)
    assert slots.values.tolist() == [-1, 3, -1, -1]
