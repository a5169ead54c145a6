"""The engine on a scripted in-memory backend (no model, no server): results come in the order of the runs
whatever order the answers arrive in, identical requests are answered once, a rerun is answered from the cache,
a request refused for good drops only its pair, any other failure stops the run, and the window bounds the runs
in flight."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import InFlight
from popalign.cache import GenerationCache
from popalign.contrasts import StrategyContext
from popalign.engine import Engine
from popalign.errors import RequestFailed
from popalign.generation import Generation, GenerationParams, Request
from popalign.model_identity import ModelIdentity
from popalign.prompts import Instruction
from popalign.roles import EndpointSpec
from popalign.strategies import STRATEGIES, Dropped, Pair
from popalign.styles import Styles
from popalign.templates import TemplateSet

PARAMS = GenerationParams(max_new_tokens=64, seed=0)
ROLES = {role: EndpointSpec.parse(f"http://{role}:8080") for role in ("default", "large", "small", "planner")}


class ScriptedBackend:
    """Answers each request after a random short delay with a text derived from it and its draw: `REFUSE` in a
    request is refused for good, `BREAK` raises an unexpected error. Counts what it was asked."""

    name = "endpoint"
    concurrency = 8

    def __init__(self, seed: int = 0) -> None:
        self.random = random.Random(seed)
        self.asked: Counter[tuple[str, str]] = Counter()

    async def identity(self, spec: EndpointSpec) -> ModelIdentity:
        return ModelIdentity(spec.urls[0].split("//")[1].split(":")[0])

    def sent(self, spec: EndpointSpec, params: GenerationParams) -> dict:
        return {"server": "scripted", "fields": {"temperature": params.temperature}}

    def system_fingerprints(self, spec: EndpointSpec) -> list[str]:
        return []

    def submit(self, spec, request: Request, params, on_done, on_retry):
        text = "\n".join(message["content"] for message in request.chat())
        self.asked[(spec.urls[0], text)] += 1
        return self._answer(spec, text, on_done, request.sample)

    async def _answer(self, spec: EndpointSpec, text: str, on_done, draw: int = 0) -> Generation:
        await asyncio.sleep(self.random.uniform(0, 0.01))
        if "REFUSE" in text:
            raise RequestFailed("prompt too long")
        if "BREAK" in text:
            raise RuntimeError("the backend broke")
        drawn = f" (draw {draw})" if draw else ""  # a sampler's second draw of one prompt is another text
        generation = Generation(f"{spec.urls[0]} says {len(text)}{drawn}: {text[-30:]}", 7, "stop")
        on_done(generation)
        return generation

    def flush(self) -> None:
        pass

    def slots(self, specs) -> int:
        return self.concurrency * sum(len(spec.urls) for spec in specs)

    async def aclose(self) -> None:
        pass


def runs(names: list[str], texts: list[str], styles: Styles = Styles()) -> Iterator[tuple[str, object]]:  # noqa: B008
    context = StrategyContext(TemplateSet(), styles=styles)
    return ((name, STRATEGIES[name].run(Instruction.from_text(text), context)) for text in texts for name in names)


def engine(backend: ScriptedBackend, roles: dict[str, EndpointSpec] = ROLES, **options) -> Engine:
    return Engine(roles, PARAMS, endpoint=backend, progress=False, **options)  # type: ignore[arg-type]


TEXTS = [f"Explain topic {n}." for n in range(30)]


def test_results_come_in_run_order_whatever_order_the_answers_arrive_in() -> None:
    handed: list[int] = []
    results: list[object] = []
    engine(ScriptedBackend(seed=1)).run_each(
        runs(["prefix", "nparam"], TEXTS), lambda index, result: (handed.append(index), results.append(result))
    )
    assert handed == list(range(60))
    assert all(isinstance(result, Pair) for result in results)
    for index, result in enumerate(results):  # each pair is the one of its own instruction and strategy
        assert TEXTS[index // 2][-10:] in result.chosen and TEXTS[index // 2][-10:] in result.rejected
        roles = ("default", "default") if index % 2 == 0 else ("large", "small")
        assert (result.chosen_role, result.rejected_role) == roles
    again = engine(ScriptedBackend(seed=2)).run(runs(["prefix", "nparam"], TEXTS))  # other arrival order
    assert again == results


def test_identical_requests_of_several_strategies_are_asked_once() -> None:
    # `large` is the default model: with shared answers, nparam's M_large(q) is refine's draft M(q)
    roles = {**ROLES, "large": ROLES["default"]}
    backend = ScriptedBackend()
    run = engine(backend, roles)
    results = run.run(runs(["nparam", "refine"], TEXTS[:5], Styles(shared_answers=True)))
    assert all(isinstance(result, Pair) for result in results)
    # per instruction: M_large(q), M_small(q), the draft M(q) (shared) and its refinement
    assert run.stats.requested == 5 * 4 and run.stats.distinct == sum(backend.asked.values()) == 5 * 3
    assert max(backend.asked.values()) == 1 and run.stats.by_strategy["refine"].shared == 5
    # by default each strategy draws its own M(q): one text is never chosen in nparam and rejected in refine
    own = ScriptedBackend()
    drawn = engine(own, roles).run(runs(["nparam", "refine"], TEXTS[:5]))
    assert sum(own.asked.values()) == 5 * 4
    for nparam, refine in zip(drawn[::2], drawn[1::2], strict=True):
        assert nparam.chosen != refine.rejected
    apart = ScriptedBackend()
    assert engine(apart).run(runs(["nparam", "refine"], TEXTS[:5])) != results  # other servers, other answers
    assert sum(apart.asked.values()) == 5 * 4


def test_a_rerun_is_answered_from_the_cache(tmp_path: Path) -> None:
    first_backend, second_backend = ScriptedBackend(seed=3), ScriptedBackend(seed=4)
    first = engine(first_backend, cache=GenerationCache(tmp_path))
    before = first.run(runs(["prefix", "demon", "refine"], TEXTS[:6]))
    second = engine(second_backend, cache=GenerationCache(tmp_path))
    assert second.run(runs(["prefix", "demon", "refine"], TEXTS[:6])) == before
    assert second.stats.generated == 0 and second.stats.cached == first.stats.distinct == sum(
        first_backend.asked.values()
    )
    assert not second_backend.asked


def test_a_refused_request_drops_its_pair_only_and_another_failure_stops_the_run() -> None:
    texts = ["Explain tides.", "Explain REFUSE here.", "Explain stars."]
    run = engine(ScriptedBackend())
    results = run.run(runs(["prefix"], texts))
    assert [type(result) for result in results] == [Pair, Dropped, Pair]
    assert results[1] == Dropped("failed") and run.stats.by_strategy["prefix"].failed == 1
    assert run.stats.failures == {"prompt too long": 1}
    with pytest.raises(RuntimeError, match="the backend broke"):
        engine(ScriptedBackend()).run(runs(["prefix"], ["Explain tides.", "Explain BREAK here.", *TEXTS]))


def test_the_window_bounds_the_runs_in_flight() -> None:
    flight = InFlight()
    narrow = engine(ScriptedBackend(seed=5), window=4)
    results = narrow.run((name, flight.track(run)) for name, run in runs(["prefix", "refine"], TEXTS))
    assert flight.peak == 4 and flight.live == 0 and len(results) == 60
    assert engine(ScriptedBackend(seed=6), window=1000).run(runs(["prefix", "refine"], TEXTS)) == results
    assert engine(ScriptedBackend(), window=None).window == 64  # at least MIN_WINDOW; 2 x 8 slots x 4 replicas


def test_the_progress_bar_ends_at_the_requests_made_when_runs_end_early() -> None:
    names, texts = ["elicitive", "refine", "prefix"], ["Explain REFUSE here.", "Explain topic 2."]
    planned = {name: STRATEGIES[name].requests for name in names}
    expected = len(texts) * sum(planned.values())
    shown = Engine(ROLES, PARAMS, endpoint=ScriptedBackend(), progress=True)  # type: ignore[arg-type]
    shown.run_each(runs(names, texts), lambda *_: None, expected, planned=planned)
    assert shown._bar is not None
    assert shown._bar.n == shown._bar.total == shown.stats.requested < expected  # refused runs stopped early
