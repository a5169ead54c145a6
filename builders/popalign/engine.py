"""Drive strategy generators in lockstep: dedupe requests, answer from the cache, batch the rest, commit each
batch to the cache as it finishes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from popalign.cache import GenerationCache
from popalign.generation import GenerationParams, Request, request_key
from popalign.local_backend import LocalBackend
from popalign.models import ModelSpec
from popalign.strategies import StrategyRun


@dataclass
class EngineStats:
    """Counts over one run: requests asked for, distinct ones, answered from cache, generated, tokens."""

    requested: int = 0
    distinct: int = 0
    cached: int = 0
    generated: int = 0
    tokens: int = 0


class Engine:
    """Answers the requests of many strategy runs with one backend and an optional cache.

    >>> engine = Engine(LocalBackend(), roles, GenerationParams(), cache=None)  # doctest: +SKIP
    >>> results = engine.run([STRATEGIES["prefix"].run(instruction, ctx)])  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: LocalBackend,
        roles: dict[str, ModelSpec],
        params: GenerationParams,
        *,
        cache: GenerationCache | None = None,
        progress: bool = True,
    ) -> None:
        self.backend = backend
        self.roles = roles
        self.params = params
        self.cache = cache
        self.progress = progress
        self.stats = EngineStats()

    def run(self, runs: Sequence[StrategyRun]) -> list[Any]:
        """Drive every run to completion and return their results in order."""
        results: list[Any] = [None] * len(runs)
        waiting: dict[int, list[Request]] = {}
        for index, run in enumerate(runs):
            self._advance(index, run, None, waiting, results)
        with tqdm(desc="generating", unit="req", disable=not self.progress, dynamic_ncols=True) as bar:
            while waiting:
                answers = self._answer([request for requests in waiting.values() for request in requests], bar)
                current, waiting = waiting, {}
                for index, requests in current.items():
                    self._advance(index, runs[index], [answers[self._key(r)] for r in requests], waiting, results)
        return results

    def _advance(
        self,
        index: int,
        run: StrategyRun,
        answers: list[str] | None,
        waiting: dict[int, list[Request]],
        results: list[Any],
    ) -> None:
        try:
            waiting[index] = next(run) if answers is None else run.send(answers)
        except StopIteration as stop:
            results[index] = stop.value

    def _key(self, request: Request) -> str:
        return request_key(self.backend.name, str(self.roles[request.role]), request, self.params)

    def _answer(self, requests: list[Request], bar: tqdm) -> dict[str, str]:
        self.stats.requested += len(requests)
        distinct = {self._key(request): request for request in requests}
        self.stats.distinct += len(distinct)
        answers = self.cache.get_many(distinct) if self.cache else {}
        self.stats.cached += len(answers)
        bar.total = (bar.total or 0) + len(distinct)
        bar.update(len(answers))
        todo: dict[ModelSpec, list[tuple[str, Request]]] = defaultdict(list)
        for key, request in distinct.items():
            if key not in answers:
                todo[self.roles[request.role]].append((key, request))
        for spec, pending in todo.items():
            for keys, generations in self.backend.iter_batches(spec, pending, self.params):
                batch = {key: generation.text for key, generation in zip(keys, generations, strict=True)}
                if self.cache:
                    self.cache.put_many(batch)
                answers.update(batch)
                self.stats.generated += len(batch)
                self.stats.tokens += sum(generation.tokens for generation in generations)
                bar.update(len(batch))
        return answers
