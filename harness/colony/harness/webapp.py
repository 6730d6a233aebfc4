"""A small HTTP service for the rollout tests and benchmark, run by a job as
``python webapp.py PORT`` (the standard library alone: it starts fast, and it runs
with any interpreter).

``GET /`` answers ``<instance> v<VERSION>`` (200); ``GET /checks``, how many times
/health was asked so far. ``GET /health`` answers by the
instance's health mode: the first line of the file ``$CONTROL/<instance id>`` when
``CONTROL`` names a folder and the file exists, else ``$HEALTH``, else ``ok``:

- ``ok``: 200; ``fail``: 500;
- ``flap``: 200 and 500 in turn (healthy, unhealthy, healthy...);
- ``hang``: never answers; ``garbage``: bytes that are not HTTP, then closes.

A test turns one instance sick, and back, by writing its control file.
"""

from __future__ import annotations

import http.server
import itertools
import os
import sys
import threading

INSTANCE = os.environ.get("COLONY_INSTANCE", "")
VERSION = os.environ.get("VERSION", "")
CONTROL = os.environ.get("CONTROL", "")
_turns = itertools.cycle((200, 500))
_lock = threading.Lock()
asked = 0
"""/health requests so far."""


def mode() -> str:
    if CONTROL and INSTANCE:
        try:
            with open(os.path.join(CONTROL, INSTANCE)) as control:
                return control.readline().strip() or "ok"
        except OSError:
            pass
    return os.environ.get("HEALTH", "ok")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        global asked
        if self.path == "/checks":
            self.answer(200, f"{asked}\n")
            return
        if self.path != "/health":
            self.answer(200, f"{INSTANCE} v{VERSION}\n")
            return
        with _lock:
            asked += 1
        health = mode()
        if health == "hang":
            threading.Event().wait()
        elif health == "garbage":
            self.wfile.write(b"\x00\xffnot http at all\r\n")
        elif health == "flap":
            with _lock:
                status = next(_turns)
            self.answer(status, "flap\n")
        else:
            self.answer(200 if health == "ok" else 500, f"{health}\n")

    def answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a line per request would fill the instance's log under a client loop


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("", int(sys.argv[1])), Handler).serve_forever()
