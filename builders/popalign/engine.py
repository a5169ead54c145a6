"""Drive every strategy run on its own: each advances as soon as its requests are answered. Identical requests
are made once, answers come from the cache when they can, and every generated answer is committed as it arrives.

Local models batch the requests waiting when every run is blocked; endpoints get each request at once, bounded
by their backend's concurrency (see `endpoint_backend`)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from popalign.cache import GenerationCache
from popalign.errors import RequestFailed
from popalign.generation import Generation, GenerationParams, OnDone, OnRetry, Request, request_key
from popalign.models import EndpointSpec, ModelSpec
from popalign.strategies import Dropped, StrategyRun

if TYPE_CHECKING:
    from popalign.endpoint_backend import EndpointBackend
    from popalign.local_backend import LocalBackend


class Backend(Protocol):
    """What the engine needs of a backend: a name for cache keys, model identities, and asynchronous answers."""

    name: str

    async def identity(self, spec: Any) -> str: ...

    def submit(
        self, spec: Any, request: Request, params: GenerationParams, on_done: OnDone, on_retry: OnRetry
    ) -> Awaitable[Generation]:
        """Start answering `request`; call `on_done` with the generation as soon as it exists, `on_retry` on
        each retry."""
        ...

    def flush(self) -> None:
        """Answer what is queued (local batching); endpoints answer on submit and do nothing here."""
        ...


@dataclass
class RequestCounts:
    """Requests of one strategy: asked for, answered from the cache, shared with an identical request in this run,
    generated, retried, and failed for good (the pair is then dropped as `failed`)."""

    requests: int = 0
    cached: int = 0
    shared: int = 0
    generated: int = 0
    retried: int = 0
    failed: int = 0


@dataclass
class EngineStats:
    """Counts over one run, overall and per strategy."""

    requested: int = 0
    distinct: int = 0
    cached: int = 0
    generated: int = 0
    tokens: int = 0
    retried: int = 0
    by_strategy: dict[str, RequestCounts] = field(default_factory=lambda: defaultdict(RequestCounts))


class Engine:
    """Answers the requests of many strategy runs with the roles' backends and an optional cache.

    >>> engine = Engine(roles, GenerationParams(), local=LocalBackend(), cache=None)  # doctest: +SKIP
    >>> results = engine.run([("prefix", STRATEGIES["prefix"].run(instruction, ctx))])  # doctest: +SKIP
    """

    def __init__(
        self,
        roles: dict[str, ModelSpec | EndpointSpec],
        params: GenerationParams,
        *,
        local: LocalBackend | None = None,
        endpoint: EndpointBackend | None = None,
        role_params: dict[str, GenerationParams] | None = None,
        cache: GenerationCache | None = None,
        progress: bool = True,
    ) -> None:
        self.roles = roles
        self.default_params = params
        self.params = {role: (role_params or {}).get(role, params) for role in roles}
        self.local = local
        self.endpoint = endpoint
        self.cache = cache
        self.progress = progress
        self.stats = EngineStats()
        self.identities: dict[str, str] = {}
        self._answers: dict[str, asyncio.Future[Generation]] = {}
        self._live = 0
        self._waiting = 0
        self._bar: tqdm | None = None

    def run(
        self,
        runs: Sequence[tuple[str, StrategyRun]],
        expected: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> list[Any]:
        """Drive every `(label, run)` to completion and return their results in order; `expected` is the number
        of requests the progress bar counts to, and `check` runs once the roles' identities are known, before
        any request."""
        return asyncio.run(self._run(runs, expected, check))

    async def _run(
        self, runs: Sequence[tuple[str, StrategyRun]], expected: int | None, check: Callable[[], None] | None
    ) -> list[Any]:
        for role, spec in self.roles.items():
            self.identities[role] = await self._backend(spec).identity(spec)
        if check:
            check()
        self._live = len(runs)
        if self.local:
            self.local.on_load = self._loading
        try:
            with tqdm(
                total=expected, desc="generating", unit="req", disable=not self.progress, dynamic_ncols=True
            ) as self._bar:
                drivers = [asyncio.ensure_future(self._drive(label, run)) for label, run in runs]
                try:
                    results = await asyncio.gather(*drivers)
                except BaseException:
                    pending = [*drivers, *self._answers.values()]
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    raise
        finally:
            if self.endpoint:
                await self.endpoint.aclose()
        return list(results)

    async def _drive(self, label: str, run: StrategyRun) -> Any:
        answers: list[Generation] | None = None
        try:
            while True:
                try:
                    requests = run.send(answers)  # type: ignore[arg-type]  # send(None) starts the generator
                except StopIteration as stop:
                    return stop.value
                waits = [self._submit(label, request) for request in requests]
                self._waiting += 1
                self._flush_if_idle()
                try:
                    answers = list(await asyncio.gather(*waits))
                except RequestFailed:
                    self.stats.by_strategy[label].failed += 1
                    run.close()
                    return Dropped("failed")
                finally:
                    self._waiting -= 1
        finally:
            self._live -= 1
            self._flush_if_idle()

    def _flush_if_idle(self) -> None:
        """Once every unfinished run waits for answers, let the local backend generate its queued batch."""
        if self.local and self._waiting == self._live:
            self.local.flush()

    def _submit(self, label: str, request: Request) -> asyncio.Future[Generation]:
        counts = self.stats.by_strategy[label]
        counts.requests += 1
        self.stats.requested += 1
        spec, params = self.roles[request.role], self.params[request.role]
        backend = self._backend(spec)
        key = request_key(backend.name, self.identities[request.role], request, params)
        if key in self._answers:
            counts.shared += 1
            self._tick()
            return self._answers[key]
        self.stats.distinct += 1
        cached = self.cache.get_generation(key) if self.cache else None
        if cached is not None:
            counts.cached += 1
            self.stats.cached += 1
            answer: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
            answer.set_result(cached)
            self._tick()
        else:

            def done(generation: Generation) -> None:
                if self.cache:
                    self.cache.put_generation(key, generation)
                counts.generated += 1
                self.stats.generated += 1
                self.stats.tokens += generation.tokens
                self._tick()

            def retry(reason: str, wait: float) -> None:
                counts.retried += 1
                self.stats.retried += 1
                if self._bar is not None:
                    self._bar.set_postfix_str(f"retry {self.stats.retried}: {reason}; next try in {wait:.0f} s")

            answer = asyncio.ensure_future(backend.submit(spec, request, params, done, retry))
        self._answers[key] = answer
        return answer

    def backend_name(self, role: str) -> str:
        """`local` or `endpoint`: the backend of a role."""
        return "endpoint" if isinstance(self.roles[role], EndpointSpec) else "local"

    def _backend(self, spec: ModelSpec | EndpointSpec) -> Backend:
        kind = "endpoint" if isinstance(spec, EndpointSpec) else "local"
        backend = self.endpoint if kind == "endpoint" else self.local
        if backend is None:
            raise RuntimeError(f"no {kind} backend given for {spec}")
        return backend

    def _loading(self, spec: ModelSpec, seconds: float | None) -> None:
        """Show a local model's load on the progress line, and keep its time out of the rate and the ETA."""
        if self._bar is None:
            return
        if seconds is None:
            self._bar.set_postfix_str(f"loading model {spec} …")
        else:
            self._bar.set_postfix_str(f"loaded model {spec} in {seconds:.0f} s")
            self._bar.unpause()

    def _tick(self) -> None:
        if self._bar is not None:
            self._bar.update(1)
