"""Drive every strategy run on its own: each advances as soon as its requests are answered. Identical requests
are made once, answers come from the cache when they can, and every generated answer is committed as it arrives.

Runs enter through a bounded window (sized from the backends' concurrency) as earlier ones finish, and results
are handed over in order as they complete, so memory does not grow with the number of runs. Local models batch
the requests waiting when every run in the window is blocked; endpoints get each request at once, bounded by
their backend's concurrency (see `endpoint_backend`)."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from popalign.backends.base import Backend
from popalign.cache import GenerationCache
from popalign.contrasts import Dropped, StrategyRun
from popalign.costs import Budget, Price, Tokens
from popalign.errors import PromptTooLong, RequestFailed, StrategyError
from popalign.generation import Generation, GenerationParams, Request, request_key
from popalign.model_identity import ModelIdentity
from popalign.reasoning import separate
from popalign.roles import ModelSpec, Spec
from popalign.styles import THINK_TAGS

if TYPE_CHECKING:
    from popalign.backends.endpoint import EndpointBackend
    from popalign.backends.local import LocalBackend


@dataclass
class RequestCounts:
    """Requests of one strategy: asked for, answered from the cache, shared with an identical request in this run,
    generated, retried, and failed for good (the pair is then dropped as `failed`); `tokens` counts the answer
    tokens (thinking included) and `prompt_tokens` the prompt tokens of every request the strategy used, however it
    was answered (what its pairs cost to make), `reasoning_tokens` those of the answer tokens a server says were
    thinking, and `by_role` both by the role asked; `shaped` and `unshaped` count the answers asked in a shape that
    came in it, and that did not (read as free text)."""

    requests: int = 0
    cached: int = 0
    shared: int = 0
    generated: int = 0
    retried: int = 0
    failed: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    by_role: dict[str, Tokens] = field(default_factory=lambda: defaultdict(Tokens))
    shaped: int = 0
    unshaped: int = 0

    def shapes(self) -> dict[str, int] | None:
        """Of the answers asked in a shape (`Request.shape`), how many came in it (the backend constrained them)
        and how many were parsed as free text; None where none was asked in a shape."""
        asked = self.shaped + self.unshaped
        return {"asked": asked, "in_shape": self.shaped, "free_text": self.unshaped} if asked else None


@dataclass
class EngineStats:
    """Counts over one run, overall and per strategy; `tokens` and `prompt_tokens` (and `spent`, by role) count the
    requests this run generated (what it paid for), and `stopped` says the budget ran out."""

    requested: int = 0
    distinct: int = 0
    cached: int = 0
    generated: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    retried: int = 0
    regenerated: int = 0  # generated although an earlier model of the same name had answered them (it changed)
    failures: Counter[str] = field(default_factory=Counter)  # why requests were refused for good, by count
    by_strategy: dict[str, RequestCounts] = field(default_factory=lambda: defaultdict(RequestCounts))
    spent: dict[str, Tokens] = field(default_factory=lambda: defaultdict(Tokens))
    stopped: bool = False

    def failure_lines(self) -> list[str]:
        """Why requests were refused for good, most frequent first, each with its count (for a summary or an
        error)."""
        return [f"{count} × {reason}" for reason, count in self.failures.most_common()]

    def shapes(self) -> dict[str, int] | None:
        """`RequestCounts.shapes` over every strategy of the run."""
        counts = self.by_strategy.values()
        return RequestCounts(shaped=sum(c.shaped for c in counts), unshaped=sum(c.unshaped for c in counts)).shapes()


MIN_WINDOW = 64
#: What a run stopped by the budget returns: never a drop reason of a written build, as such a build is not written.
BUDGET_STOP = "budget"


class BudgetSpent(Exception):
    """A request not asked because the run's budget is spent (its run ends unfinished)."""


