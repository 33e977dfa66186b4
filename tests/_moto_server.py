"""moto's SQS server with one fix: a receive is atomic.

moto 5.2's ``receive_message`` picks visible messages and marks them received without a
lock, so two concurrent receives (the threaded server runs each request in its own thread)
can both return one message: 602 deliveries of 600 messages with six long-polling clients,
measured here. Real SQS gives a message to one receive at a time (barring its rare
standard-queue duplicates). This wrapper serialises the pick-and-mark part of every receive
and lets go of the lock while a long poll waits, so long polls still run side by side.
tests/servers.py starts moto through it: ``python tests/_moto_server.py -H HOST -p PORT``.
"""

from __future__ import annotations

import sys
import threading

from moto import server
from moto.sqs import models

_receiving = threading.Lock()
_receive = models.SQSBackend.receive_message
_wait = models.Queue.wait_for_messages


def _atomic_receive(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    with _receiving:
        return _receive(self, *args, **kwargs)


def _wait_unlocked(self, timeout):  # type: ignore[no-untyped-def]
    _receiving.release()  # only ever called from inside _atomic_receive
    try:
        return _wait(self, timeout)
    finally:
        _receiving.acquire()


models.SQSBackend.receive_message = _atomic_receive
models.Queue.wait_for_messages = _wait_unlocked

if __name__ == "__main__":
    server.main(sys.argv[1:])
