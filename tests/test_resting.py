"""Retries and resting against a fixed-delay server with faults (`latency_server.py`): a burst of 503s, connection
resets and time-outs each cost at most as long again as the clean run (a ratio measured in the same test), a huge
`Retry-After` is capped, a replica down at start is left out and joins later, and `/v1/models` 503s are retried.

The client is `EndpointBackend` itself, driven as the engine drives it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from helpers import POPALIGN, latency_server, run_offline
from net import free_port
from popalign.backends.endpoint import EndpointBackend, RetryPolicy
from popalign.config import Endpoints
from popalign.errors import BackendError
from popalign.generation import GenerationParams, Request
from popalign.roles import EndpointSpec, same_server

HERE = Path(__file__).parent
DELAY = 0.2
CONCURRENCY = 32
TIMEOUT = 0.6  # three times the answer time: a stalled request holds its slot that long
REQUESTS = 1280  # a clean run takes at least REQUESTS * DELAY / CONCURRENCY = 8 s


def answered(folder: Path, url: str) -> list[str]:
    """The chats the server at `url` answered, one per answer (a chat whose answer came too late is there twice)."""
    lines = (folder / f"answered-{url.rsplit(':', 1)[1]}.jsonl").read_text().splitlines()
    return [json.loads(line)["chat"] for line in lines]


async def answer_all(urls: str, *, requests: int = REQUESTS, attempts: int = 8, max_wait: float = 120.0) -> float:
    """Seconds to answer `requests` distinct chats on the endpoint `urls` (replicas comma-separated)."""
    backend = EndpointBackend(
        Endpoints(concurrency=CONCURRENCY, timeout=TIMEOUT), retry=RetryPolicy(attempts=attempts, max_wait=max_wait)
    )
    spec = EndpointSpec.parse(urls)
    try:
        await backend.identity(spec)
        started = time.monotonic()
        tasks = [
            backend.submit(spec, Request("default", (("user", f"Say {n}."),)), GenerationParams(), _ignore, _quiet)
            for n in range(requests)
        ]
        answers = await asyncio.gather(*tasks)
        assert [answer.text for answer in answers] == [f"Answer to: Say {n}." for n in range(requests)]
        return time.monotonic() - started
    finally:
        await backend.aclose()


def _ignore(generation: object) -> None:
    """An answer: the test reads them from the tasks."""


def _quiet(reason: str, wait: float) -> None:
    """A retry: nothing to show here."""


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["burst", "reset", "timeout"])
def test_a_fault_mix_costs_at_most_the_clean_run_again(fault: str, tmp_path: Path, capsys) -> None:
    with latency_server(tmp_path) as url:
        clean = asyncio.run(answer_all(url))
    with latency_server(tmp_path, "--fault", fault) as url:
        faulty = asyncio.run(answer_all(url))
    capsys.readouterr()
    print(f"{fault}: clean {clean:.1f} s, with faults {faulty:.1f} s ({faulty / clean:.2f}x)")
    assert clean >= REQUESTS * DELAY / CONCURRENCY
    assert faulty <= 2 * clean, f"{fault}: {faulty:.1f} s against {clean:.1f} s clean"


@pytest.mark.slow
def test_a_huge_retry_after_is_capped_shown_and_counted_as_attempts(tmp_path: Path) -> None:
    with latency_server(tmp_path, "--fault", "retry-after") as url:
        started = time.monotonic()
        result = run_offline(
            POPALIGN, "build", "--model", f"default={url}", "--strategies", "prefix", "--limit", 1, "--retries", 3,
            "--max-retry-wait", 1, "--out", tmp_path / "d", "--no-cache", HF_HUB_OFFLINE="0",
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert result.returncode == 2 and elapsed < 60
    *progress, error = result.stderr.strip().splitlines()
    assert error == (
        f"popalign: error: endpoint {url}: still failing after 3 attempts (HTTP 429; Retry-After 86400 s, waited at "
        "most 1 s (--max-retry-wait)); finished answers are cached: rerun to resume"
    )
    shown = "".join(progress)
    assert f"retry 1: {url}: HTTP 429; Retry-After 86400 s, waited at most 1 s (--max-retry-wait); next try in 1 s" in (
        shown
    )


@pytest.mark.slow
def test_a_replica_down_at_start_is_left_out_then_joins(tmp_path: Path, capsys) -> None:
    port = free_port()
    late = f"http://127.0.0.1:{port}"

    def start_late() -> None:
        time.sleep(1.0)
        with latency_server(tmp_path, port=port):
            stop.wait()

    stop = threading.Event()
    joiner = threading.Thread(target=start_late)
    with latency_server(tmp_path) as url:
        joiner.start()
        try:
            asyncio.run(answer_all(f"{url},{late}"))
        finally:
            stop.set()
            joiner.join()
    warning = capsys.readouterr().err
    assert f"popalign: warning: endpoint {late}: unreachable" in warning and "going on with the other" in warning
    # every chat reached a server; a loaded machine may time one out after the server answered, and ask again
    assert answered(tmp_path, late) and {*answered(tmp_path, url), *answered(tmp_path, late)} == {
        f"Say {n}." for n in range(REQUESTS)
    }


@pytest.mark.slow
def test_models_503_at_start_is_retried_and_named(tmp_path: Path) -> None:
    with latency_server(tmp_path, "--models-503", "2") as url:
        asyncio.run(answer_all(url, requests=4))
    with latency_server(tmp_path, "--models-503", "1000") as url, pytest.raises(BackendError) as refused:
        asyncio.run(answer_all(url, requests=1))
    assert str(refused.value) == f"endpoint {url}: /v1/models answered HTTP 503"


@pytest.mark.slow
def test_two_spellings_of_one_server_are_refused_before_generating(tmp_path: Path) -> None:
    assert same_server("http://localhost:8080", "http://127.0.0.1:8080/")
    assert not same_server("http://localhost:8080", "http://127.0.0.1:8081")
    with latency_server(tmp_path) as url:
        port = url.rsplit(":", 1)[1]
        result = run_offline(
            POPALIGN, "build", "--model", f"large=http://localhost:{port}", "--model", f"small={url}/",
            "--model", f"default={url}", "--strategies", "nparam", "--limit", 1, "--out", tmp_path / "d", "--no-cache",
            HF_HUB_OFFLINE="0",
        )  # fmt: skip
        assert answered(tmp_path, url) == []
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"popalign: error: strategy 'nparam' contrasts roles large and small, but both are latency on one server "
        f"(http://localhost:{port} and {url}) with the same settings: give them different models or generation "
        "parameters"
    ]
