"""Generation on TGI or OpenAI-compatible endpoints: chat completions over `huggingface_hub`'s HTTP client.

Each replica URL has its own semaphore of `concurrency` slots, so requests go out as soon as a slot frees (never
batch-and-wait). A request goes to the least busy replica that is not resting. Failures that may pass (429, 5xx,
time-outs, resets, unreadable answers) are retried, each request on its own: exponential backoff with full jitter,
at least as long as the server's `Retry-After` asks but never longer than `max_wait`, and every wait uses up one of
the request's attempts.

Resting is proportionate: failures of requests that were already in flight when the replica last failed count
once (a burst of concurrent failures is one failure), a replica rests after `REST_AFTER` such failures in a row,
and while every replica rests one request at a time probes the one that wakes first, so the run never sits idle
while it still has work and has not given up. A replica down at start is left out with a warning and probed
again later; the run stops only when no replica answers. An error that will not pass (401, 403, 404, or a
replica that stays down) stops the run with one line naming the endpoint.

Every answer is bounded: `timeout` is a deadline for the whole request (a server that drips its answer byte by
byte times out like one that says nothing), and an answer longer than `answer_limit(max_new_tokens)` bytes is
abandoned as it arrives; both are failed tries, retried, and never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import get_async_session

from popalign.backends.base import THINKS_FIRST
from popalign.backends.pace import Pace
from popalign.backends.server_kinds import (
    LABELS,
    OWNED_BY,
    SAMPLING,
    SETTINGS,
    SGLANG,
    field_name,
    kind_of,
    sampling_fields,
    served_identity,
)
from popalign.config import Endpoints
from popalign.conversations import from_chat
from popalign.credentials import authorization
from popalign.errors import BackendError, ConfigError, PromptTooLong, RequestFailed, first_line
from popalign.generation import LENGTH, STOP, Generation, GenerationParams, OnDone, OnRetry, Request
from popalign.model_identity import ModelIdentity
from popalign.roles import EndpointSpec

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
#: The statuses that say the server is overloaded: an adaptive pace halves its window on them.
THROTTLED_STATUS = {429, 503}
FATAL_STATUS = {401: "unauthorized", 403: "forbidden", 404: "no chat completions route here"}
REST_AFTER = 3
MAX_REST = 30.0
PROBE_EVERY = 1.0
START_ATTEMPTS = 3
#: The most bytes an answer may take per token it may hold (JSON escapes included), and for its envelope.
BYTES_PER_TOKEN = 64
ENVELOPE_BYTES = 64 * 1024
#: How many of the likeliest first tokens `choice_logprobs` asks for (TGI allows 5 unless told otherwise).
TOP_LOGPROBS = 5
#: Where servers put a reasoning trace apart from the answer: SGLang, llama.cpp's server and DeepSeek's API use
#: `reasoning_content`; vLLM (since late 2025) and OpenRouter `reasoning`.
REASONING_FIELDS = ("reasoning_content", "reasoning")
#: How a first answer token that opens a reasoning trace begins: a think tag, or a gpt-oss channel header.
THOUGHT_OPENERS = ("<think", "<|channel|>", "<|start|>", "<seed:think")
#: Sampling fields at the value that changes nothing, which a server that refuses them (OpenAI's reasoning models
#: refuse `top_p`, and a temperature other than 1) is asked again without: the same request in its terms.
NEUTRAL = {"top_p": 1.0, "temperature": 1.0}
#: Refusals of the same kind (a 4xx other than 408 and 429) with no answer yet from the endpoint that stop the run:
#: the server refuses what every request carries (a setting, a parameter's name), which no retry mends.
REFUSED_AT_START = 3
_DEFAULT = Endpoints()
_T = TypeVar("_T")


def answer_limit(max_new_tokens: int) -> int:
    """The most bytes a chat completion with at most `max_new_tokens` tokens may take: a generous bound (a token
    is a few characters; escaped as JSON, rarely more than 24 bytes).

    >>> answer_limit(384)
    90112
    """
    return ENVELOPE_BYTES + BYTES_PER_TOKEN * max_new_tokens


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` tries per request; the wait before try n+1 is uniform in [0, min(cap, base * 2**n)],
    and never shorter than the server's `Retry-After`, which is capped at `max_wait` seconds."""

    attempts: int = _DEFAULT.retries
    base: float = 1.0
    cap: float = 60.0
    max_wait: float = _DEFAULT.max_retry_wait

    @property
    def patience(self) -> float:
        """How long every replica may keep failing before the run gives up: longer than the backoff of all of one
        request's attempts, so a request that keeps failing gives up first and says why."""
        return sum(min(self.cap, self.base * 2**attempt) for attempt in range(self.attempts))

    def delay(self, attempt: int, retry_after: float | None, spent: float = 0.0) -> float:
        """Seconds to wait after failed try number `attempt` (0-based), which took `spent` seconds: the backoff
        counts from the try's start (a try that timed out has waited already), `Retry-After` from now."""
        backoff = random.uniform(0, min(self.cap, self.base * 2**attempt)) - spent
        return max(backoff, min(retry_after or 0.0, self.max_wait), 0.0)


