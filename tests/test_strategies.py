"""Pair assembly: elicitive parsing, pair validation and each strategy's steps, driven with given answers."""

from __future__ import annotations

import pytest

from popalign.prompts import Instruction
from popalign.strategies import (
    STRATEGIES,
    Dropped,
    Pair,
    StrategyContext,
    check_pair,
    clean_answer,
    parse_elicited,
    parse_strategies,
)
from popalign.templates import TemplateSet


def drive(strategy: str, *steps: list[str], text: str = "Name a colour.") -> tuple[list, Pair | Dropped]:
    """Run one strategy, answering its steps in turn; return the requests it made and its result."""
    run = STRATEGIES[strategy].run(Instruction.from_text(text), StrategyContext(TemplateSet()))
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
    ("chosen", "rejected", "expected"),
    [
        ("Blue.", "", Dropped("empty")),
        ("   ", "Red.", Dropped("empty")),
        ("Response:", "Red.", Dropped("empty")),
        ("Blue  sky.", "blue sky.", Dropped("identical")),
        ("Blue.", "Red.", Pair("Blue.", "Red.", "default", "default")),
    ],
)
def test_check_pair(chosen: str, rejected: str, expected: Pair | Dropped) -> None:
    assert check_pair(Pair(chosen, rejected, "default", "default")) == expected


def test_parse_elicited() -> None:
    assert parse_elicited(" I will list facts. ", "Answer: Blue.") == ("I will list facts.", "Blue.")
    assert parse_elicited("", "Blue.") is None
    assert parse_elicited("I will list facts.", "  ") is None
    plan = "I will write a long and careful answer that lists three colours with a reason for each one."
    assert parse_elicited(plan, plan + " Done.") is None


def test_elicitive_is_two_turns_with_reasoning_in_context_and_kept_apart() -> None:
    asked, result = drive("elicitive", ["Plan: be precise.", "Plan: be vague."], ["Blue.", "Um, things."])
    first, second = asked
    assert "excellent response" in first[0].messages[0][1] and "poor response" in first[1].messages[0][1]
    assert second[0].messages[1] == ("assistant", "Plan: be precise.")
    assert second[1].messages[1] == ("assistant", "Plan: be vague.")
    assert result == Pair("Blue.", "Um, things.", "default", "default", "Plan: be precise.", "Plan: be vague.")


def test_elicitive_without_reasoning_stops_before_the_second_turn() -> None:
    asked, result = drive("elicitive", ["Plan: be precise.", "  "])
    assert result == Dropped("unparseable") and len(asked) == 1


def test_refine_rejects_the_draft_and_chooses_its_refinement() -> None:
    asked, result = drive("refine", ["Blue-ish."], ["Blue: the colour of a clear sky."])
    assert asked[1][0].messages[:2] == (("user", "Name a colour."), ("assistant", "Blue-ish."))
    assert result == Pair("Blue: the colour of a clear sky.", "Blue-ish.", "default", "default")
    assert drive("refine", [""])[1] == Dropped("empty")


@pytest.mark.parametrize(("strategy", "roles"), [("nparam", ["large", "small"]), ("leaderboard", ["first", "second"])])
def test_model_contrasts_ask_the_plain_instruction_of_two_roles(strategy: str, roles: list[str]) -> None:
    asked, result = drive(strategy, ["Blue.", "Red."])
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