class _Window:
    """The runs of one `Engine.run_each`: those in flight, the rest still to start, and finished results waiting
    for an earlier one so they are handed over in order."""

    def __init__(self, runs: Iterator[tuple[str, StrategyRun]], size: int, on_result: Callable[[int, Any], None]):
        self.runs, self.size, self.on_result = runs, size, on_result
        self.active: set[asyncio.Task[Any]] = set()
        self.results: dict[int, Any] = {}
        self.next_index = self.emitted = 0
        self.exhausted = False
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Engine:
    """Answers the requests of many strategy runs with the roles' backends and an optional cache.

    >>> engine = Engine(roles, GenerationParams(), local=LocalBackend(), cache=None)  # doctest: +SKIP
    >>> results = engine.run([("prefix", STRATEGIES["prefix"].run(instruction, ctx))])  # doctest: +SKIP
    """

    def __init__(
        self,
        roles: dict[str, Spec],
        params: GenerationParams,
        *,
        backends: dict[str, Backend] | None = None,
        local: LocalBackend | None = None,
        endpoint: EndpointBackend | None = None,
        role_params: dict[str, GenerationParams] | None = None,
        cache: GenerationCache | None = None,
        progress: bool = True,
        window: int | None = None,
        budget: Budget | None = None,
        prices: Mapping[str, Price] | None = None,
        think_tags: tuple[str, str] = THINK_TAGS,
    ) -> None:
        self.roles = roles
        self.default_params = params
        self.params = {role: (role_params or {}).get(role, params) for role in roles}
        given = {"local": local, "endpoint": endpoint}
        #: By spec kind (see `popalign.backends`), the backend that answers such roles.
        self.backends: dict[str, Backend] = {**(backends or {}), **{k: b for k, b in given.items() if b is not None}}
        self.cache = cache
        self.progress = progress
        self.stats = EngineStats()
        self.identities: dict[str, ModelIdentity] = {}
        #: By endpoint role: how its settings were sent (its server kind and request fields).
        self.sent: dict[str, dict[str, Any]] = {}
        #: By role whose model changed since its answers were cached: the identity it had then.
        self.changed: dict[str, ModelIdentity] = {}
        self._answers: OrderedDict[str, asyncio.Future[Generation]] = OrderedDict()
        self._live = 0
        self._waiting = 0
        self._bar: tqdm | None = None
        self.slots = self._slots()
        self.window = window or max(MIN_WINDOW, 2 * self.slots)
        self.planned: dict[str, int] = {}
        self.budget, self.prices = budget, dict(prices or {})
        self._gate: asyncio.Semaphore | None = None  # with a budget: requests in flight, at most the slots
        #: The tags of a think block taken out of answers (`popalign.reasoning`): runs read answers without traces.
        self.think_tags = think_tags

    def _slots(self) -> int:
        """The requests the backends take at a time. Twice as many runs are in flight at once (a run waits on one
        or two), so every slot stays busy while memory stays bounded."""
        return sum(
            backend.slots(list({spec for spec in self.roles.values() if spec.kind == kind}))
            for kind, backend in self.backends.items()
        )

    def run(
        self,
        runs: Iterable[tuple[str, StrategyRun]],
        expected: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> list[Any]:
        """Drive every `(label, run)` to completion and return their results in order; `expected` is the number
        of requests the progress bar counts to, and `check` runs once the roles' identities are known, before
        any request."""
        results: list[Any] = []
        self.run_each(runs, lambda _, result: results.append(result), expected, check)
        return results

    def run_each(
        self,
        runs: Iterable[tuple[str, StrategyRun]],
        on_result: Callable[[int, Any], None],
        expected: int | None = None,
        check: Callable[[], None] | None = None,
        planned: Mapping[str, int] | None = None,
    ) -> None:
        """Drive the runs through a window of `window` at a time, taking the next from `runs` as one finishes,
        and hand each result to `on_result(index, result)` in the order of `runs`; nothing is kept, so memory
        stays flat however many runs there are. `planned` is, by label, the requests a run asks at most (counted
        in `expected`): a run that ends sooner takes the rest off the progress bar's total."""
        self.planned = dict(planned or {})
        asyncio.run(self._run(iter(runs), on_result, expected, check))

    async def _run(
        self,
        runs: Iterator[tuple[str, StrategyRun]],
        on_result: Callable[[int, Any], None],
        expected: int | None,
        check: Callable[[], None] | None,
    ) -> None:
        for role, spec in self.roles.items():
            self.identities[role] = await self._backend(spec).identity(spec)
            if self.endpoint and spec.served:  # refused here where its server cannot honour a setting
                self.sent[role] = self.endpoint.sent(spec, self.params[role])
        self._note_changes()
        if check:
            check()
        if self.local:
            self.local.on_load = self._loading
        window = _Window(runs, self.window, on_result)
        try:
            with tqdm(
                total=expected, desc="generating", unit="req", disable=not self.progress, dynamic_ncols=True
            ) as self._bar:
                try:
                    self._admit(window)
                    await window.finished
                    if self.stats.stopped:  # a run stopped by the budget leaves its other requests to finish, cached
                        await asyncio.gather(
                            *(a for a in self._answers.values() if not a.done()), return_exceptions=True
                        )
                except BaseException:
                    pending = [*window.active, *(answer for answer in self._answers.values() if not answer.done())]
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    raise
        finally:
            if self.endpoint:
                for role in self.sent:  # what the answers said of the backend that gave them, before it is closed
                    if found := self.endpoint.system_fingerprints(self.roles[role]):  # type: ignore[arg-type]
                        self.sent[role]["system_fingerprints"] = found
                await self.endpoint.aclose()

    def _admit(self, window: _Window) -> None:
        """Start runs until the window is full. It also bounds how far ahead of the oldest unfinished run a new one
        may be, so the finished results waiting to be handed over in order stay few."""
        while len(window.active) < window.size and window.next_index < window.emitted + 4 * window.size:
            if self.stats.stopped:  # the budget is spent: no new run starts, those in flight finish
                window.exhausted = True
                break
            try:
                label, run = next(window.runs)
            except StopIteration:
                window.exhausted = True
                break
            index, window.next_index = window.next_index, window.next_index + 1
            self._live += 1
            task = asyncio.ensure_future(self._drive(label, run))
            task.add_done_callback(lambda task, index=index: self._finished(window, index, task))
            window.active.add(task)
        if window.exhausted and not window.active and not window.finished.done():
            window.finished.set_result(None)

    def _finished(self, window: _Window, index: int, task: asyncio.Task[Any]) -> None:
        """A run ended: hand over the results now in order, start the next runs, and let a local backend
        generate once every live run waits."""
        window.active.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so asyncio does not report it again at exit
        if window.finished.done():
            return
        if error is not None:
            window.finished.set_exception(error)
            return
        try:
            window.results[index] = task.result()
            while window.emitted in window.results:
                window.on_result(window.emitted, window.results.pop(window.emitted))
                window.emitted += 1
            self._admit(window)
            self._flush_if_idle()
        except BaseException as err:  # ends the run, with its own traceback
            window.finished.set_exception(err)

    async def _drive(self, label: str, run: StrategyRun) -> Any:
        answers: list[Generation] | None = None
        asked = 0
        try:
            while True:
                try:
                    requests = run.send(answers)  # type: ignore[arg-type]  # send(None) starts the generator
                except StopIteration as stop:
                    return stop.value
                unknown = next((request.role for request in requests if request.role not in self.roles), None)
                if unknown is not None:
                    raise StrategyError(f"strategy {label!r}: asked role {unknown!r}, which this run has no model for")
                waits = [self._submit(label, request) for request in requests]
                asked += len(waits)
                self._waiting += 1
                self._flush_if_idle()
                try:
                    answers = list(await asyncio.gather(*waits))
                    self._count(self.stats.by_strategy[label], requests, answers)
                    answers = [self._read(label, ask, answer) for ask, answer in zip(requests, answers, strict=True)]
                except BudgetSpent:
                    run.close()
                    return Dropped(BUDGET_STOP)
                except PromptTooLong:
                    run.close()
                    return Dropped("too-long")
                except RequestFailed as failure:
                    self.stats.by_strategy[label].failed += 1
                    self.stats.failures[str(failure)] += 1
                    run.close()
                    return Dropped("failed")
                finally:
                    self._waiting -= 1
        finally:
            self._live -= 1
            unasked = self.planned.get(label, asked) - asked
            if unasked > 0 and self._bar is not None and self._bar.total:
                self._bar.total -= unasked  # a run dropped early, or one that needed fewer requests
                self._bar.refresh()

    def _flush_if_idle(self) -> None:
        """Once every unfinished run waits for answers, let the local backend generate its queued batch."""
        if self.local and self._waiting == self._live:
            self.local.flush()

    def _submit(self, label: str, request: Request) -> asyncio.Future[Generation]:
        counts = self.stats.by_strategy[label]
        counts.requests += 1
        self.stats.requested += 1
        spec, params = self.roles[request.role], request.settings(self.params[request.role])
        backend = self._backend(spec)
        key = request_key(backend.name, self.identities[request.role].key, request, params)
        if key in self._answers:
            counts.shared += 1
            self._tick()
            return self._answers[key]
        cached = self.cache.get_generation(key) if self.cache else None
        if cached is None and self._over_budget():
            refused: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
            refused.set_exception(BudgetSpent())
            self._tick()
            return refused  # not kept for sharing: it was never asked
        self.stats.distinct += 1
        if cached is not None:
            counts.cached += 1
            self.stats.cached += 1
            answer: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
            answer.set_result(cached)
            self._tick()
        else:
            if (
                request.role in self.changed
                and self.cache
                and self.cache.has(request_key(backend.name, self.changed[request.role].key, request, params))
            ):
                self.stats.regenerated += 1

            def done(generation: Generation) -> None:
                if self.cache:
                    self.cache.put_generation(key, generation)
                counts.generated += 1
                self.stats.generated += 1
                self.stats.tokens += generation.tokens
                self.stats.prompt_tokens += generation.prompt_tokens
                self.stats.reasoning_tokens += generation.reasoning_tokens
                self.stats.spent[request.role].add(generation.prompt_tokens, generation.tokens)

            def retry(reason: str, wait: float) -> None:
                counts.retried += 1
                self.stats.retried += 1
                if self._bar is not None:
                    self._bar.set_postfix_str(f"retry {self.stats.retried}: {reason}; next try in {wait:.0f} s")

            if self.budget:
                answer = asyncio.ensure_future(self._ask_within_budget(backend, spec, request, params, done, retry))
            else:
                answer = asyncio.ensure_future(backend.submit(spec, request, params, done, retry))
            answer.add_done_callback(lambda _: self._tick())  # answered or failed for good: the bar counts both
        self._answers[key] = answer
        while len(self._answers) > 4 * self.window and next(iter(self._answers.values())).done():
            self._answers.popitem(last=False)  # an old answer: the runs that could share it have finished
        return answer

    def _note_changes(self) -> None:
        """Record each role's model in the cache, and say which changed since their answers were cached: those are
        generated again (counted in `regenerated`), never read from the cache."""
        if not self.cache:
            return
        earlier: dict[tuple[str, str, str], str | None] = {}
        for role, identity in self.identities.items():
            seen = (self.backend(role).name, identity.served or identity.name, identity.weights)
            if seen not in earlier:
                earlier[seen] = self.cache.seen_model(*seen)
                if earlier[seen] is not None:
                    print(f"popalign: model {identity.name} changed since its answers were cached ({identity.evidence} "
                          f"{_short(earlier[seen] or '')} → {_short(identity.weights)}): its answers are generated "
                          "again", file=sys.stderr)  # fmt: skip
            if earlier[seen] is not None:
                self.changed[role] = replace(identity, weights=earlier[seen] or "")

    def _read(self, label: str, request: Request, answer: Generation) -> Generation:
        """An answer as its run reads it: without its reasoning trace, and, where it was asked in a shape and came
        in it, as the text its parser reads (counted either way)."""
        answer = separate(answer, self.think_tags)
        if request.shape is None:
            return answer
        counts = self.stats.by_strategy[label]
        read = request.shape.read(answer.text)
        counts.shaped += read is not None
        counts.unshaped += read is None
        return answer if read is None else replace(answer, text=read)

    def _count(self, counts: RequestCounts, requests: list[Request], answers: list[Generation]) -> None:
        """Add the tokens of a step's answers to its strategy's counts, by the role each was asked of."""
        for request, answer in zip(requests, answers, strict=True):
            counts.tokens += answer.tokens
            counts.prompt_tokens += answer.prompt_tokens
            counts.reasoning_tokens += answer.reasoning_tokens
            counts.by_role[request.role].add(answer.prompt_tokens, answer.tokens)

    async def _ask_within_budget(
        self, backend: Backend, spec: Spec, request: Request, params: GenerationParams, done: Any, retry: Any
    ) -> Generation:
        """Ask a request once one of the backends' slots is free and the budget is not yet spent, so a run stops
        within the requests in flight (at most the backends' concurrency) of its budget."""
        if self._gate is None:
            self._gate = asyncio.Semaphore(max(1, self.slots))
        async with self._gate:
            if self._over_budget():
                raise BudgetSpent
            asked = backend.submit(spec, request, params, done, retry)
            self._flush_if_idle()  # a local backend generates what it queued once every run waits
            return await asked

    def _over_budget(self) -> bool:
        """Whether this run has spent its budget (once it has, it stays spent: no request is asked after)."""
        if self.budget and not self.stats.stopped:
            self.stats.stopped = self.budget.spent(self.stats.spent, self.prices) >= self.budget.limit
        return self.stats.stopped

    @property
    def local(self) -> LocalBackend | None:
        """The local backend, when roles or a judge run in process."""
        return self.backends.get("local")  # type: ignore[return-value]

    @property
    def endpoint(self) -> EndpointBackend | None:
        """The endpoint backend, when roles are served."""
        return self.backends.get("endpoint")  # type: ignore[return-value]

    def published_name(self, role: str) -> str:
        """How outputs name a role's model: a local spec by its own name, an endpoint by its served model."""
        return self.roles[role].published(self.identities.get(role))

    def backend(self, role: str) -> Backend:
        """The backend that answers a role."""
        return self._backend(self.roles[role])

    def backend_name(self, role: str) -> str:
        """`local` or `endpoint`: the backend of a role."""
        return self.roles[role].kind

    def _backend(self, spec: Spec) -> Backend:
        if spec.kind not in self.backends:
            raise RuntimeError(f"no {spec.kind} backend given for {spec}")
        return self.backends[spec.kind]

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


def _short(weights: str) -> str:
    """A digest or commit shortened for a message (what it is stays readable)."""
    return weights[:19] + "…" if len(weights) > 20 else weights or "none"
