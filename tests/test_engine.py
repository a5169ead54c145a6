"""The engine on a tiny config-built model: shared requests are generated once, the cache resumes a run, batched
generation equals one at a time, and weaker copies share the base's weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import InFlight
from popalign.backends.local import LocalBackend
from popalign.cache import GenerationCache
from popalign.contrasts import StrategyContext
from popalign.engine import Engine
from popalign.generation import GenerationParams, Request, chat_prompt, user
from popalign.prompts import Instruction
from popalign.roles import ModelSpec, resolve_roles
from popalign.strategies import STRATEGIES
from popalign.styles import Styles
from popalign.templates import TemplateSet

pytestmark = pytest.mark.slow  # every test loads a model (the scripted engine tests are fast)
PARAMS = GenerationParams(max_new_tokens=6, seed=1)


def runs(names: list[str], texts: list[str], styles: Styles = Styles()) -> list:  # noqa: B008 (frozen)
    context = StrategyContext(TemplateSet(), keep_truncated=True, styles=styles)  # a tiny model never ends an answer
    return [(n, STRATEGIES[n].run(Instruction.from_text(t), context)) for t in texts for n in names]


def test_requests_shared_by_strategies_are_generated_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = ModelSpec(str(tiny_model_dir))
    roles = {"default": model, "large": model, "small": ModelSpec(str(tiny_model_dir), 2), "first": model}
    roles["second"] = ModelSpec(str(tiny_model_dir), 1)  # a copy that writes other text than the full model
    engine = Engine(roles, PARAMS, local=LocalBackend(batch_size=4), cache=None, progress=False)
    shared = Styles(shared_answers=True)
    results = engine.run(runs(["nparam", "leaderboard", "refine"], ["Say hi.", "Say bye."], shared))
    sides = [("large", "small"), ("first", "second"), ("default", "default")] * 2
    assert [(result.chosen_role, result.rejected_role) for result in results] == sides
    assert all(result.chosen != result.rejected for result in results)
    # per instruction: plain M(q) shared by large, first and refine's draft; small; second; the refinement
    assert engine.stats.requested == 2 * (2 + 2 + 1 + 1)
    assert engine.stats.distinct == engine.stats.generated == 2 * 4
    # by default each strategy draws its own M(q): nothing is shared, and no answer is on both sides
    own = Engine(roles, PARAMS, local=LocalBackend(batch_size=4), cache=None, progress=False)
    drawn = own.run(runs(["nparam", "leaderboard", "refine"], ["Say hi.", "Say bye."]))
    assert own.stats.requested == own.stats.distinct == 2 * 6
    for nparam, leaderboard, refine in zip(drawn[::3], drawn[1::3], drawn[2::3], strict=True):
        assert refine.rejected not in (nparam.chosen, leaderboard.chosen)


def test_a_rerun_is_answered_from_the_cache_with_the_same_results(tiny_model_dir: Path, tmp_path: Path) -> None:
    roles = resolve_roles({"default": ModelSpec(str(tiny_model_dir))}, {"prefix": ("default",)})
    texts = ["Say hi.", "Say bye.", "Count to three."]
    first = Engine(roles, PARAMS, local=LocalBackend(), cache=GenerationCache(tmp_path), progress=False)
    before = first.run(runs(["prefix", "demon", "elicitive"], texts))
    again = Engine(roles, PARAMS, local=LocalBackend(), cache=GenerationCache(tmp_path), progress=False)
    assert again.run(runs(["prefix", "demon", "elicitive"], texts)) == before
    assert again.stats.generated == 0 and again.stats.cached == first.stats.distinct


def test_runs_enter_through_a_bounded_window_and_results_come_in_order(tiny_model_dir: Path) -> None:
    flight = InFlight()
    roles = resolve_roles({"default": ModelSpec(str(tiny_model_dir))}, {"prefix": ("default",)})
    greedy = GenerationParams(max_new_tokens=6, temperature=0)
    texts = [f"Say {n}." for n in range(12)]
    narrow = Engine(roles, greedy, local=LocalBackend(batch_size=4), window=4, progress=False)
    handed: list[int] = []
    results: list = []
    narrow.run_each(
        ((name, flight.track(run)) for name, run in runs(["prefix", "refine"], texts)),
        lambda index, result: (handed.append(index), results.append(result)),
    )
    assert flight.peak == 4 and flight.live == 0 and handed == list(range(24))
    wide = Engine(roles, greedy, local=LocalBackend(batch_size=4), window=1000, progress=False)
    assert wide.run(runs(["prefix", "refine"], texts)) == results


def test_batched_greedy_generation_matches_one_at_a_time(tiny_model_dir: Path) -> None:
    spec, greedy = ModelSpec(str(tiny_model_dir)), GenerationParams(max_new_tokens=8, temperature=0)
    requests = [Request("default", (user(text),)) for text in ["Hi.", "A much longer request, to pad the batch.", "Ok"]]
    batched = LocalBackend(batch_size=3).generate(spec, requests, greedy)
    single = LocalBackend(batch_size=1).generate(spec, requests, greedy)
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.tokens > 0 for g in batched)
    tokenizer = LocalBackend().tokenizer(spec.source)  # each prompt's own tokens, whatever padding its batch needed
    lengths = [
        len(tokenizer(chat_prompt(tokenizer, r.chat()), add_special_tokens=False)["input_ids"]) for r in requests
    ]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single] == lengths


def test_weaker_copy_keeps_the_requested_layers_and_leaves_the_base_intact(tiny_model_dir: Path) -> None:
    import copy

    import torch

    backend = LocalBackend()
    base, tokenizer = backend.load(ModelSpec(str(tiny_model_dir)))
    ids = tokenizer(["Say hi."], return_tensors="pt")["input_ids"]
    before = base.generate(ids, max_new_tokens=8, do_sample=False)
    weaker, _ = backend.load(ModelSpec(str(tiny_model_dir), 3))
    assert len(weaker.model.layers) == 3 and len(base.model.layers) == 4 and base.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in base.model.layers] == [0, 1, 2, 3]
    assert [layer.self_attn.layer_idx for layer in weaker.model.layers] == [0, 1, 2]
    # the copy holds no tensor of its own: every weight is the base's
    weights = {parameter.data_ptr() for parameter in base.parameters()}
    assert all(parameter.data_ptr() in weights for parameter in weaker.parameters())
    # and it generates what an independent deep copy with the same layer removed (layer 1 of 4) generates
    reference = copy.deepcopy(base)
    reference.model.layers = torch.nn.ModuleList([reference.model.layers[i] for i in (0, 2, 3)])
    for index, layer in enumerate(reference.model.layers):
        layer.self_attn.layer_idx = index
    reference.config.num_hidden_layers = 3
    expected = reference.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(weaker.generate(ids, max_new_tokens=8, do_sample=False), expected)
    assert torch.equal(base.generate(ids, max_new_tokens=8, do_sample=False), before)


def test_a_model_load_is_announced_once_with_its_time(tiny_model_dir: Path) -> None:
    """The engine shows these on the progress line and keeps the load out of the ETA."""
    backend, heard = LocalBackend(), []
    backend.on_load = lambda spec, seconds: heard.append((spec, seconds))
    for layers in (3, None, 2):
        backend.load(ModelSpec(str(tiny_model_dir), layers))
    base = ModelSpec(str(tiny_model_dir))
    assert [spec for spec, _ in heard] == [base, base] and heard[0][1] is None and heard[1][1] > 0


def test_finish_reason_tells_a_cut_answer_from_a_finished_one(tiny_model_dir: Path) -> None:
    spec, greedy = ModelSpec(str(tiny_model_dir)), GenerationParams(max_new_tokens=8, temperature=0)
    backend = LocalBackend()
    request = Request("default", (user("Say hi."),))
    (cut,) = backend.generate(spec, [request], greedy)
    assert cut.finish_reason == "length" and cut.truncated and cut.tokens == 8
    model, tokenizer = backend.load(spec)
    prompt = tokenizer.apply_chat_template(request.chat(), add_generation_prompt=True, return_tensors="pt")
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    third = model.generate(ids, max_new_tokens=3, do_sample=False)[0, -1].item()
    model.generation_config.eos_token_id = third  # the model now ends its answer at its third token
    (finished,) = backend.generate(spec, [request], greedy)
    assert finished.finish_reason == "stop" and not finished.truncated and finished.tokens <= 3