@dataclass
class Failure:
    reason: str
    retry_after: float | None = None
    fatal: bool = False
    refused: bool = False  # this request only: the pair is dropped, the run goes on
    too_long: bool = False  # refused as longer than the model's context: the pair is dropped as `too-long`
    throttled: bool = False  # the server is overloaded (429, 503): an adaptive pace asks less of it


@dataclass
class _Replica:
    url: str
    http: httpx2.AsyncClient
    headers: dict[str, str]
    slots: asyncio.Semaphore
    busy: int = 0
    failures: int = 0  # counted failures in a row (a burst of concurrent ones counts once)
    failed_at: float = -1.0  # when the last counted failure happened
    failing_since: float = 0.0  # when the present run of failures began
    last: str = ""  # what the last failure was
    resting_until: float = 0.0
    probing: bool = False  # a request is testing whether this resting replica answers again
    next_probe: float = 0.0
    verified: bool = True  # false for a replica down at start: its served model is asked before its first use
    token_field: str = "max_tokens"  # or max_completion_tokens, once the server asked for it
    #: fields it refused: left out from then on (a `NEUTRAL` one only at its neutral value; without
    #: `response_format`, shaped answers are parsed as free text)
    left_out: set[str] = field(default_factory=set)
    excluded: str = ""  # why this replica is never used (it serves another model)


@dataclass
class _Listing:
    """What a replica says it serves: its `/v1/models` entries by id, TGI's `/info` and SGLang's
    `/get_model_info` where asked."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] | None = None
    model_info: dict[str, Any] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def identify(self, name: str) -> tuple[str, ModelIdentity]:
        """The server's kind and what it says of the weights of the model it serves as `name`."""
        kind = kind_of(self.entries.get(name, {}), self.info)
        return kind, served_identity(kind, name, self.entries.get(name, {}), self.info, self.model_info)


def _shown(kind: str, identity: ModelIdentity) -> str:
    return f"{identity.name} ({identity.evidence}: {identity.weights})" if identity.weights else identity.name


@dataclass
class _Endpoint:
    spec: EndpointSpec
    model: str
    kind: str
    identity: ModelIdentity
    replicas: list[_Replica] = field(default_factory=list)
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))  # the answering replicas' slots
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    ever_answered: bool = False
    refusals: Counter[str] = field(default_factory=Counter)  # by reason, while nothing was answered yet
    #: The `system_fingerprint`s its answers carried (OpenAI's backend configuration; llama.cpp's server build)
    fingerprints: set[str] = field(default_factory=set)
    pace: Pace | None = None  # the per-minute budgets and the adaptive window, where any is asked for

    def wake(self) -> None:
        """Tell requests waiting for a replica that one may be free now."""
        self.changed.set()
        self.changed = asyncio.Event()


