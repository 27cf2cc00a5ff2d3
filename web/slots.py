"""A value per gunicorn worker, in shared memory made in the master before the fork: what
web.inflight.InFlight (requests under way) and web.worker.Connections (connections held)
keep, each worker writing its own slot and reading the others'.

A slot has one writer, so no lock is shared between processes: a worker killed mid-write
cannot leave one held, and the master resets a dead worker's slot (clear). Slots are
gunicorn's worker numbers (age) modulo their count; two live workers sharing one would only
blur what the others read.
"""

from __future__ import annotations

import multiprocessing

import numpy as np


class WorkerSlots:
    """A slot per worker; `vacant` is what a slot holds while no live worker has it."""

    def __init__(self, slots: int, vacant: int = 0) -> None:
        self._shared = multiprocessing.RawArray("i", max(1, slots))
        self.values = np.frombuffer(self._shared, dtype=np.int32)
        self.values[:] = vacant
        self._vacant = vacant
        self._slot = 0

    def claim(self, age: int) -> None:
        """In a worker after the fork: its value goes in its worker number's slot, from 0."""
        self._slot = age % len(self.values)
        self.values[self._slot] = 0

    def clear(self, age: int) -> None:
        """In the master when a worker has exited: its slot is vacant again."""
        self.values[age % len(self.values)] = self._vacant

    def put(self, value: int) -> None:
        """This worker's value."""
        self.values[self._slot] = value

    def others(self) -> np.ndarray:
        """The other slots' values, vacant ones included."""
        return np.delete(self.values, self._slot)
