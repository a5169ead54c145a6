"""Every endpoint answer is bounded: `--timeout` is a deadline for the whole request (an answer dripped one byte at
a time times out), and an answer longer than its `max_new_tokens` allow is abandoned as it arrives (a declared
50 MB, or an endless chunked one); each is a failed try, retried, and the retry's answer is the one kept."""

from __future__ import annotations

import asyncio

import pytest

from fault_proxy import fault_proxy
from popalign.backends.endpoint import EndpointBackend, RetryPolicy, answer_limit
from popalign.config import Endpoints
from popalign.generation import Generation, GenerationParams, Request
from popalign.roles import EndpointSpec

TIMEOUT = 2.0
PARAMS = GenerationParams(max_new_tokens=64)
REQUESTS = [Request("default", (("user", f"Explain tides [ok] {n}."),)) for n in range(3)]


async def answer(url: str) -> tuple[list[Generation], list[str]]:
    """The three requests' answers through `url`, and the reason of every retry."""
    retries: list[str] = []
    backend = EndpointBackend(Endpoints(concurrency=4, timeout=TIMEOUT), retry=RetryPolicy(attempts=3, base=0.1))
    spec = EndpointSpec.parse(url)
    try:
        await backend.identity(spec)
        tasks = [
            backend.submit(spec, request, PARAMS, lambda generation: None, lambda reason, wait: retries.append(reason))
            for request in REQUESTS
        ]
        return list(await asyncio.gather(*tasks)), retries
    finally:
        await backend.aclose()


@pytest.mark.slow
def test_a_dripped_or_oversized_answer_is_a_failed_try_and_never_kept(scripted) -> None:
    url, _ = scripted
    clean, none = asyncio.run(answer(url))
    assert none == []
    with fault_proxy(url, ["drip", "huge", "flood"] + ["pass"] * 3) as proxy:
        answers, retries = asyncio.run(answer(proxy.url))
    assert answers == clean  # each request answered whole on its retry
    limit = answer_limit(PARAMS.max_new_tokens)
    assert sorted(reason.removeprefix(f"{proxy.url}: ") for reason in retries) == sorted(
        [
            f"no whole answer within {TIMEOUT:g} s (--timeout)",
            f"answer of 50,000,000 bytes, over the {limit:,} its max_new_tokens allow",
            f"answer over the {limit:,} bytes its max_new_tokens allow",
        ]
    )
    assert dict(proxy.injected) == {"drip": 1, "huge": 1, "flood": 1}
    assert proxy.endless_bytes < 16 * 1024 * 1024  # read no further than the cap (and the sockets' buffers)