class EndpointBackend:
    """Answers requests on endpoints, with bounded concurrency per replica, retries and resting replicas.

    >>> backend = EndpointBackend(Endpoints(concurrency=64))
    >>> await backend.identity(EndpointSpec.parse("http://localhost:8080"))  # doctest: +SKIP
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    """

    name = "endpoint"
    #: Servers differ on continuing an assistant turn (OpenAI's API never does): chats end in a user turn.
    prefills = False

    def __init__(
        self,
        settings: Endpoints | None = None,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = settings or Endpoints()
        #: What the resting rules read the time from (a test gives its own).
        self.clock = clock
        self.token = settings.token
        self.concurrency = settings.concurrency
        self.rpm, self.tpm, self.adaptive = settings.rpm, settings.tpm, settings.adaptive_concurrency
        self.timeout = settings.timeout
        self.retry = retry or RetryPolicy(attempts=settings.retries, max_wait=settings.max_retry_wait)
        self._endpoints: dict[EndpointSpec, _Endpoint] = {}

    def _headers(self, spec: EndpointSpec, url: str) -> dict[str, str]:
        """The `Authorization` header for one replica, if it has one (see `credentials.authorization`): never the
        Hugging Face token for a host that is not Hugging Face's."""
        credential = spec.credentials[spec.urls.index(url)] if spec.credentials else None
        header = authorization(url, url_credential=credential, token=self.token, api_key_env=spec.api_key_env)
        return {"Authorization": header} if header else {}

    async def identity(self, spec: EndpointSpec) -> ModelIdentity:
        """The served model: the one the spec names (`URL#MODEL`), which every replica that lists models must list,
        or else the only one the replicas list, identified by what its server says of its weights
        (`server_kinds.served_identity`); replicas serving different models or weights are refused. A replica that
        does not answer is left out with a warning and tried again later; none answering is an error."""
        if spec not in self._endpoints:
            listed, down = await self._served_models(spec, attempts=1)
            if not listed:  # none answers yet: ask again, a few times, before giving up
                listed, down = await self._served_models(spec, attempts=START_ATTEMPTS)
            if not listed:
                raise next(iter(down.values()))
            served = {url: found.identify(choose_model(url, spec.model, found.names)) for url, found in listed.items()}
            if len({(kind, identity.key) for kind, identity in served.values()}) > 1:
                shown = ", ".join(f"{url} serves {_shown(*found)}" for url, found in served.items())
                raise BackendError(f"endpoint replicas serve different models: {shown}")
            kind, identity = next(iter(served.values()))
            endpoint = _Endpoint(spec, identity.served, kind, identity)
            if self.adaptive or self.rpm or self.tpm:
                limit = self.concurrency * len(spec.urls)
                endpoint.pace = Pace(limit, adaptive=self.adaptive, rpm=self.rpm, tpm=self.tpm, clock=self.clock)
            for url in spec.urls:
                http = get_async_session()  # huggingface_hub's client, so HF_HUB_OFFLINE and its proxies apply
                slots = asyncio.Semaphore(self.concurrency)
                replica = _Replica(url, http, self._headers(spec, url), slots, verified=url not in down)
                if url in down:
                    print(f"popalign: warning: {down[url]}; going on with the other replicas", file=sys.stderr)
                    replica.resting_until = self.clock() + PROBE_EVERY
                else:
                    self._add_slots(endpoint)
                endpoint.replicas.append(replica)
            self._endpoints[spec] = endpoint
        return self._endpoints[spec].identity

    def sent(self, spec: EndpointSpec, params: GenerationParams) -> dict[str, Any]:
        """How `params` reach the endpoint's sampler: its server kind, and the request fields they are sent as
        (`server_kinds.sampling_fields`); a setting its kind cannot honour is a `ConfigError`, before any
        request."""
        endpoint = self._endpoints[spec]
        fields, refused = sampling_fields(endpoint.kind, params)
        if refused:
            raise ConfigError(
                f"endpoint model {endpoint.identity.name} on {LABELS[endpoint.kind]}: cannot honour "
                f"{', '.join(refused)}; leave {'them' if len(refused) > 1 else 'it'} at off for this role"
            )
        honoured = "unknown (sent as named)" if endpoint.kind not in SAMPLING else "as sent"
        return {"server": LABELS[endpoint.kind], "fields": fields, "honoured": honoured}

    async def _served_models(
        self, spec: EndpointSpec, attempts: int
    ) -> tuple[dict[str, _Listing], dict[str, BackendError]]:
        """What every replica lists, asked at once; and why each replica that did not answer did not."""
        asked = await asyncio.gather(
            *(self._served_model(url, spec, attempts) for url in spec.urls), return_exceptions=True
        )
        listings, down = {}, {}
        for url, answer in zip(spec.urls, asked, strict=True):
            if isinstance(answer, _Unavailable):
                down[url] = answer
            elif isinstance(answer, BaseException):
                raise answer
            else:
                listings[url] = answer
        return listings, down

    async def _served_model(self, url: str, spec: EndpointSpec, attempts: int = 1) -> _Listing:
        """What a replica serves (`_Listing`); an answer that may pass (429, 5xx, unreachable) is asked again, up to
        `attempts` times."""
        for attempt in range(attempts):
            try:
                return await self._ask_served_model(url, spec)
            except _Unavailable:
                if attempt + 1 == attempts:
                    raise
                await asyncio.sleep(self.retry.delay(attempt, None))
        raise AssertionError("unreachable")

    async def _ask_served_model(self, url: str, spec: EndpointSpec) -> _Listing:
        """The models `/v1/models` lists, and what tells the server's kind and weights: TGI's `/info` (asked where
        `owned_by` names no kind), SGLang's `/get_model_info`."""
        headers, listing = self._headers(spec, url), _Listing()
        base = url.rstrip("/").removesuffix("/v1")
        try:
            async with get_async_session() as session:

                async def get(route: str, address: str) -> Any:
                    response = await session.get(address, headers=headers, timeout=30)
                    status = response.status_code
                    if status in FATAL_STATUS and status != 404:
                        raise BackendError(f"endpoint {url}: {FATAL_STATUS[status]} (HTTP {status})")
                    if status in RETRYABLE_STATUS:
                        raise _Unavailable(f"endpoint {url}: {route} answered HTTP {status}")
                    return response.json() if status == 200 else None

                body = await get("/v1/models", openai_url(url, "models"))
                entries = (body or {}).get("data") or []
                listing.entries = {str(entry["id"]): entry for entry in entries if entry.get("id")}
                if not any(str(entry.get("owned_by")) in OWNED_BY for entry in listing.entries.values()):
                    listing.info = await get("/info", base + "/info")
                    if not listing.entries and (listing.info or {}).get("model_id"):
                        listing.entries = {str(listing.info["model_id"]): {}}
                if any(kind_of(entry, None) == SGLANG for entry in listing.entries.values()):
                    listing.model_info = await get("/get_model_info", base + "/get_model_info")
        except OfflineModeIsEnabled as err:
            raise BackendError(
                f"endpoint {url}: HF_HUB_OFFLINE=1 blocks huggingface_hub's HTTP client, which endpoints are called "
                "through; unset it for this run"
            ) from err
        except httpx2.HTTPError as err:
            raise _Unavailable(f"endpoint {url}: unreachable ({type(err).__name__}: {err})") from err
        except (ValueError, AttributeError, IndexError, TypeError, KeyError) as err:
            raise BackendError(f"endpoint {url}: unreadable answer to /v1/models ({err})") from err
        return listing

    def slots(self, specs: Sequence[EndpointSpec]) -> int:
        """Requests in flight at once: `concurrency` per replica of every endpoint."""
        return self.concurrency * sum(len(spec.urls) for spec in specs)

    def system_fingerprints(self, spec: EndpointSpec) -> list[str]:
        """The `system_fingerprint`s the endpoint's answers carried so far: what OpenAI says of the backend
        configuration that answered (known only once it answers, so it is recorded, not part of the cache key)."""
        endpoint = self._endpoints.get(spec)
        return sorted(endpoint.fingerprints) if endpoint else []

    async def aclose(self) -> None:
        """Close every replica's connections; the next run opens new ones."""
        for endpoint in self._endpoints.values():
            for replica in endpoint.replicas:
                await replica.http.aclose()
        self._endpoints.clear()

    def submit(
        self, spec: EndpointSpec, request: Request, params: GenerationParams, on_done: OnDone, on_retry: OnRetry
    ) -> asyncio.Task[Generation]:
        """Send `request` now (within the replica's slots); the task ends with its generation."""
        endpoint, seed = self._endpoints[spec], _request_seed(params.seed, request)

        def call(replica: _Replica) -> Awaitable[Generation]:
            return self._chat(replica, endpoint, request, params, seed)

        tokens = len(json.dumps(request.chat())) // 4 + params.max_new_tokens  # what the budget counts until answered
        return asyncio.ensure_future(self._answer(endpoint, call, on_done, on_retry, tokens))

    def choice_logprobs(
        self, spec: EndpointSpec, chats: Sequence[list[dict[str, str]]], choices: Sequence[str]
    ) -> list[dict[str, float] | None]:
        """For each chat, the log-prob of each choice that is among the first answer token's `TOP_LOGPROBS`
        likeliest (spaces aside; the likeliest spelling where several read alike); None where the server gave no
        log-probs; `{THINKS_FIRST: 0.0}` where the model's first token opens a reasoning trace."""
        requests = [Request("judge", from_chat(chat)) for chat in chats]
        found = []
        for top in self.first_token_logprobs(spec, requests, TOP_LOGPROBS):
            listed: dict[str, float] = {}
            for token, value in (top or {}).items():
                if token.strip() in choices:
                    listed[token.strip()] = max(value, listed.get(token.strip(), -math.inf))
            found.append(None if top is None else top if THINKS_FIRST in top else listed)
        return found

    def first_token_logprobs(
        self, spec: EndpointSpec, requests: Sequence[Request], top: int
    ) -> list[dict[str, float] | None]:
        """For each request, the log-probs the server gives its first answer token's `top` likeliest
        tokens (`logprobs` and `top_logprobs` on chat completions, greedy, one token), by token text; None where
        the answer carries no log-probs (a server that does not give them) or the server refused the request."""

        async def ask() -> list[dict[str, float] | None]:
            await self.identity(spec)
            endpoint = self._endpoints[spec]

            async def one(request: Request) -> dict[str, float] | None:
                def call(replica: _Replica) -> Awaitable[dict[str, float] | None]:
                    return self._top_logprobs(replica, endpoint.model, request, top)

                try:
                    return await self._answer(endpoint, call, lambda _: None, lambda reason, wait: None)
                except RequestFailed:
                    return None

            try:
                return list(await asyncio.gather(*(one(request) for request in requests)))
            finally:
                await self.aclose()

        return asyncio.run(ask())

    def flush(self) -> None:
        """Nothing is queued: endpoints batch on the server side."""

    async def _answer(
        self,
        endpoint: _Endpoint,
        call: Callable[[_Replica], Awaitable[_T]],
        on_done: Callable[[_T], None],
        on_retry: OnRetry,
        tokens: int = 1,
    ) -> _T:
        """`call` on a replica until it answers: the retry, resting and probing rules of the module's doc, within
        the endpoint's pace where one is asked for (`tokens`: what the request is reckoned to use)."""
        failure = Failure("no attempt made")
        pace = endpoint.pace
        for attempt in range(self.retry.attempts):
            await endpoint.slots.acquire()  # a slot on some answering replica; which one is picked then
            let_go: float | None = None  # when the pace let the request go
            try:
                if pace:
                    let_go = await pace.take(tokens)
                replica, probe = await self._pick(endpoint)
                sent_at = self.clock()
                async with replica.slots:
                    replica.busy += 1
                    try:
                        if not replica.verified:
                            await self._verify(endpoint, replica)
                        answer = await asyncio.wait_for(call(replica), timeout=self.timeout)
                    except TimeoutError:
                        failure = Failure(f"no whole answer within {self.timeout:g} s (--timeout)")
                    except _Unavailable as err:
                        failure = Failure(str(err).removeprefix(f"endpoint {replica.url}: "))
                    except Exception as err:  # classified below; anything unknown is re-raised
                        failure = classify(err)
                    else:
                        self._answered(endpoint, replica, probe)
                        endpoint.ever_answered = True
                        if pace:
                            pace.answered(let_go)
                            if isinstance(answer, Generation):
                                pace.settle(tokens, answer.prompt_tokens + answer.tokens)
                            let_go = None
                        on_done(answer)
                        return answer
                    finally:
                        replica.busy -= 1
            finally:
                endpoint.slots.release()
                if pace and let_go is not None:  # not answered: its place is freed; an overload halves the window
                    pace.throttled() if failure.throttled else pace.failed()
            if failure.fatal:
                raise BackendError(f"endpoint {replica.url}: {failure.reason}")
            if failure.refused:
                self._answered(endpoint, replica, probe)
                self._refused_at_start(endpoint, replica, failure)
                refused = PromptTooLong if failure.too_long else RequestFailed
                raise refused(f"endpoint {replica.url}: {failure.reason}")
            self._failed(endpoint, replica, failure, sent_at, probe)
            if attempt + 1 < self.retry.attempts:
                wait = self.retry.delay(attempt, failure.retry_after, self.clock() - sent_at)
                on_retry(f"{replica.url}: {failure.reason}{_asked(failure.retry_after, self.retry.max_wait)}", wait)
                await self._back_off(endpoint, wait, min(failure.retry_after or 0.0, self.retry.max_wait))
        raise BackendError(
            f"endpoint {replica.url}: still failing after {self.retry.attempts} attempts "
            f"({failure.reason}{_asked(failure.retry_after, self.retry.max_wait)}); "
            "finished answers are cached: rerun to resume"
        )

    async def _chat(
        self, replica: _Replica, endpoint: _Endpoint, request: Request, params: GenerationParams, seed: int
    ) -> Generation:
        """One chat completion, read no further than `answer_limit` bytes: the answer, and apart from it the
        reasoning trace where the server gives one in a field of its own (`reasoning_content` or `reasoning`). The
        sampling settings go in the fields the server's kind reads (`server_kinds.sampling_fields`)."""
        fields, _ = sampling_fields(endpoint.kind, params)  # what it cannot honour was refused before any request
        body = json.loads(params.extra_body or "{}")
        optional = {name: setting for setting in SETTINGS if (name := field_name(endpoint.kind, setting))}
        optional = {name: setting for name, setting in optional.items() if name not in NEUTRAL} | {"stop": "stop"}
        payload = {
            "model": endpoint.model,
            "messages": request.chat(),
            "max_tokens": params.max_new_tokens,
            "seed": seed,
            **fields,
            **({"stop": list(params.stop)} if params.stop else {}),
            **body,
        }
        if request.shape:
            payload["response_format"] = request.shape.response_format()
        output = await self._post_chat(
            replica, payload, answer_limit(params.max_new_tokens), optional | dict.fromkeys(body, "extra_body")
        )
        choice = output["choices"][0]
        if isinstance(output.get("system_fingerprint"), str):
            endpoint.fingerprints.add(output["system_fingerprint"])
        finish = LENGTH if choice.get("finish_reason") == LENGTH else STOP  # TGI also says eos_token
        usage = output.get("usage") or {}
        tokens, prompt_tokens = (int(usage.get(name) or 0) for name in ("completion_tokens", "prompt_tokens"))
        details = usage.get("completion_tokens_details") or {}  # OpenAI, vLLM; SGLang counts at the top level
        thought = int(details.get("reasoning_tokens") or usage.get("reasoning_tokens") or 0)
        message = choice["message"]
        trace = next((message[name] for name in REASONING_FIELDS if isinstance(message.get(name), str)), "")
        return Generation(message.get("content") or "", tokens, finish, prompt_tokens, trace, thought)

    async def _top_logprobs(self, replica: _Replica, model: str, request: Request, top: int) -> dict[str, float] | None:
        """One greedy token with `top_logprobs`; the log-prob of each listed token text (the largest, where two
        tokens read alike). A model whose first token opens a reasoning trace (`<think>`, a channel header) gives
        `{THINKS_FIRST: 0.0}`: its first token says nothing of its answer."""
        payload = {"model": model, "messages": request.chat(), "max_tokens": 1, "temperature": 0.0,
                   "logprobs": True, "top_logprobs": top}  # fmt: skip
        output = await self._post_chat(replica, payload, answer_limit(1) + 1024 * top)
        choice = output["choices"][0]
        content = ((choice.get("logprobs") or {}).get("content")) or []
        message = choice.get("message") or {}
        if any(message.get(name) for name in REASONING_FIELDS) or (
            content and content[0]["token"].lstrip().startswith(THOUGHT_OPENERS)
        ):
            return {THINKS_FIRST: 0.0}
        if not content:
            return None
        found: dict[str, float] = {}
        for entry in content[0].get("top_logprobs") or [content[0]]:
            found[entry["token"]] = max(float(entry["logprob"]), found.get(entry["token"], -math.inf))
        return found

    async def _post_chat(
        self, replica: _Replica, payload: dict[str, Any], limit: int, optional: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """POST a chat completion to a replica and read its JSON answer, no further than `limit` bytes, in the
        replica's own terms: a server that refuses `max_tokens` for `max_completion_tokens` (OpenAI's reasoning
        models) is asked again at once with that name, one that refuses a `NEUTRAL` field at its neutral value, or
        `response_format`, without it, and the replica keeps to each. Any other error status is `HTTPStatus`,
        except a 400 or 422 naming one of the `optional` fields the payload carries (mapped to the setting that sent
        it): the endpoint does not take it, which no retry mends, so the run stops with one line saying which."""
        url, headers = openai_url(replica.url, "chat/completions"), replica.headers
        asked = {
            replica.token_field if key == "max_tokens" else key: value
            for key, value in payload.items()
            if not (key in replica.left_out and value == NEUTRAL.get(key, value))
        }
        async with replica.http.stream("POST", url, json=asked, headers=headers, timeout=self.timeout) as sent:
            body = await read_capped(sent, limit)
        if sent.status_code >= 400:
            text = body.decode("utf-8", "replace")
            message, param = server_message(text)
            if sent.status_code == 400 and "max_tokens" in asked and wants_completion_tokens(message, param):
                replica.token_field = "max_completion_tokens"
                return await self._post_chat(replica, payload, limit, optional)
            if sent.status_code == 400 and param in NEUTRAL and asked.get(param) == NEUTRAL[param]:
                replica.left_out.add(param)  # refused at its neutral value: leaving it out asks for the same
                return await self._post_chat(replica, payload, limit, optional)
            if sent.status_code in (400, 422) and "response_format" in asked and refuses_shape(message, param):
                replica.left_out.add("response_format")  # then parsed from free text, as before shapes, and counted
                return await self._post_chat(replica, payload, limit, optional)
            refused = [name for name in optional or {} if name in text]
            if sent.status_code in (400, 422) and refused:
                flag = "--" + (optional or {})[refused[0]].replace("_", "-")
                raise BackendError(
                    f"endpoint {replica.url}: does not take {refused[0]} (HTTP {sent.status_code}: "
                    f"{first_line(message)[:160]}); leave {flag} out for this endpoint"
                )
            raise HTTPStatus(sent.status_code, sent.headers.get("Retry-After"), text)
        return json.loads(body)

    def _refused_at_start(self, endpoint: _Endpoint, replica: _Replica, failure: Failure) -> None:
        """Stop the run when the endpoint has answered nothing yet and refused `REFUSED_AT_START` requests for the
        same reason: it refuses what every request carries, and each more request would be refused too."""
        if endpoint.ever_answered:
            return
        endpoint.refusals[failure.reason] += 1
        if endpoint.refusals[failure.reason] >= REFUSED_AT_START:
            raise BackendError(
                f"endpoint {replica.url}: refused the first {REFUSED_AT_START} requests alike, answering none: "
                f"{failure.reason}; stopped before sending more (answers already given are cached)"
            )

    async def _back_off(self, endpoint: _Endpoint, wait: float, asked: float) -> None:
        """Wait `wait` seconds before the next try, or only `asked` (the server's `Retry-After`) if the endpoint
        answers another request meanwhile: then the failure was this request's alone, not the server's."""
        answered = endpoint.answered
        await asyncio.sleep(asked)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), timeout=max(0.0, wait - asked))

    async def _verify(self, endpoint: _Endpoint, replica: _Replica) -> None:
        """Before its first request, ask a replica that was down at start which models (and weights) it serves."""
        listing = await self._served_model(replica.url, endpoint.spec)
        listed = listing.names
        if listed and endpoint.model not in listed:
            replica.excluded = f"serves {', '.join(listed[:3])}, not {endpoint.model}"
        elif listed and listing.identify(endpoint.model) != (endpoint.kind, endpoint.identity):
            found, wanted = _shown(*listing.identify(endpoint.model)), _shown(endpoint.kind, endpoint.identity)
            replica.excluded = f"serves {found}, not {wanted}"
        if replica.excluded:
            print(f"popalign: warning: endpoint {replica.url} {replica.excluded}; leaving it out", file=sys.stderr)
            raise _Unavailable(f"endpoint {replica.url}: {replica.excluded}")
        replica.verified = True
        self._add_slots(endpoint)

    def _add_slots(self, endpoint: _Endpoint) -> None:
        """A replica answers: requests may now hold `concurrency` more slots on the endpoint."""
        for _ in range(self.concurrency):
            endpoint.slots.release()

    async def _pick(self, endpoint: _Endpoint) -> tuple[_Replica, bool]:
        """The least busy replica not resting, and whether the request is a probe. When every replica rests,
        one request at a time (at most one per `PROBE_EVERY` seconds) probes the replica that wakes first; the
        others wait until a replica answers or wakes."""
        while True:
            now = self.clock()
            usable = [replica for replica in endpoint.replicas if not replica.excluded]
            if not usable:
                reasons = "; ".join(f"{replica.url} {replica.excluded}" for replica in endpoint.replicas)
                raise BackendError(f"endpoint: no replica serves {endpoint.model} ({reasons})")
            if all(replica.failures and now - replica.failing_since > self.retry.patience for replica in usable):
                worst = max(usable, key=lambda replica: replica.failures)
                raise BackendError(
                    f"endpoint {worst.url}: no replica has answered for {now - worst.failing_since:.0f} s "
                    f"({worst.last}); finished answers are cached: rerun to resume"
                )
            awake = [replica for replica in usable if replica.verified and replica.resting_until <= now]
            ready = [replica for replica in usable if not replica.probing and replica.next_probe <= now]
            if awake:  # only a replica down at start, once its rest is over, is probed beside them
                ready = [replica for replica in ready if not replica.verified and replica.resting_until <= now]
            if ready:
                replica = min(ready, key=lambda replica: replica.resting_until)
                replica.probing, replica.next_probe = True, now + PROBE_EVERY
                return replica, True
            if awake:
                free = [replica for replica in awake if not replica.slots.locked()] or awake
                return min(free, key=lambda replica: replica.busy), False
            # until a probe ends (`changed`) or the next rest or probe interval is over
            later = [moment for r in usable for moment in (r.resting_until, r.next_probe) if moment > now]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(endpoint.changed.wait(), timeout=min(later, default=now + PROBE_EVERY) - now)

    def _answered(self, endpoint: _Endpoint, replica: _Replica, probe: bool) -> None:
        """The replica answered: it is well, and requests waiting for one, or backing off, may go."""
        endpoint.answered.set()
        endpoint.answered = asyncio.Event()
        if replica.failures or replica.resting_until or probe:
            replica.failures, replica.resting_until, replica.probing = 0, 0.0, False
            endpoint.wake()

    def _failed(self, endpoint: _Endpoint, replica: _Replica, failure: Failure, sent_at: float, probe: bool) -> None:
        """Count a failure, unless the request was sent before the replica's last counted failure (a burst of
        concurrent failures counts once); rest the replica when it asks (`Retry-After`, capped) or after
        `REST_AFTER` failures in a row with no answer for `base` seconds, for at most `MAX_REST` seconds."""
        now = self.clock()
        if probe:
            replica.probing = False
            endpoint.wake()
        replica.last = failure.reason
        if sent_at > replica.failed_at:
            if not replica.failures:
                replica.failing_since = now
            replica.failures += 1
            replica.failed_at = now
        rest = min(failure.retry_after or 0.0, self.retry.max_wait)
        if replica.failures >= REST_AFTER and now - replica.failing_since >= self.retry.base:
            rest = max(rest, min(MAX_REST, self.retry.base * 2 ** (replica.failures - REST_AFTER)))
        replica.resting_until = max(replica.resting_until, now + rest)


