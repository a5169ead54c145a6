"""The rules on their own, without a server: how a failed endpoint request is classified and how long it waits,
when a replica rests and when it is well again, and which pushes publishing refuses."""

from __future__ import annotations

import email.utils
import random
import re
import time

import httpx2
import pytest

from popalign.backends.endpoint import (
    REST_AFTER,
    EndpointBackend,
    HTTPStatus,
    Oversized,
    RetryPolicy,
    _Endpoint,
    _Replica,
    _retry_after,
    classify,
)
from popalign.errors import ForeignRepositoryError, VersionExistsError, VersionTooOldError
from popalign.model_identity import ModelIdentity
from popalign.publish import check_publishable
from popalign.roles import EndpointSpec


def http_error(status: int, **headers: str) -> HTTPStatus:
    return HTTPStatus(status, headers.get("Retry-After"), '{"error": "no"}')


def test_failures_are_retried_refused_or_fatal_by_kind() -> None:
    busy = classify(http_error(503, **{"Retry-After": "7"}))
    assert (busy.reason, busy.retry_after, busy.fatal, busy.refused) == ("HTTP 503", 7.0, False, False)
    for status in (408, 425, 429, 500, 502, 504):
        assert not classify(http_error(status)).fatal and not classify(http_error(status)).refused
    for status, says in ((401, "unauthorized"), (403, "forbidden"), (404, "no chat completions route")):
        failure = classify(http_error(status))
        assert failure.fatal and says in failure.reason
    too_long = classify(http_error(400))
    assert too_long.refused and not too_long.fatal and "HTTP 400" in too_long.reason
    assert classify(Oversized("answer over the 90,112 bytes")).reason == "answer over the 90,112 bytes"
    assert classify(httpx2.ReadTimeout("slow")).reason == "timed out"
    assert classify(httpx2.ConnectError("refused")).reason.startswith("connection failed (ConnectError")
    assert classify(KeyError("choices")).reason.startswith("unreadable answer")
    with pytest.raises(ZeroDivisionError):  # a bug is not a server failure: it is raised, never retried
        classify(ZeroDivisionError())


def test_retry_after_is_read_in_both_forms() -> None:
    assert _retry_after("12") == 12.0
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= (_retry_after(in_a_minute) or 0) <= 60
    assert _retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert _retry_after("soon") is None and _retry_after(None) is None


def test_a_wait_is_the_backoff_but_never_less_than_retry_after_capped() -> None:
    policy = RetryPolicy(attempts=6, base=1.0, cap=60.0, max_wait=120.0)
    random.seed(0)
    waits = [policy.delay(attempt, None) for attempt in range(8) for _ in range(200)]
    bounds = [min(60.0, 2.0**attempt) for attempt in range(8) for _ in range(200)]
    assert all(0 <= wait <= bound for wait, bound in zip(waits, bounds, strict=True))
    assert max(waits[-200:]) > 30  # the backoff grows to the cap
    assert policy.delay(0, 10.0) == 10.0  # the server asked for more than the backoff
    assert policy.delay(0, 86400.0) == 120.0  # capped by max_wait
    assert policy.delay(3, None, spent=100.0) == 0.0  # a try that timed out has waited already
    assert policy.patience == sum(min(60.0, 2.0**attempt) for attempt in range(6))


class Clock:
    """The time as the resting rules read it, moved on by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resting(clock: Clock, base: float = 1.0) -> tuple[EndpointBackend, _Endpoint, _Replica]:
    backend = EndpointBackend(retry=RetryPolicy(base=base, max_wait=120.0), clock=clock)
    replica = _Replica(url="http://a:1", http=None, headers={}, slots=None)  # type: ignore[arg-type]
    endpoint = _Endpoint(EndpointSpec.parse("http://a:1"), "m", "vllm", ModelIdentity("m"), [replica])
    return backend, endpoint, replica


def test_a_replica_rests_after_failures_in_a_row_and_is_well_once_it_answers() -> None:
    clock = Clock()
    backend, endpoint, replica = resting(clock)
    down = classify(httpx2.ConnectError("down"))
    sent = clock.now
    clock.now += 0.01
    for _ in range(REST_AFTER + 2):  # a burst of failures of requests sent together counts once
        backend._failed(endpoint, replica, down, sent, probe=False)
    assert replica.failures == 1 and replica.resting_until <= clock.now
    for _ in range(REST_AFTER - 1):
        clock.now += 0.01
        backend._failed(endpoint, replica, down, clock.now, probe=False)
    assert replica.failures == REST_AFTER and replica.resting_until <= clock.now  # failing for less than `base`
    clock.now += 1.0
    backend._failed(endpoint, replica, down, clock.now, probe=False)
    # the fourth failure in a row, failing for `base` seconds: rest base * 2 ** (4 - REST_AFTER) = 2 s
    assert replica.resting_until == clock.now + 2.0 and replica.last.startswith("connection failed")
    backend._answered(endpoint, replica, probe=True)
    assert (replica.failures, replica.resting_until, replica.probing) == (0, 0.0, False)


def test_a_replica_rests_as_long_as_retry_after_asks_up_to_the_cap() -> None:
    clock = Clock()
    backend, endpoint, replica = resting(clock)
    backend._failed(endpoint, replica, classify(http_error(503, **{"Retry-After": "20"})), 0.0, probe=False)
    assert replica.resting_until == clock.now + 20
    backend, endpoint, replica = resting(clock)
    backend._failed(endpoint, replica, classify(http_error(429, **{"Retry-After": "86400"})), 0.0, probe=False)
    assert replica.resting_until == clock.now + 120


@pytest.mark.parametrize(
    ("version", "tags", "history", "remote", "force", "error", "says"),
    [
        ((1, 0, 0), set(), [], ["data/x.csv", "README.md"], False, ForeignRepositoryError, "did not publish (data/)"),
        ((1, 0, 0), set(), [], ["train.json"], False, ForeignRepositoryError, "did not publish (train.json)"),
        ((1, 0, 0), {"v1.0.0"}, ["1.0.0"], [], False, VersionExistsError, "v1.0.0 is already published"),
        ((1, 0, 0), {"v1.0.0", "v1.1.0"}, ["1.0.0", "1.1.0"], [], True, VersionTooOldError, "only the newest"),
        ((1, 0, 5), {"v1.1.0"}, ["1.1.0"], [], False, VersionTooOldError, "older than the newest published version"),
    ],
)
def test_publishing_refuses_what_would_break_published_versions(version, tags, history, remote, force, error, says):
    with pytest.raises(error, match=re.escape(says)):
        check_publishable("org/d", version, tags=tags, history=history, remote=remote, force=force)


def test_publishing_allows_a_new_repository_a_newer_version_and_a_forced_newest() -> None:
    check_publishable("org/d", (1, 0, 0), tags=set(), history=[], remote=[".gitattributes", "README.md"], force=False)
    check_publishable("org/d", (1, 2, 0), tags={"v1.1.0"}, history=["1.1.0"], remote=["data/a"], force=False)
    check_publishable("org/d", (1, 1, 0), tags={"v1.0.0", "v1.1.0"}, history=["1.0.0", "1.1.0"], remote=[], force=True)
