"""Models as they are now: a thinking model's trace is kept apart from the answer whichever way its server returns
it (a leading think block in `content`, DeepSeek-R1's block opened in the prompt, `reasoning_content`, `reasoning`),
or inline where asked; an answer that ends while still thinking is its own drop reason; thinking tokens are counted;
a server that renamed `max_tokens` or refuses a neutral field is asked in its own terms; a server that refuses every
request stops the run with its own words; `reasoning_effort`, a thinking budget and server-specific fields reach the
endpoint and are refused on a local model."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

import popalign
from helpers import POPALIGN, build, load, manifest, run_offline, serve_scripted
from popalign.errors import ConfigError
from popalign.generation import LENGTH, Generation
from popalign.reasoning import inline, separate, split_trace
from scripted_server import REASONING_KINDS, thought

PREFIX = ("--strategies", "prefix")


def serve(folder: Path, *flags: str):
    """The scripted server in a folder of its own, started with `flags`."""
    folder.mkdir(parents=True, exist_ok=True)
    return contextmanager(serve_scripted)(folder, "scripted-default", *flags)


def sent(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nPlan.\n</think>\n\nBlue.", ("Blue.", "Plan.", False)),
        ("Plan.\n</think>\n\nBlue.", ("Blue.", "Plan.", False)),  # the template opened the block in the prompt
        ("<think>Plan, then", ("", "Plan, then", True)),
        ("Blue, as <think> tags say.", ("Blue, as <think> tags say.", "", False)),  # not at the start: an answer
        ("Write <think> to open, </think> to close.", ("Write <think> to open, </think> to close.", "", False)),
    ],
)
def test_a_leading_think_block_is_taken_out_of_the_answer(text: str, expected: tuple[str, str, bool]) -> None:
    assert split_trace(text) == expected


def test_a_generation_that_ran_out_while_thinking_is_marked_so_and_a_cut_answer_stays_truncated() -> None:
    assert separate(Generation("", 64, LENGTH, 0, "Let me")).unfinished_thinking  # a split trace ate the limit
    assert separate(Generation("", 64, LENGTH, 0, "", 64)).unfinished_thinking  # only a count of thinking tokens
    assert separate(Generation("<think>Let me", 64, LENGTH)).unfinished_thinking
    cut = separate(Generation("<think>Plan.</think>Blue is the sc", 64, LENGTH))
    assert (cut.truncated, cut.unfinished_thinking, cut.text, cut.reasoning) == (True, False, "Blue is the sc", "Plan.")
    both = separate(Generation("<think>More.</think>Blue.", 9, reasoning="First."))
    assert (both.text, both.reasoning) == ("Blue.", "First.\n\nMore.")
    assert separate(Generation("[a]x[/a] <think>y</think>", 3), ("[a]", "[/a]")).text == "<think>y</think>"
    assert inline("Blue.", "Plan.", ("<seed:think>", "</seed:think>")) == "<seed:think>\nPlan.\n</seed:think>\n\nBlue."


@pytest.mark.parametrize("kind", REASONING_KINDS)
@pytest.mark.slow
def test_a_prefix_build_against_a_thinking_server_keeps_the_trace_out_of_the_pairs(tmp_path: Path, kind: str) -> None:
    with serve(tmp_path / "server", "--reasoning", kind) as (url, log):
        result, out = build(tmp_path, url, *PREFIX, tags=["ok", "think-cut", "cut-answer"])
    assert result.returncode == 0, result.stderr
    rows = load(out, "prefix")
    answers = [entry["answer"] for entry in sent(log)]
    assert len(rows) == 2
    for row in rows:
        for side in ("chosen", "rejected"):
            content, trace = row[side][0]["content"], row[f"{side}_thinking"]
            assert content in answers and "think" not in content and trace == thought(content)
    recorded = manifest(out)["configs"]["prefix"]
    assert recorded["dropped"] == {"unfinished-thinking": 1}  # cut-answer is prefix's "ok": only the trace is cut
    assert recorded["reasoning_tokens"] == sum(len(thought(a).split()) for a in answers)
    card = (out / "README.md").read_text()
    assert "`chosen_thinking`, `rejected_thinking`" in card and "unfinished-thinking" in card
    assert "of out, thinking" in result.stdout


@pytest.mark.slow
def test_thinking_inline_keeps_the_trace_before_the_answer_as_chat_templates_write_it(tmp_path: Path) -> None:
    with serve(tmp_path / "server", "--reasoning", "reasoning") as (url, _):
        result, out = build(tmp_path, url, *PREFIX, "--thinking", "inline", tags=["ok"])
    assert result.returncode == 0, result.stderr
    row = load(out, "prefix")[0]
    trace = row["chosen_thinking"]
    assert row["chosen"][0]["content"].startswith(f"<think>\n{trace}\n</think>\n\n") and trace
    assert "--thinking inline" in (out / "README.md").read_text()
    assert "thinking: inline" in (out / "popalign_recipe.yaml").read_text()


@pytest.mark.slow
def test_custom_think_tags_are_read_and_refused_when_malformed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="think_tags: expected two different tags"):
        popalign.build("prompts.jsonl", think_tags="<think>")
    with serve(tmp_path / "server", "--reasoning", "content") as (url, _):
        result, out = build(tmp_path, url, *PREFIX, "--think-tags", "<seed:think>,</seed:think>", tags=["ok"])
    assert result.returncode == 0, result.stderr
    assert load(out, "prefix")[0]["chosen"][0]["content"].startswith("<think>")  # not the tags it was told


@pytest.mark.slow
def test_a_server_that_renamed_max_tokens_and_refuses_top_p_is_asked_in_its_own_terms(tmp_path: Path) -> None:
    flags = ("--temperature", "1", "--top-p", "1")
    with serve(tmp_path / "server", "--reasoning", "reasoning", "--openai-reasoning") as (url, log):
        result, out = build(tmp_path, url, *PREFIX, *flags, "--concurrency", "1", tags=["ok", "identical"])
    assert result.returncode == 0, result.stderr
    asked = sent(log)
    answered = [entry for entry in asked if entry["answer"]]
    assert len(answered) == 4 and all(e["max_completion_tokens"] == 1024 and e["max_tokens"] is None for e in answered)
    assert len(asked) - len(answered) == 2  # asked once with max_tokens, once with top_p: then never again
    rows = load(out, "prefix")
    assert rows[0]["chosen_thinking"] is None  # OpenAI gives no text of the trace, only its count
    assert manifest(out)["configs"]["prefix"]["reasoning_tokens"] > 0


@pytest.mark.slow
def test_a_server_that_refuses_every_request_stops_the_run_with_its_own_words(tmp_path: Path) -> None:
    with serve(tmp_path / "server", "--openai-reasoning") as (url, log):
        result, _ = build(
            tmp_path, url, *PREFIX, "--top-p", "1", "--concurrency", "1", tags=["ok", "a", "b", "c", "d", "e"]
        )
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "refused the first 3 requests alike" in line and "'temperature' does not support 0.7" in line
    assert "the field it names: temperature" in line
    refused = [entry for entry in sent(log) if "max_completion_tokens" in entry and "top_p" not in entry]
    assert 3 <= len(refused) < 6  # of 12: three refused alike, perhaps one more already on its way, then no more


@pytest.mark.slow
def test_pairs_dropped_as_failed_are_reported_by_reason(tmp_path: Path, scripted: tuple[str, Path]) -> None:
    url, _ = scripted
    result, _ = build(tmp_path, url, "--strategies", "elicitive", tags=["ok", "refused", "cut-plan"])
    assert result.returncode == 0, result.stderr
    assert "refused for good (their pairs dropped as failed):" in result.stdout
    assert "1 × endpoint http://127.0.0.1" in result.stdout
    assert "request refused (HTTP 400: prompt too long)" in result.stdout
    nothing, _ = build(tmp_path, url, "--strategies", "elicitive", tags=["refused", "cut-plan"], out="none")
    assert nothing.returncode == 2
    assert "every pair was dropped" in nothing.stderr and "failed 1" in nothing.stderr
    assert "truncated 1" in nothing.stderr and "refused: 1 × endpoint" in nothing.stderr


@pytest.mark.slow
def test_reasoning_effort_a_thinking_budget_and_server_fields_reach_the_endpoint(tmp_path: Path) -> None:
    body = '{"chat_template_kwargs": {"enable_thinking": false}}'
    flags = ("--reasoning-effort", "low", "--thinking-budget", "256", "--extra-body", body)
    with serve(tmp_path / "server") as (url, log):
        result, out = build(tmp_path, url, *PREFIX, *flags, tags=["ok"])
    assert result.returncode == 0, result.stderr
    expected = ("low", 256, {"enable_thinking": False})
    fields = ("reasoning_effort", "thinking_token_budget", "chat_template_kwargs")
    assert all(tuple(entry[name] for name in fields) == expected for entry in sent(log))
    recorded = manifest(out)["params"]
    assert recorded["extra_body"] == {"chat_template_kwargs": {"enable_thinking": False}}
    assert "enable_thinking: false" in (out / "popalign_recipe.yaml").read_text()
    with serve(tmp_path / "server-plain") as (url, log):
        plain, _ = build(tmp_path, url, *PREFIX, tags=["ok"], out="unset")
    assert plain.returncode == 0 and not any("reasoning_effort" in e or "chat_template_kwargs" in e for e in sent(log))


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"reasoning_effort": "low"}, "reasoning_effort: role default runs smollm2 in process"),
        ({"extra_body": {"chat_template_kwargs": {}}}, "extra_body: role default runs"),
        ({"extra_body": {"temperature": 0}}, "extra_body: 'temperature' is set by popalign"),
        ({"extra_body": "[1]"}, "extra_body: expected a JSON object"),
        ({"reasoning_effort": "Low!"}, "reasoning_effort: expected a word"),
    ],
)
def test_endpoint_only_settings_are_refused_before_any_request(settings: dict, expected: str, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Name a colour."}\n')
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        popalign.build(prompts, strategies=["prefix"], out=tmp_path / "d", progress=False, **settings)


RATED = ["Explain rain [unrated].", "Explain snow [sampled]."]


def rated_build(tmp_path: Path, *flags: str) -> tuple[dict, list[dict]]:
    """A bestofn build of `RATED` against a scripted server started with `flags`: the config's manifest record and
    the rating requests the server saw."""
    prompts = tmp_path / "rated.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in RATED))
    with serve(tmp_path / "server", *flags) as (url, log):
        result = popalign.build(
            prompts, strategies=["bestofn"], roles={"default": url}, out=tmp_path / "d", progress=False, cache=False,
            concurrency=1, templates=Path(__file__).parent / "scripted_templates",
        )  # fmt: skip
    ratings = [e for e in sent(log) if e["messages"][-1]["content"].startswith("Rate the response")]
    return result.manifest.configs["bestofn"], ratings


@pytest.mark.parametrize(
    ("flags", "in_shape", "dropped"),
    [(("--shapes", "accept"), 8, {"tied": 1}), (("--shapes", "refuse"), 0, {"unrated": 1}), ((), 0, {"unrated": 1})],
)
@pytest.mark.slow
def test_ratings_are_asked_in_their_shape_and_read_as_free_text_where_a_server_cannot(
    tmp_path: Path, flags: tuple[str, ...], in_shape: int, dropped: dict
) -> None:
    record, ratings = rated_build(tmp_path, *flags)
    assert record["shapes"] == {"asked": 8, "in_shape": in_shape, "free_text": 8 - in_shape}
    assert record["dropped"] == dropped  # a constrained rater always gives a rating (here the same one to all)
    schemas = [e["response_format"]["json_schema"]["name"] for e in ratings if "response_format" in e]
    refused_once = 1 if flags == ("--shapes", "refuse") else 0
    assert schemas == ["rating"] * (8 if flags != ("--shapes", "refuse") else 1)  # refused once, then never asked
    assert len(ratings) == 8 + refused_once


@pytest.mark.slow
def test_the_embedded_model_rates_in_shape_on_llama_cpp() -> None:
    from popalign.backends.llama_cpp import LlamaCppBackend
    from popalign.generation import GenerationParams, Request, user
    from popalign.roles import ModelSpec
    from popalign.shapes import RATING, VERDICT

    ask = "Rate the answer 'Paris' to 'What is the capital of France?' from 1 to 10. Reply with the number only."
    judge = "Which is better for 'capital of France?': [Response A] Paris. [Response B] Berlin. Explain, then A or B."
    requests = [Request("r", (user(ask),), shape=RATING), Request("r", (user(judge),), shape=VERDICT)]
    rating, verdict = LlamaCppBackend().generate(ModelSpec("smollm2"), requests, GenerationParams(temperature=0.0))
    assert 1 <= int(RATING.read(rating.text)) <= 10
    assert VERDICT.read(verdict.text).splitlines()[-1] in ("A", "B")


@pytest.mark.slow
def test_a_revision_that_announces_itself_loses_its_opening_line_and_it_is_counted(
    tmp_path: Path, scripted: tuple[str, Path]
) -> None:
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "refine", tags=["ok", "preamble"])
    assert result.returncode == 0, result.stderr
    chosen = {row["prompt"][0]["content"]: row["chosen"][0]["content"] for row in load(out, "refine")}
    assert chosen["Explain tides [preamble]."].startswith("An answer shaped by its context")
    assert manifest(out)["configs"]["refine"]["preambles_removed"] == 1


@pytest.mark.parametrize("kind", ["content", "reasoning_content"])
@pytest.mark.slow
def test_a_judge_that_thinks_first_is_not_read_from_its_first_token_and_says_so(tmp_path: Path, kind: str) -> None:
    with serve(tmp_path / "server", "--reasoning", kind) as (url, _):
        built, out = build(tmp_path, url, *PREFIX, tags=["judge-mute", "ok"])
        assert built.returncode == 0, built.stderr
        templates = Path(__file__).parent / "scripted_templates"
        judged = run_offline(POPALIGN, "judge", out, "--judge-model", url, "--no-cache", "--no-progress",
                             "--templates", templates, HF_HUB_OFFLINE="0")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    assert "thinks before it answers (its first token opens a reasoning trace)" in judged.stderr
    verdicts = {row["prompt"][0]["content"]: row["judge_verdict"] for row in load(out, "prefix")}
    assert verdicts["Explain tides [judge-mute]."] == "unparsed"  # said so, not read from the `<think>` token