def choose_model(url: str, named: str | None, listed: tuple[str, ...]) -> str:
    """The model to ask `url` for: the one `named` (which the server must list, where it lists any), or the only
    one it lists.

    >>> choose_model("http://h:1", None, ("a", "b"))
    Traceback (most recent call last):
    popalign.errors.BackendError: endpoint http://h:1: serves several models (a, b); name one: http://h:1#MODEL
    """
    shown = ", ".join(listed[:8]) + (f", and {len(listed) - 8} more" if len(listed) > 8 else "")
    if named:
        if listed and named not in listed:
            raise BackendError(f"endpoint {url}: serves no model {named!r} (it lists {shown})")
        return named
    if not listed:
        raise BackendError(f"endpoint {url}: neither /v1/models nor /info names the served model; write {url}#MODEL")
    if len(listed) > 1:
        raise BackendError(f"endpoint {url}: serves several models ({shown}); name one: {url}#MODEL")
    return listed[0]


def server_message(text: str) -> tuple[str, str | None]:
    """The message of an error body and the request field it names, as servers write them: OpenAI's and vLLM's
    `{"error": {"message", "param"}}`, TGI's `{"error": "..."}`, an older vLLM's `{"message": "..."}`; the
    body itself where it is not JSON.

    >>> server_message('{"error": {"message": "Unsupported parameter: \'max_tokens\'", "param": "max_tokens"}}')
    ("Unsupported parameter: 'max_tokens'", 'max_tokens')
    """
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip(), None
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, str):
        return error, None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return text.strip(), None
    param = error.get("param")
    return error["message"], param if isinstance(param, str) and param else None


