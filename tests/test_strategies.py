"""Pair assembly: elicitive parsing, pair validation and each strategy's steps, driven with given answers."""

from __future__ import annotations

import pytest

from popalign.contrasts import StrategyContext
from popalign.generation import Generation
from popalign.prompts import Instruction
from popalign.strategies import (
    STRATEGIES,
    Dropped,
    Pair,
    check_pair,
    clean_answer,
    parse_strategies,
    parse_thought,
    similarity,
)
from popalign.styles import Styles
from popalign.templates import TemplateSet

CUT = "length"


def said(*texts: str | tuple[str, str]) -> list[Generation]:
    """Generations with these texts; a `(text, "length")` pair is one cut at the token limit."""
    return [Generation(*t, finish_reason=t[1]) if isinstance(t, tuple) else Generation(t, 1) for t in texts]


def drive(
    strategy: str, *steps: list[Generation], text: str = "Name a colour.", **options: object
) -> tuple[list, Pair | Dropped]:
    """Run one strategy, answering its steps in turn; return the requests it made and its result."""
    run = STRATEGIES[strategy].run(Instruction.from_text(text), StrategyContext(TemplateSet(), **options))
    asked = [next(run)]
    for answers in steps:
        assert len(answers) == len(asked[-1])
        try:
            asked.append(run.send(answers))
        except StopIteration as stop:
            return asked, stop.value
    raise AssertionError(f"{strategy} wanted more steps than {len(steps)}")


def test_clean_answer_strips_labels_and_runaway_examples() -> None:
    assert clean_answer("Response: Blue.\n\nRequest: another one\nResponse: x") == "Blue."
    assert clean_answer("**Answer:** Red") == "Red"
    assert clean_answer("  Green, as in 'Response: x' ") == "Green, as in 'Response: x'"


@pytest.mark.parametrize(
    ("chosen", "rejected", "keep", "expected"),
    [
        ("Blue.", "", False, Dropped("empty")),
        ("   ", "Red.", False, Dropped("empty")),
        ("Response:", "Red.", False, Dropped("empty")),
        ("Blue  sky.", "blue sky.", False, Dropped("identical")),
        (("Blue and", CUT), "Red.", False, Dropped("truncated")),
        (("Blue and", CUT), "Red.", True, Pair("Blue and", "Red.", "default", "default", truncated=True)),
        ("Blue.", "Red.", False, Pair("Blue.", "Red.", "default", "default")),
    ],
)
def test_check_pair(chosen, rejected, keep: bool, expected: Pair | Dropped) -> None:
    context = StrategyContext(TemplateSet(), keep_truncated=keep)
    assert check_pair(*said(chosen, rejected), ("default", "default"), context) == expected


def test_parse_thought_and_similarity() -> None:
    assert parse_thought("Thought: be clear.\nResponse: Blue.") == ("be clear.", "Blue.")
    assert parse_thought("**Thought:** be clear.\n**Response:** Blue.") == ("be clear.", "Blue.")
    assert parse_thought("Blue.") is None and parse_thought("Thought: x\nResponse:") is None
    assert similarity("The sky is blue today", "the sky is BLUE today") == 1.0
    assert similarity("- Use short sentences.", "The sky is blue because of scattering.") < 0.2


PLAN_GOOD, PLAN_BAD, PLAIN = "- Name one colour and why.", "- Be vague.", "Blue is the colour of the clear sky."


def test_guided_elicitive_plans_then_answers_with_the_plan_as_guidance() -> None:
    asked, result = drive("elicitive", said(PLAN_GOOD, PLAN_BAD, PLAIN), said("Blue, like the sky.", "Some colour."))
    plans, answers = asked
    assert [r.role for r in plans] == ["planner", "planner", "planner"]
    assert "excellent answer" in plans[0].messages[0][1] and "poor answer" in plans[1].messages[0][1]
    assert plans[2].messages == (("user", "Name a colour."),)  # M(q), the check for plans that are answers
    for request, plan in zip(answers, (PLAN_GOOD, PLAN_BAD), strict=True):
        assert request.role == "default"
        assert request.messages == (("system", f"Guidelines for your answer:\n{plan}"), ("user", "Name a colour."))
    assert result == Pair("Blue, like the sky.", "Some colour.", "default", "default", PLAN_GOOD, PLAN_BAD)


