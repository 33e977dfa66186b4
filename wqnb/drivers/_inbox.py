"""The local buffer a broker driver's deliveries wait in until a ``fetch`` takes them.

A push consumer (AMQP) or a read loop (Redis) appends; fetchers wait in FIFO order and
each wake-up goes to one fetcher. A fetcher cancelled after its wake-up passes it on, so
a message never sits in the buffer while another fetcher waits.
"""

from __future__ import annotations

import asyncio
import collections

from ..message import Message

__all__ = ["Inbox"]


class Inbox(collections.deque[Message]):
    """A deque of delivered messages plus the fetchers waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def wake(self) -> None:
        """Wake the longest-waiting fetcher still waiting (call after appending)."""
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def take(self, max_messages: int) -> list[Message]:
        """Wait until a message is here, then pop up to ``max_messages`` (at least 1)."""
        while not self:
            w = asyncio.get_running_loop().create_future()
            self.waiters.append(w)
            try:
                await w
            except asyncio.CancelledError:
                if w.done() and not w.cancelled():
                    self.wake()  # hand the wake-up to the next fetcher
                raise
        out = [self.popleft() for _ in range(min(max(1, max_messages), len(self)))]
        if self:
            self.wake()
        return out