def wants_completion_tokens(message: str, param: str | None) -> bool:
    """Whether a server's 400 refuses `max_tokens` for `max_completion_tokens` (OpenAI's reasoning models).

    >>> wants_completion_tokens("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
    ...                         "'max_completion_tokens' instead.", "max_tokens")
    True
    """
    return param == "max_tokens" or ("max_tokens" in message and "max_completion_tokens" in message)


def refuses_shape(message: str, param: str | None) -> bool:
    """Whether a server's 400 or 422 refuses the `response_format` a shaped request carries (TGI takes another form
    of it; some servers take none).

    >>> refuses_shape("Failed to deserialize the JSON body: response_format: missing field `value`", None)
    True
    """
    return (param or "").startswith("response_format") or any(
        word in message for word in ("response_format", "json_schema")
    )


def openai_url(url: str, route: str) -> str:
    """An OpenAI-style route (`chat/completions`, `models`) of an endpoint URL, as `huggingface_hub` builds the
    chat one: a URL that ends in the route is used as it is, one that ends in `/v1` gets the route, any other
    `/v1/` and the route.

    >>> openai_url("http://h:8080", "chat/completions"), openai_url("https://api.example.com/v1/", "models")
    ('http://h:8080/v1/chat/completions', 'https://api.example.com/v1/models')
    """
    base = url.rstrip("/")
    if base.endswith(f"/{route}"):
        return base
    return f"{base}/{route}" if base.endswith("/v1") else f"{base}/v1/{route}"