@pytest.mark.parametrize(
    ("plans", "answers", "reason"),
    [
        (said((PLAN_GOOD, CUT), PLAN_BAD, PLAIN), None, "truncated"),
        (said(PLAN_GOOD, " ", PLAIN), None, "empty"),
        (said(PLAIN, PLAN_BAD, PLAIN), None, "plan-is-answer"),
        (said(PLAN_GOOD, PLAN_BAD, PLAIN), said(PLAN_GOOD, "Some colour."), "near-copy"),
        (said(PLAN_GOOD, PLAN_BAD, PLAIN), said("Blue.", ("Some", CUT)), "truncated"),
        (said(PLAN_GOOD, PLAN_BAD, PLAIN), said("Blue.", "blue."), "identical"),
    ],
)
def test_elicitive_drop_reasons(plans, answers, reason: str) -> None:
    asked, result = drive("elicitive", plans, *([answers] if answers else []))
    assert result == Dropped(reason) and len(asked) == (2 if answers else 1)


def test_paper_elicitive_is_one_turn_per_side() -> None:
    good, bad = "Thought: name it and say why.\nResponse: Blue.", "Thought: be vague.\nResponse: A colour."
    asked, result = drive("elicitive", said(good, bad), styles=Styles(elicitive="paper"))
    assert [r.role for r in asked[0]] == ["default", "default"] and len(asked) == 1
    assert "the principles a good response to it follows" in asked[0][0].messages[0][1]
    assert result == Pair("Blue.", "A colour.", "default", "default", "name it and say why.", "be vague.")
    assert drive("elicitive", said(good, "A colour."), styles=Styles(elicitive="paper"))[1] == Dropped("unparsed")


def test_demon_gives_demonstrations_as_earlier_chat_turns() -> None:
    asked, result = drive("demon", said("Blue.", "Colours, whatever."))
    context = StrategyContext(TemplateSet())
    for request, demos in zip(asked[0], (context.good_demos, context.bad_demos), strict=True):
        expected = [
            (role, demo[key]) for demo in demos for role, key in (("user", "instruction"), ("assistant", "response"))
        ]
        assert list(request.messages) == [*expected, ("user", "Name a colour.")]
    assert result == Pair("Blue.", "Colours, whatever.", "default", "default")


def test_refine_rejects_the_draft_and_chooses_its_refinement() -> None:
    asked, result = drive("refine", said("Blue-ish."), said("Blue: the colour of a clear sky."))
    assert asked[1][0].messages[:2] == (("user", "Name a colour."), ("assistant", "Blue-ish."))
    assert result == Pair("Blue: the colour of a clear sky.", "Blue-ish.", "default", "default")
    assert drive("refine", said(""))[1] == Dropped("empty")
    assert drive("refine", said(("Blue is", CUT)))[1] == Dropped("truncated")


@pytest.mark.parametrize(("strategy", "roles"), [("nparam", ["large", "small"]), ("leaderboard", ["first", "second"])])
def test_model_contrasts_ask_the_plain_instruction_of_two_roles(strategy: str, roles: list[str]) -> None:
    asked, result = drive(strategy, said("Blue.", "Red."))
    assert [r.role for r in asked[0]] == roles
    assert result == Pair("Blue.", "Red.", *roles)


def test_principle_choice_is_fixed_by_seed_and_varies_across_instructions() -> None:
    context = StrategyContext(TemplateSet(), seed=3)
    picks = {context.pick(Instruction.from_text(f"q{i}"), len(context.principles)) for i in range(40)}
    assert len(picks) > 1
    again = StrategyContext(TemplateSet(), seed=3)
    assert [again.pick(Instruction.from_text(f"q{i}"), 5) for i in range(9)] == [
        context.pick(Instruction.from_text(f"q{i}"), 5) for i in range(9)
    ]


def test_parse_strategies() -> None:
    assert parse_strategies("all") == list(STRATEGIES)
    assert parse_strategies("refine, prefix,prefix") == ["prefix", "refine"]
