"""The gunicorn worker `recsearch serve` runs: gthread, with three changes.

- Connections are spread over the workers (Connections). A kept-alive connection stays with
  the worker that accepted it, and gunicorn's workers race for each one: wrk's 4
  connections landed all on one worker in 2 of 8 tries here (SciFact, unique texts, 2
  workers), which then served 83-89 requests/s, one worker's worth, against 122-141 when
  they were split. A worker that holds more connections than another now leaves a new one
  to the other for a moment, and the other takes it.
- Errors gunicorn answers itself (a request line too long, a malformed request) come back in
  JSON, as the app's own errors do (write_json_error).
- A response goes out in one write, its head with its body (OneWriteResponse). gunicorn
  writes the head, then the body: two small writes, so on loopback two wake-ups of the
  client and, on a busy worker, two waits to win the GIL back after the system call. Under
  load (SciFact, 4 connections, unique texts) py-spy found 9 % of a worker's samples in
  sending the head alone and 0.2 % in sending the body after it.
"""

from __future__ import annotations

import json
import select
import time
from typing import Any

from web.slots import WorkerSlots

# How long at most a worker that holds more connections than another leaves a new one to the
# other: that worker's loop wakes for the same connection and, given the GIL within a
# millisecond or two (web.server.SWITCH_INTERVAL_S), accepts it. The bound only matters
# where the other is stuck.
BALANCE_WAIT_S = 0.02
_LOOK_EVERY_S = 0.0005


class Connections(WorkerSlots):
    """The connections each worker holds: a slot per worker (web.slots), -1 where none
    lives."""

    def __init__(self, slots: int) -> None:
        super().__init__(slots, vacant=-1)

    def ahead(self, held: int) -> bool:
        """Another live worker holds fewer connections than `held`."""
        others = self.others()
        live = others[others >= 0]
        return bool(live.size) and held > int(live.min())


def serving_worker(connections: Connections | None = None) -> type:
    """gunicorn's gthread worker, spreading connections over the workers (with
    `connections`), answering the requests gunicorn refuses itself in JSON and sending each
    response in one write."""
    from gunicorn import util
    from gunicorn.http import wsgi
    from gunicorn.workers.gthread import ThreadWorker

    class ServingWorker(ThreadWorker):  # type: ignore[misc]
        def accept(self, listener: Any) -> None:
            if connections is not None:
                # The other worker's to take while this one holds more; once it has (nothing
                # is waiting), back to the loop.
                deadline = time.monotonic() + BALANCE_WAIT_S
                while connections.ahead(self.nr_conns) and time.monotonic() < deadline:
                    if not select.select([listener], [], [], 0)[0]:
                        return
                    time.sleep(_LOOK_EVERY_S)
            super().accept(listener)  # taken meanwhile after all: gunicorn lets it go
            if connections is not None:
                connections.put(self.nr_conns)

        def wait_for_and_dispatch_events(self, timeout: float) -> None:
            super().wait_for_and_dispatch_events(timeout)
            if connections is not None:  # connections closed meanwhile
                connections.put(self.nr_conns)

        def init_process(self) -> None:
            if connections is not None:
                connections.claim(self.age)
            # Worker.handle_error writes its page through util.write_error and nothing else
            # calls it: replacing it in this process (after the fork) changes only the shape
            # of those pages, with gunicorn's own statuses, reasons and logging kept.
            util.write_error = write_json_error
            # wsgi.create makes every HTTP/1 response of this class (HTTP/2 passes its own).
            wsgi.Response = one_write_response()
            super().init_process()

    return ServingWorker


def one_write_response() -> type:
    """gunicorn's Response, sending its head with the first body bytes in one write when the
    body's length is known (Content-Length: every JSON response of the app) and they are all
    of it; any other response (chunked, HEAD, 204, a body written in parts, sendfile) goes
    out as gunicorn sends it."""
    from gunicorn import util
    from gunicorn.http.wsgi import Response

    class OneWriteResponse(Response):  # type: ignore[misc]
        def write(self, arg: bytes) -> None:
            whole = (
                not self.headers_sent
                and isinstance(arg, bytes)
                and not self.chunked
                and not self._omits_body
                and self.response_length == len(arg)
                and self.sent == 0
            )
            if not whole:
                super().write(arg)
                return
            # send_headers()'s head, then write()'s bookkeeping for a body sent whole.
            head = self.default_headers()
            head.extend([f"{k}: {v}\r\n" for k, v in self.headers])
            self.headers_sent = True
            self.sent = len(arg)
            util.write(self.sock, ("".join(head) + "\r\n").encode("latin-1") + arg)

    return OneWriteResponse


def write_json_error(sock: Any, status: int, reason: str, message: str) -> None:
    """An error gunicorn answers itself, as the app answers errors: {"error", "message"}."""
    from gunicorn import util

    from engine.core.errors import readable

    error = "internal_error" if status == 500 else reason.lower().replace(" ", "_")
    if not message:
        message = "internal error; see the server log" if status >= 500 else reason
    # ASCII (json.dumps escapes the rest), so the length in bytes is the length in characters;
    # readable: gunicorn's message may quote the whole request line.
    body = json.dumps({"error": error, "message": readable(message)}) + "\n"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, (head + body).encode("latin-1"))