async def read_capped(response: httpx2.Response, limit: int, allowed_by: str = "its max_new_tokens") -> bytes:
    """A response's body, abandoned (`Oversized`) as soon as it passes `limit` bytes (what `allowed_by` allows)."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise Oversized(f"answer of {int(length):,} bytes, over the {limit:,} {allowed_by} allow")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise Oversized(f"answer over the {limit:,} bytes {allowed_by} allow")
        chunks.append(chunk)
    return b"".join(chunks)


class HTTPStatus(Exception):
    """An endpoint answered an HTTP error status."""

    def __init__(self, status: int, retry_after: str | None, text: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after, self.text = status, retry_after, text


class Oversized(Exception):
    """An answer longer than its `max_new_tokens` allow."""


#: How servers say a request does not fit the model's context (vLLM, SGLang, OpenAI: "maximum context length",
#: "context length"; vLLM: "maximum model length"; llama.cpp: "exceeds the available context size",
#: `exceed_context_size_error`; TGI: "`inputs` tokens + `max_new_tokens` must be <= N").
CONTEXT_EXCEEDED = re.compile(
    r"context length|context_length_exceeded|maximum model length|context size|exceed_context_size"
    r"|max_new_tokens`? must be <=",
    re.IGNORECASE,
)


def classify(err: Exception) -> Failure:
    """What a failed call means: retry (with the server's `Retry-After`), refuse this request, or stop."""
    if isinstance(err, HTTPStatus):
        status = err.status
        if status in FATAL_STATUS:
            return Failure(f"{FATAL_STATUS[status]} (HTTP {status})", fatal=True)
        if status in RETRYABLE_STATUS:
            return Failure(
                f"HTTP {status}", retry_after=_retry_after(err.retry_after), throttled=status in THROTTLED_STATUS
            )
        message, param = server_message(err.text)
        named = f"; the field it names: {param}" if param else ""
        reason = f"request refused (HTTP {status}: {first_line(message)[:200]}{named})"
        return Failure(reason, refused=True, too_long=bool(CONTEXT_EXCEEDED.search(err.text)))
    if isinstance(err, Oversized):
        return Failure(str(err))
    if isinstance(err, httpx2.TimeoutException):
        return Failure("timed out")
    if isinstance(err, httpx2.TransportError):
        return Failure(f"connection failed ({type(err).__name__}: {err})")
    if isinstance(err, ValueError | KeyError | TypeError | IndexError | AttributeError):
        return Failure(f"unreadable answer ({type(err).__name__}: {err})")
    raise err


def _asked(retry_after: float | None, max_wait: float) -> str:
    """How long the server asked to wait, when it asked for more than the cap allows."""
    if retry_after is None or retry_after <= max_wait:
        return ""
    return f"; Retry-After {retry_after:.0f} s, waited at most {max_wait:.0f} s (--max-retry-wait)"


class _Unavailable(BackendError):
    """A replica that did not answer at all (unreachable, 429, 5xx), which may pass."""


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds, from either of its forms (seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _request_seed(seed: int, request: Request) -> int:
    """A sampling seed fixed by the run's seed and the request, so a rerun asks for the same draw."""
    digest = hashlib.sha256(repr((seed, request.messages, request.sample)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big")
