"""Endpoint pacing (`popalign.backends.pace`): request and token budgets per minute, and the adaptive window that
halves on a 429 or 503 and grows while answers come clean; then, against a server with a hosted API's rate limit
(`latency_server.py --rps`), `--rpm` under the limit draws no 429 and the adaptive window draws far fewer than a
fixed concurrency."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from helpers import latency_server
from popalign.backends.endpoint import EndpointBackend, RetryPolicy
from popalign.backends.pace import START, Pace
from popalign.config import Endpoints
from popalign.errors import ConfigError
from popalign.generation import GenerationParams, Request
from popalign.roles import EndpointSpec


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def take(pace: Pace, tokens: int = 1, times: int = 1) -> None:
    async def run() -> None:
        for _ in range(times):
            await pace.take(tokens)

    asyncio.run(run())


def test_requests_per_minute_are_held_to_one_seconds_worth_and_refill_at_their_rate() -> None:
    clock = Clock()
    pace = Pace(limit=64, rpm=120, clock=clock)  # 2 a second
    take(pace, times=2)
    assert pace.room_in(1) == pytest.approx(0.5)  # the third waits half a second
    clock.now += 0.5
    assert pace.room_in(1) == 0
    take(pace)
    assert pace.in_flight == 3  # the window is not adaptive: all 64 places are open


def test_tokens_per_minute_count_the_estimate_until_the_answer_says_what_was_used() -> None:
    clock = Clock()
    pace = Pace(limit=64, tpm=6000, clock=clock)  # 100 tokens a second
    take(pace, tokens=80)
    assert pace.room_in(80) == pytest.approx(0.6)  # 20 left of 100: 60 more at 100 a second
    pace.settle(estimated=80, used=30)  # the answer was short: 50 tokens come back
    assert pace.room_in(80) == pytest.approx(0.1)
    take(pace, tokens=10_000, times=0)
    assert pace.room_in(10_000) == pytest.approx(0.3)  # more than a full bucket waits for a full one


def test_the_adaptive_window_doubles_then_grows_by_one_a_round_trip_and_halves_once_a_round_trip() -> None:
    clock = Clock()
    pace = Pace(limit=64, adaptive=True, clock=clock)
    assert pace.window == START
    for _ in range(4):  # slow start: one more per clean answer
        pace.answered()
    assert pace.window == 2 * START
    clock.now = 10.0
    pace.throttled()
    pace.throttled()  # the same round trip's second refusal does not halve again
    assert pace.window == START
    for _ in range(4):  # past the first overload: one more per window of answers
        pace.answered()
    assert pace.window == pytest.approx(START + 1, abs=0.2)
    for _ in range(3000):
        pace.answered()
    assert pace.window == 64  # never above the endpoint's slots
    for _ in range(20):
        clock.now += 10
        pace.throttled()
    assert pace.window == 1  # never below one


def test_a_fixed_pace_never_moves_its_window() -> None:
    pace = Pace(limit=32)
    pace.throttled()
    pace.answered()
    assert pace.window == 32


def test_rates_are_settings_with_their_checks() -> None:
    with pytest.raises(ConfigError, match="rpm: expected a whole number >= 1, got 0"):
        Endpoints(rpm=0)
    assert Endpoints(tpm=90_000, adaptive_concurrency=True).tpm == 90_000


def _nothing(*_: object) -> None:
    """An answer or a retry: the server counts what matters here."""


def answer(url: str, settings: Endpoints, requests: int) -> int:
    """Answer `requests` distinct chats through one endpoint backend; return the 429s the server sent."""

    async def run() -> None:
        backend = EndpointBackend(settings, retry=RetryPolicy(attempts=30, base=0.2, cap=4.0, max_wait=4.0))
        spec = EndpointSpec.parse(url)
        try:
            await backend.identity(spec)
            chats = [Request("default", (("user", f"Say {n}."),)) for n in range(requests)]
            asked = [backend.submit(spec, chat, GenerationParams(), _nothing, _nothing) for chat in chats]
            await asyncio.gather(*asked)
        finally:
            await backend.aclose()

    asyncio.run(run())
    with urllib.request.urlopen(f"{url}/stats") as response:
        return json.loads(response.read())["refused"]


@pytest.mark.slow
def test_requests_per_minute_under_the_servers_limit_draw_no_429(tmp_path) -> None:
    with latency_server(tmp_path, "--rps", "40") as url:
        assert answer(url, Endpoints(concurrency=128, rpm=35 * 60), 200) == 0


@pytest.mark.slow
def test_the_adaptive_window_draws_far_fewer_429s_than_a_fixed_concurrency(tmp_path) -> None:
    """The same 400 chats against a limit of 40 a second: fixed at 128 in flight, then adaptive up to 128."""
    with latency_server(tmp_path, "--rps", "40", port=None) as url:
        fixed = answer(url, Endpoints(concurrency=128), 400)
    with latency_server(tmp_path, "--rps", "40") as url:
        adaptive = answer(url, Endpoints(concurrency=128, adaptive_concurrency=True), 400)
    assert fixed > 400 and adaptive * 5 < fixed, (fixed, adaptive)
