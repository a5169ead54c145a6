"""How fast one endpoint is asked: at most `rpm` requests and `tpm` tokens a minute (a hosted API's limits, kept by
two token buckets that fill at their rate and hold one second's worth), and, adaptive, how many requests are in
flight at once.

The adaptive window works as TCP's congestion control does (AIMD): it starts at `START`, grows by one for each
answer that comes clean until the first sign of overload (slow start: doubling each round trip), then by one per
window of clean answers; a 429 or 503 halves it, once per round trip however many requests that round trip
refused. It never exceeds the endpoint's slots (`--concurrency` per replica), so a server that allows more is
asked as today, and one that allows less is asked near what it allows rather than answering a storm of 429s.

>>> pace = Pace(limit=64, adaptive=True)
>>> pace.window, pace.answered(), pace.window
(4.0, None, 5.0)
>>> pace.throttled(), pace.window
(None, 2.5)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: The adaptive window's first size: requests in flight before any answer says how much the server takes.
START = 4.0


@dataclass
class Pace:
    """The requests in flight and the per-minute budgets of one endpoint (see the module's doc)."""

    limit: int
    adaptive: bool = False
    rpm: int | None = None
    tpm: int | None = None
    clock: Callable[[], float] = time.monotonic
    window: float = field(init=False)
    in_flight: int = field(default=0, init=False)
    #: the window at which growth turns from doubling to one per round trip (set by the first overload)
    threshold: float = field(init=False)
    _requests: float = field(init=False)
    _tokens: float = field(init=False)
    _filled_at: float = field(init=False)
    _cut_at: float = field(default=-1e9, init=False)
    _round_trip: float = field(default=1.0, init=False)
    _changed: asyncio.Event | None = field(default=None, init=False)
    _turn: asyncio.Lock | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.window = min(float(self.limit), START) if self.adaptive else float(self.limit)
        self.threshold = float(self.limit)
        self._requests, self._tokens = self._held(self.rpm), self._held(self.tpm)
        self._filled_at = self.clock()

    async def take(self, tokens: int) -> float:
        """Wait until a request of about `tokens` tokens (prompt and answer) may go: a place in the window and room
        in both budgets. A request larger than a full token bucket waits for a full one and takes it all.
        Returns when it was let go (for `answered`'s round trip). Requests wait their turn in order: only the first
        watches the window and the clock, so a thousand waiting requests cost no more than one."""
        self._turn = self._turn or asyncio.Lock()
        async with self._turn:
            while True:
                short = self.room_in(tokens)
                if self.in_flight < max(1, int(self.window)) and short <= 0:
                    self.in_flight += 1
                    if self.rpm:
                        self._requests -= 1
                    if self.tpm:
                        self._tokens -= min(tokens, self._held(self.tpm))
                    return self.clock()
                changed = self._changed = self._changed or asyncio.Event()
                with contextlib.suppress(TimeoutError):  # a place freed, or the budgets filled enough
                    await asyncio.wait_for(changed.wait(), timeout=short if short > 0 else None)

    def settle(self, estimated: int, used: int) -> None:
        """Give back to the token budget what a request took beyond what it used (or take what it used beyond)."""
        if self.tpm and used:
            self._tokens = min(self._held(self.tpm), self._tokens + min(estimated, self._held(self.tpm)) - used)

    def answered(self, sent_at: float | None = None) -> None:
        """A request came back clean: free its place and, adaptive, grow the window."""
        if sent_at is not None:
            self._round_trip = 0.8 * self._round_trip + 0.2 * max(0.001, self.clock() - sent_at)
        self._release()
        if self.adaptive:
            step = 1.0 if self.window < self.threshold else 1.0 / self.window
            self.window = min(float(self.limit), self.window + step)

    def throttled(self) -> None:
        """The server refused a request as overloaded (429, 503): free its place and, adaptive, halve the window,
        once per round trip."""
        self._release()
        now = self.clock()
        if self.adaptive and now - self._cut_at >= self._round_trip:
            self.window = max(1.0, self.window / 2)
            self.threshold = self.window
            self._cut_at = now

    def failed(self) -> None:
        """A request failed otherwise (a timeout, a refusal): free its place; the window stays."""
        self._release()

    def _release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def room_in(self, tokens: int) -> float:
        """Seconds until both budgets have room for a request of `tokens` tokens (0: now)."""
        self._fill()
        return self._short_of(tokens)

    def _fill(self) -> None:
        """Refill both buckets at their rate per minute since the last fill, up to a minute's worth."""
        now = self.clock()
        elapsed, self._filled_at = now - self._filled_at, now
        if self.rpm:
            self._requests = min(self._held(self.rpm), self._requests + elapsed * self.rpm / 60)
        if self.tpm:
            self._tokens = min(self._held(self.tpm), self._tokens + elapsed * self.tpm / 60)

    @staticmethod
    def _held(per_minute: int | None) -> float:
        """What a bucket holds when full: one second's worth (hosted APIs enforce a minute's limit over shorter
        spans: 600 a minute may be refused beyond 10 in a second), at least one."""
        return max(1.0, (per_minute or 0) / 60)

    def _short_of(self, tokens: int) -> float:
        """Seconds until both budgets have room for one more request of `tokens` tokens (0: now)."""
        wait = 0.0
        if self.rpm and self._requests < 1:
            wait = (1 - self._requests) * 60 / self.rpm
        if self.tpm:
            needed = min(tokens, self._held(self.tpm))
            if self._tokens < needed:
                wait = max(wait, (needed - self._tokens) * 60 / self.tpm)
        return wait
