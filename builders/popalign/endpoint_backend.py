"""Generation on TGI or OpenAI-compatible endpoints through `huggingface_hub.AsyncInferenceClient.chat_completion`.

Each replica URL has its own semaphore of `concurrency` slots, so requests go out as soon as a slot frees (never
batch-and-wait). A request goes to the least busy replica that is not resting; failures that may pass (429, 5xx,
time-outs, resets, unreadable answers) are retried with exponential backoff and full jitter, at least as long as
the server's `Retry-After` asks; a replica failing `REST_AFTER` times in a row rests for a while. An error that
will not pass (401, 403, 404, or a replica that stays down) stops the run with one line naming the endpoint.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import random
import time
from dataclasses import dataclass, field

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OfflineModeIsEnabled
from huggingface_hub.utils import get_async_session

from popalign.credentials import authorization
from popalign.errors import BackendError, RequestFailed
from popalign.generation import LENGTH, STOP, Generation, GenerationParams, OnDone, OnRetry, Request
from popalign.models import EndpointSpec

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
FATAL_STATUS = {401: "unauthorized", 403: "forbidden", 404: "no chat completions route here"}
REST_AFTER = 3
MAX_REST = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` tries per request; the wait before try n+1 is uniform in [0, min(cap, base * 2**n)],
    and never shorter than the server's `Retry-After`."""

    attempts: int = 6
    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed try number `attempt` (0-based)."""
        backoff = random.uniform(0, min(self.cap, self.base * 2**attempt))
        return max(backoff, retry_after or 0.0)


@dataclass
class _Failure:
    reason: str
    retry_after: float | None = None
    fatal: bool = False
    refused: bool = False  # this request only: the pair is dropped, the run goes on


@dataclass
class _Replica:
    url: str
    client: AsyncInferenceClient
    slots: asyncio.Semaphore
    busy: int = 0
    failures: int = 0
    resting_until: float = 0.0
    last: str = ""


@dataclass
class _Endpoint:
    spec: EndpointSpec
    model: str
    replicas: list[_Replica] = field(default_factory=list)


class EndpointBackend:
    """Answers requests on endpoints, with bounded concurrency per replica, retries and resting replicas.

    >>> backend = EndpointBackend(token=None, concurrency=64)
    >>> await backend.identity(EndpointSpec.parse("http://localhost:8080"))  # doctest: +SKIP
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    """

    name = "endpoint"

    def __init__(
        self,
        *,
        token: str | None = None,
        concurrency: int = 64,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.token = token
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._endpoints: dict[EndpointSpec, _Endpoint] = {}

    def _authorization(self, spec: EndpointSpec, url: str) -> str | None:
        """The `Authorization` header for one replica (see `credentials.authorization`): never the Hugging Face
        token for a host that is not Hugging Face's."""
        credential = spec.credentials[spec.urls.index(url)] if spec.credentials else None
        return authorization(url, url_credential=credential, token=self.token, api_key_env=spec.api_key_env)

    async def identity(self, spec: EndpointSpec) -> str:
        """The served model's name, asked of every replica; replicas serving different models are refused."""
        if spec not in self._endpoints:
            names = {url: await self._served_model(url, spec) for url in spec.urls}
            if len(set(names.values())) > 1:
                listing = ", ".join(f"{url} serves {name}" for url, name in names.items())
                raise BackendError(f"endpoint replicas serve different models: {listing}")
            model = spec.model or next(iter(names.values()))
            endpoint = _Endpoint(spec, model)
            for url in spec.urls:
                # set explicitly, even empty: left out, huggingface_hub would send the machine's Hub token
                headers = {"Authorization": self._authorization(spec, url) or ""}
                client = AsyncInferenceClient(base_url=url, headers=headers, timeout=self.timeout)
                endpoint.replicas.append(_Replica(url, client, asyncio.Semaphore(self.concurrency)))
            self._endpoints[spec] = endpoint
        return self._endpoints[spec].model

    async def _served_model(self, url: str, spec: EndpointSpec) -> str:
        """`/v1/models` (OpenAI-compatible servers, TGI) or `/info` (TGI) tells the served model."""
        header = self._authorization(spec, url)
        headers = {"Authorization": header} if header else {}
        try:
            async with get_async_session() as session:
                for route in ("/v1/models", "/info"):
                    response = await session.get(url + route, headers=headers, timeout=30)
                    status = response.status_code
                    if status in FATAL_STATUS and status != 404:
                        raise BackendError(f"endpoint {url}: {FATAL_STATUS[status]} (HTTP {status})")
                    if status != 200:
                        continue
                    body = response.json()
                    name = body.get("model_id") if route == "/info" else (body.get("data") or [{}])[0].get("id")
                    if name:
                        return spec.model or str(name)
        except OfflineModeIsEnabled as err:
            raise BackendError(
                f"endpoint {url}: HF_HUB_OFFLINE=1 blocks huggingface_hub's HTTP client, which endpoints are called "
                "through; unset it for this run"
            ) from err
        except httpx2.HTTPError as err:
            raise BackendError(f"endpoint {url}: unreachable ({type(err).__name__}: {err})") from err
        except (ValueError, AttributeError, IndexError) as err:
            raise BackendError(f"endpoint {url}: unreadable answer to /v1/models ({err})") from err
        if spec.model:
            return spec.model
        raise BackendError(f"endpoint {url}: neither /v1/models nor /info names the served model; give it a model")

    async def aclose(self) -> None:
        """Close every replica's connections; the next run opens new ones."""
        for endpoint in self._endpoints.values():
            for replica in endpoint.replicas:
                await replica.client.close()
        self._endpoints.clear()

    def submit(
        self, spec: EndpointSpec, request: Request, params: GenerationParams, on_done: OnDone, on_retry: OnRetry
    ) -> asyncio.Task[Generation]:
        """Send `request` now (within the replica's slots); the task ends with its generation."""
        return asyncio.ensure_future(self._answer(self._endpoints[spec], request, params, on_done, on_retry))

    def flush(self) -> None:
        """Nothing is queued: endpoints batch on the server side."""

    async def _answer(
        self, endpoint: _Endpoint, request: Request, params: GenerationParams, on_done: OnDone, on_retry: OnRetry
    ) -> Generation:
        seed = _request_seed(params.seed, request)
        failure = _Failure("no attempt made")
        for attempt in range(self.retry.attempts):
            replica = await self._pick(endpoint)
            async with replica.slots:
                replica.busy += 1
                try:
                    output = await replica.client.chat_completion(
                        request.chat(),
                        model=endpoint.model,
                        max_tokens=params.max_new_tokens,
                        temperature=params.temperature,
                        top_p=params.top_p,
                        seed=seed,
                    )
                    choice = output.choices[0]
                    finish = LENGTH if choice.finish_reason == LENGTH else STOP  # TGI also says eos_token
                    generation = Generation(choice.message.content or "", _tokens(output), finish)
                except Exception as err:  # classified below; anything unknown is re-raised
                    failure = _classify(err)
                else:
                    replica.failures = 0
                    on_done(generation)
                    return generation
                finally:
                    replica.busy -= 1
            if failure.fatal:
                raise BackendError(f"endpoint {replica.url}: {failure.reason}")
            if failure.refused:
                raise RequestFailed(f"endpoint {replica.url}: {failure.reason}")
            self._rest(replica, failure)
            if attempt + 1 < self.retry.attempts:
                on_retry()
                await asyncio.sleep(self.retry.delay(attempt, failure.retry_after))
        raise BackendError(
            f"endpoint {replica.url}: still failing after {self.retry.attempts} attempts ({failure.reason}); "
            "finished answers are cached: rerun to resume"
        )

    async def _pick(self, endpoint: _Endpoint) -> _Replica:
        """The least busy replica not resting; when all rest, wait for the first to wake."""
        while True:
            now = time.monotonic()
            awake = [replica for replica in endpoint.replicas if replica.resting_until <= now]
            if awake:
                return min(awake, key=lambda replica: replica.busy)
            await asyncio.sleep(min(replica.resting_until for replica in endpoint.replicas) - now)

    def _rest(self, replica: _Replica, failure: _Failure) -> None:
        """Rest a replica that asked for it (`Retry-After`) or failed `REST_AFTER` times in a row."""
        replica.failures += 1
        rest = failure.retry_after or 0.0
        if replica.failures >= REST_AFTER:
            rest = max(rest, min(MAX_REST, self.retry.base * 2 ** (replica.failures - REST_AFTER)))
        replica.resting_until = max(replica.resting_until, time.monotonic() + rest)


def _classify(err: Exception) -> _Failure:
    """What a failed call means: retry (with the server's `Retry-After`), refuse this request, or stop."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status in FATAL_STATUS:
            return _Failure(f"{FATAL_STATUS[status]} (HTTP {status})", fatal=True)
        if status in RETRYABLE_STATUS:
            return _Failure(f"HTTP {status}", retry_after=_retry_after(err.response.headers.get("Retry-After")))
        return _Failure(f"request refused (HTTP {status}: {err.response.text[:200]!r})", refused=True)
    if isinstance(err, InferenceTimeoutError | httpx2.TimeoutException):
        return _Failure("timed out")
    if isinstance(err, httpx2.TransportError):
        return _Failure(f"connection failed ({type(err).__name__}: {err})")
    if isinstance(err, ValueError | KeyError | TypeError | IndexError | AttributeError):
        return _Failure(f"unreadable answer ({type(err).__name__}: {err})")
    raise err


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


def _tokens(output: object) -> int:
    usage = getattr(output, "usage", None)
    return int(getattr(usage, "completion_tokens", 0) or 0)


def _request_seed(seed: int, request: Request) -> int:
    """A sampling seed fixed by the run's seed and the request, so a rerun asks for the same draw."""
    digest = hashlib.sha256(repr((seed, request.messages, request.sample)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big")
