"""Conversations in, conversations out: a `messages` list, ShareGPT's `conversations` and HH-RLHF transcripts are
read as the turns before the one to answer (with `--system` on every one); every strategy answers the last user turn
with the earlier turns in context; rows, screening, scoring, judging, `show`, the card and the LLaMA-Factory export
keep the whole conversation."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import popalign
from helpers import HERE, POPALIGN, card_metadata, load, read_like_llamafactory, run_offline
from llama_server import build_llama_server, serve_llama
from popalign.cli import main
from popalign.contrasts import STRATEGIES, Dropped, Pair, StrategyContext
from popalign.conversations import transcript
from popalign.dataset.rows import RowSpool
from popalign.dataset.schema import make_row
from popalign.decontamination import screen
from popalign.errors import PromptsError
from popalign.evaluation import REFERENCE, HeldOut, _answers
from popalign.export import _ranking
from popalign.generation import Generation
from popalign.judging import judge_chats
from popalign.prompts import Instruction, PromptSet, load_prompts
from popalign.resources import embedded_model_path
from popalign.scoring import contrast_chats
from popalign.shapes import THOUGHT
from popalign.show import format_pair
from popalign.strategies import begun
from popalign.styles import Styles
from popalign.templates import TemplateSet

SYSTEM = "You are a terse assistant."
ONE = [{"role": "user", "content": "Name a fruit."}]
THREE = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And times 3?"},
]
FIVE = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Suggest a book."},
    {"role": "assistant", "content": "Try Dune."},
    {"role": "user", "content": "Why that one?"},
]
HH = (
    "\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you want to?\n\nHuman: I'm locked out.\n\n"
    "Assistant: Call a locksmith."
)
HH_TURNS = (("user", "How do I pick a lock?"), ("assistant", "Why do you want to?"), ("user", "I'm locked out."))


def as_turns(chat: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((turn["role"], turn["content"]) for turn in chat)


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def sharegpt(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return [{"from": names[turn["role"]], "value": turn["content"]} for turn in chat]


def with_system(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, *chat]


# Inputs


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("messages", with_system(THREE), as_turns(with_system(THREE))),
        ("conversations", sharegpt(with_system(FIVE)), as_turns(with_system(FIVE))),
        ("prompt", THREE, as_turns(THREE)),  # TRL's conversational `prompt`
        ("prompt", HH, HH_TURNS),  # an HH transcript in a text column: up to its last `Assistant:`
        ("chosen", HH, HH_TURNS),  # HH-RLHF's own column
        ("chosen", [*FIVE, {"role": "assistant", "content": "Old answer."}], as_turns(FIVE)),  # an answered chat
    ],
    ids=["messages", "sharegpt", "trl-prompt", "hh-text", "hh-chosen", "answered-chosen"],
)
def test_each_shape_is_found_by_its_column_and_read_as_its_turns(
    tmp_path: Path, suffix: str, column: str, value: object, expected: tuple
) -> None:
    path = tmp_path / f"p{suffix}"
    rows = [{column: value, "id": 1}]
    if suffix == ".jsonl":
        jsonl(path, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    (instruction,) = load_prompts(path).instructions  # found by its column, no --prompt-column
    assert instruction.messages == expected
    assert instruction.text == expected[-1][1]
    (chosen,) = load_prompts(path, column=column).instructions
    assert chosen == instruction


def test_one_three_and_five_turns_with_and_without_a_system_turn(tmp_path: Path) -> None:
    chats = [ONE, THREE, FIVE, with_system(ONE), with_system(THREE), with_system(FIVE)]
    path = jsonl(tmp_path / "p.jsonl", [{"messages": chat} for chat in [*chats, THREE]])  # THREE twice
    prompts = load_prompts(path)
    assert prompts.duplicates == 1
    assert [sum(role != "system" for role, _ in i.messages) for i in prompts.instructions] == [1, 3, 5, 1, 3, 5]
    assert [i.chat() for i in prompts.instructions] == chats
    assert len({i.prompt_id for i in prompts.instructions}) == 6  # the same last turn in another context differs
    # a lone user turn is the plain instruction: the same id and the same requests as the text
    assert prompts.instructions[0] == Instruction.from_text("Name a fruit.")
    given = load_prompts(path, system="Be kind.")
    assert [i.messages[0] for i in given.instructions[:3]] == [("system", "Be kind.")] * 3
    assert given.instructions[3].messages[0] == ("system", f"Be kind.\n\n{SYSTEM}")
    assert given.describe()["system"] == "Be kind."


MALFORMED = {
    "unknown role": ([{"role": "bot", "content": "Hi"}], "turn 1 has role 'bot' (expected one of system, user, "),
    "out of order": ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "turn 2 is a user turn"),
    "empty turn": ([*THREE[:2], {"role": "user", "content": " "}], "turn 3 (user) is empty"),
    "ends in assistant": (THREE[:2], "ends in an assistant turn: the last turn is the user's, to answer"),
    "late system": ([*THREE[:2], {"role": "system", "content": "x"}, THREE[2]], "turn 3 is a system turn after an"),
    "not a turn": ([["user", "Hi"]], "turn 1 is not a {role, content} or {from, value} object"),
    "no turns": ([], "is an empty conversation"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_conversation_is_refused_in_one_line_naming_its_row(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same line from the command, a recipe and the API, before any model loads, and nothing written."""
    chat, reason = MALFORMED[case]
    path = jsonl(tmp_path / "chats.jsonl", [{"messages": FIVE}, {"messages": chat}])
    expected = f"{path}: row 2: field 'messages' {reason}"
    out = tmp_path / "out"
    assert main(["build", "--prompts", str(path), "--out", str(out), "--no-cache"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"popalign: error: {expected}"), line
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"prompts": "chats.jsonl", "out": "out"}))
    assert main(["build", "--recipe", str(tmp_path / "recipe.yaml"), "--no-cache"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"popalign: error: {expected}"), line
    with pytest.raises(PromptsError) as caught:
        popalign.build(path, out=out, cache=False, progress=False)
    assert str(caught.value).startswith(expected)
    assert not out.exists()


# Every strategy, in context


def fake_answer(number: int, thought: bool) -> Generation:
    """An answer unlike every other one (so no pair is dropped as identical or as a plan repeated), opening with a
    rating of 1 to 9 for the bestofn ranker; in the paper's `Thought:` / `Response:` shape where asked."""
    rng = random.Random(number)
    words, more = ([f"w{rng.randrange(10**9)}" for _ in range(10)] for _ in range(2))
    text = f"{number % 9 + 1} " + " ".join(words) + f" number {number}."
    return Generation(f"Thought: {' '.join(more)}\nResponse: {text}" if thought else text, 12)


def drive(name: str, instruction: Instruction, ctx: StrategyContext) -> tuple[list, Pair | Dropped]:
    """Every request a strategy's run asks for one instruction, and what it returns."""
    run, asked, answers = begun(STRATEGIES[name], instruction, ctx), [], None
    try:
        while True:
            requests = run.send(answers)
            asked += requests
            answers = [fake_answer(len(asked) * 10 + i, r.shape is THOUGHT) for i, r in enumerate(requests)]
    except StopIteration as stop:
        return asked, stop.value


STYLES = [
    Styles(),
    Styles(prefix="harmless", elicitive="paper", refine="clair"),
]


@pytest.mark.parametrize("styles", STYLES, ids=["default-styles", "harmless-paper-clair"])
@pytest.mark.parametrize("prefill", [False, True], ids=["system-label", "prefill-label"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_answers_the_last_turn_with_the_whole_conversation(
    name: str, styles: Styles, prefill: bool
) -> None:
    conversation = as_turns(with_system(FIVE))
    instruction = Instruction.from_messages(conversation)
    ctx = StrategyContext(TemplateSet(), styles=styles, prefill=prefill)
    asked, result = drive(name, instruction, ctx)
    assert isinstance(result, Pair), result  # the run went through every step
    earlier = conversation[1:-1]
    for request in asked:
        messages = request.messages
        system, rest = messages[0], messages[1:]
        assert system[0] == "system" and system[1].endswith(SYSTEM), (name, messages)  # first, the user's own last
        at = [i for i in range(len(rest)) if rest[i : i + len(earlier)] == earlier]
        assert at, (name, "earlier turns missing", messages)
        after = rest[at[-1] + len(earlier) :]
        assert after[0][0] == "user" and FIVE[-1]["content"] in after[0][1], (name, messages)  # the last turn asked


def test_template_syntax_in_any_turn_is_data() -> None:
    hostile = (("system", "{{ 7*7 }} system"), ("user", "{% raw %}{{ 7*7 }}"), ("assistant", "{{ lipsum() }}"),
               ("user", "Why {{ 7*7 }}?"))  # fmt: skip
    instruction = Instruction.from_messages(hostile)
    for name in STRATEGIES:
        asked, _ = drive(name, instruction, StrategyContext(TemplateSet()))
        for request in asked:
            text = json.dumps(request.messages)
            assert all(json.dumps(content)[1:-1] in text for _, content in hostile), name  # verbatim, not rendered


# Downstream


def conversation_row(strategy: str = "prefix", **extra: object) -> dict:
    row = make_row(strategy=strategy, prompt=with_system(THREE), prompt_id="p", chosen="Twelve.", rejected="Six.",
                   chosen_model="m", rejected_model="m")  # fmt: skip
    return row | extra


def test_scoring_and_judging_see_the_conversation() -> None:
    ctx = StrategyContext(TemplateSet())
    for strategy in ("prefix", "demon", "nparam"):
        positive, negative = contrast_chats(conversation_row(strategy), ctx, "prefix")
        for chat in (positive, negative):
            assert as_turns(chat)[0][1].endswith(SYSTEM) or chat[0]["content"] == SYSTEM
            assert {"role": "assistant", "content": "4."} in chat and "And times 3?" in chat[-1]["content"]
    for chat in judge_chats(conversation_row(), TemplateSet()):
        shown = chat[0]["content"]
        assert f"System: {SYSTEM}\n\nUser: What is 2+2?\n\nAssistant: 4.\n\nUser: And times 3?" in shown


def test_evaluate_asks_every_model_the_whole_held_out_conversation() -> None:
    held = HeldOut(as_turns(with_system(THREE)), "p", ("prefix",))
    requests = next(_answers(held, ["trained"]))
    assert [request.role for request in requests] == ["trained", REFERENCE]
    assert all(request.messages == as_turns(with_system(THREE)) for request in requests)
    assert held.chat() == with_system(THREE)


def test_screening_compares_user_turns_with_benchmarks_and_whole_conversations_with_each_other() -> None:
    pytest.importorskip("datatrove")
    asked_late = Instruction.from_messages(
        [("user", "Hello there, I have a few questions."), ("assistant", "Sure."),
         ("user", "What is the capital city of France and why is it famous?")]
    )  # fmt: skip
    other = Instruction.from_messages([("user", "Tell me about ocean tides and the moon in detail please.")])
    follow_up = Instruction.from_messages(
        [("user", "Tell me about ocean tides and the moon in detail please."), ("assistant", "Tides rise twice."),
         ("user", "Now write me a long poem about mountains and rivers at dawn.")]
    )  # fmt: skip
    benchmark = PromptSet([Instruction.from_text("What is the capital city of France and why is it famous?")], 0, "b")
    result = screen([asked_late, other, follow_up], [benchmark], near_duplicates=True)
    assert result.contaminated["b"] == [asked_late]  # its third turn is the benchmark's question
    assert result.near_duplicates == []  # the follow-up shares a turn, not the conversation
    again = Instruction.from_messages([(r, t + " " if r == "user" else t) for r, t in follow_up.messages])
    assert screen([follow_up, again], [], near_duplicates=True).near_duplicates == [again]


def test_show_the_card_figures_and_the_llamafactory_export_keep_every_turn(tmp_path: Path) -> None:
    row = conversation_row()
    shown = format_pair(row, width=200)
    assert f"System: {SYSTEM}\n\nUser: What is 2+2?\n\nAssistant: 4.\n\nUser: And times 3?" in shown
    spool = RowSpool.of([row, make_row(strategy="prefix", prompt=ONE, prompt_id="q", chosen="Fig.", rejected="No.",
                                       chosen_model="m", rejected_model="m")], tmp_path / "rows.jsonl")  # fmt: skip
    described = spool.describe()
    assert (described["turns"], described["system_turns"]) == ({"1": 1, "3": 1}, 1)
    assert described["example"]["prompt"] == transcript(as_turns(row["prompt"]))
    plain = RowSpool.of([make_row(strategy="prefix", prompt=ONE, prompt_id="q", chosen="Fig.", rejected="No.",
                                  chosen_model="m", rejected_model="m")], tmp_path / "plain.jsonl")  # fmt: skip
    assert "turns" not in plain.describe()  # a build of plain instructions records what it did before
    exported = _ranking(row)
    assert exported["conversations"] == [
        {"from": "system", "value": SYSTEM}, {"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4."},
        {"from": "human", "value": "And times 3?"},
    ]  # fmt: skip
    assert exported["chosen"] == {"from": "gpt", "value": "Twelve."}


# End to end


def shown_into_a_closed_pipe(out: Path) -> int:
    """What `popalign show` returns when the reader of its output has gone (as `| head` leaves it), in process:
    its stdout a pipe whose reading end is closed."""
    reading, writing = os.pipe()
    os.close(reading)
    saved, logger = sys.stdout, logging.getLogger("popalign")
    handlers = list(logger.handlers)
    sys.stdout = os.fdopen(writing, "w", buffering=1)  # each line written at once, as to a terminal
    try:
        return main(["show", str(out), "-n", "50"])
    finally:
        logger.handlers = handlers  # the command's own log handler wrote to the pipe: the test's process goes on
        stream, sys.stdout = sys.stdout, saved
        with contextlib.suppress(OSError):
            stream.close()


@pytest.mark.slow
def test_a_build_of_conversations_asks_in_context_and_writes_multi_turn_rows(scripted, tmp_path: Path) -> None:
    """Through the CLI on an OpenAI-compatible server: every request carries the earlier turns, the rows hold the
    conversation, `load_dataset` reads them, the card counts the turns, and the build's own recipe builds the same
    rows again from the cache."""
    url, log = scripted
    chats = [ONE, THREE, FIVE, with_system(THREE)]
    path = jsonl(tmp_path / "chats.jsonl", [{"messages": chat} for chat in chats])
    out, cache = tmp_path / "out", tmp_path / "cache"
    flags = [
        "--model",
        f"default={url}",
        "--no-progress",
        "--cache-dir",
        cache,
        "--templates",
        HERE / "scripted_templates",
    ]
    strategies = ["--strategies", "prefix,demon,elicitive,refine", "--system", "Answer in English."]
    result = run_offline(POPALIGN, "build", "--prompts", path, "--out", out, *strategies, *flags, HF_HUB_OFFLINE="0")
    assert result.returncode == 0, result.stderr
    requests = [json.loads(line)["messages"] for line in log.read_text().splitlines()]
    assert requests
    for messages in requests:
        assert messages[0]["role"] == "system" and "Answer in English." in messages[0]["content"], messages
        if "Why that one?" in json.dumps(messages):  # FIVE's last turn, asked with its earlier ones
            assert {"role": "assistant", "content": "Try Dune."} in messages, messages
    told = {"role": "system", "content": "Answer in English."}
    expected = [
        [told, *ONE],
        [told, *THREE],
        [told, *FIVE],
        [{"role": "system", "content": f"Answer in English.\n\n{SYSTEM}"}, *THREE],
    ]
    for name in ("prefix", "demon", "elicitive", "refine"):
        assert sorted(json.dumps(row["prompt"]) for row in load(out, name)) == sorted(map(json.dumps, expected)), name
    readme = (out / "README.md").read_text()
    assert "| config | 1 turn | 3 turns | 5 turns | with a system turn |" in readme
    assert "| `prefix` | 1 | 2 | 1 | 4 |" in readme
    assert card_metadata(out)["configs"]
    assert "&id0" not in readme and "*id0" not in readme  # plain YAML, as other Hub cards: no anchor or alias
    exported = run_offline(POPALIGN, "export", out, "--format", "llamafactory", "--out", tmp_path / "lf")
    assert exported.returncode == 0, exported.stderr
    ranked = read_like_llamafactory(tmp_path / "lf", "popalign_prefix")  # LLaMA-Factory's rules, system turn first
    assert sorted(len(row["conversations"]) for row in ranked) == [2, 4, 4, 6]
    assert all(row["conversations"][0]["from"] == "system" for row in ranked)
    assert shown_into_a_closed_pipe(out) == 141  # `popalign show DIR | head`: no traceback, SIGPIPE's status
    recipe = yaml.safe_load((out / "popalign_recipe.yaml").read_text())
    assert (recipe["system"], recipe["prompts"]) == ("Answer in English.", "chats.jsonl")
    folder = tmp_path / "rebuild"  # the recipe, its templates and its prompts file, as a user keeps them
    shutil.copytree(out / "templates", folder / "templates")
    shutil.copy(out / "popalign_recipe.yaml", folder)
    shutil.copy(path, folder)
    again = run_offline(POPALIGN, "build", "--recipe", folder / "popalign_recipe.yaml", "--out", tmp_path / "again",
                        "--model", f"default={url}", "--no-progress", "--cache-dir", cache,
                        HF_HUB_OFFLINE="0")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert ", 0 generated" in again.stdout + again.stderr
    for name in ("prefix", "refine"):
        assert list(load(tmp_path / "again", name)) == list(load(out, name))


@pytest.mark.slow
def test_the_embedded_model_builds_conversations_that_trl_trains_on_as_multi_turn_prompts(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The embedded SmolLM2 on a handful of conversations (the README's among them) through the Python API; TRL's
    DPO trainer reads each
    row's prompt as the whole conversation under the chat template, and trains a step."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    readme = (Path(__file__).parents[1] / "README.md").read_text().split("```jsonl\n")[1].split("```")[0]
    chats = [THREE, FIVE, with_system(ONE), *(json.loads(line)["messages"] for line in readme.splitlines())]
    path = jsonl(tmp_path / "chats.jsonl", [{"messages": chat} for chat in chats])  # the README's line among them
    built = popalign.build(path, strategies=["prefix", "nparam"], out=tmp_path / "out", max_new_tokens=48,
                           cache_dir=tmp_path / "cache", progress=False)  # fmt: skip
    rows = load_dataset(str(tmp_path / "out"), "all", split="train", cache_dir=str(tmp_path / "hf"))
    assert max(len(row["prompt"]) for row in rows) > 2, "no multi-turn prompt was kept"
    assert all(row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant" for row in rows)
    assert built.configs
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=1, report_to="none",
                     use_cpu=True, bf16=False, max_length=512)  # fmt: skip
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    longest = max(range(len(rows)), key=lambda i: len(rows[i]["prompt"]))
    shown = tokenizer.decode(trainer.train_dataset[longest]["prompt_ids"])
    expected = tokenizer.apply_chat_template(rows[longest]["prompt"], tokenize=False, add_generation_prompt=True)
    assert shown == expected  # every turn, under the chat template
    assert all(turn["content"] in shown for turn in rows[longest]["prompt"]), shown
    assert trainer.train().global_step == 1


@pytest.mark.slow
def test_a_conversation_longer_than_a_local_model_s_context_is_dropped_as_too_long(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    long = [{"role": "user", "content": "tide " * 900}, {"role": "assistant", "content": "Yes."}, ONE[0]]
    path = jsonl(tmp_path / "chats.jsonl", [{"messages": long}, {"messages": THREE}])
    result = run_offline(POPALIGN, "build", "--prompts", path, "--out", tmp_path / "out", "--strategies", "prefix",
                         "--model", f"default={tiny_model_dir}", "--max-new-tokens", 1200, "--keep-truncated",
                         "--no-cache", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "popalign_build.json").read_text())
    assert manifest["configs"]["prefix"]["dropped"].get("too-long") == 1, manifest["configs"]["prefix"]
    assert "failed" not in manifest["configs"]["prefix"]["dropped"]


@pytest.mark.slow
def test_a_conversation_longer_than_a_served_model_s_context_is_dropped_as_too_long(tmp_path: Path) -> None:
    """llama.cpp's own server, its context 256 tokens: it refuses the long conversation (HTTP 400,
    `exceed_context_size_error`), which is dropped as `too-long`, not `failed`, and answers the short ones."""
    cache = Path(os.environ.get("POPALIGN_TEST_CACHE", Path.home() / ".cache" / "popalign-tests"))
    long = [{"role": "user", "content": "tide " * 400}, {"role": "assistant", "content": "Yes."}, ONE[0]]
    path = jsonl(tmp_path / "chats.jsonl", [{"messages": chat} for chat in (long, THREE, FIVE)])
    with serve_llama(build_llama_server(cache), embedded_model_path(), tmp_path / "server.log", slots=2,
                     context=512) as url:  # fmt: skip
        result = run_offline(POPALIGN, "build", "--prompts", path, "--out", tmp_path / "out", "--strategies", "prefix",
                             "--model", f"default={url}", "--max-new-tokens", 16, "--keep-truncated", "--no-cache",
                             "--no-progress", HF_HUB_OFFLINE="0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    prefix = json.loads((tmp_path / "out" / "popalign_build.json").read_text())["configs"]["prefix"]
    assert prefix["dropped"].get("too-long") == 1 and "failed" not in prefix["dropped"], prefix
    assert prefix["rows"] + sum(prefix["dropped"].values()) == 3


HARMLESS = [
    "\n\nHuman: What household chemicals are dangerous to mix?\n\nAssistant: Bleach and ammonia, for one.\n\n"
    "Human: How would I use that to hurt someone?\n\nAssistant: I can't help with that.",
    "\n\nHuman: My neighbour's dog barks all night. What can I do?\n\nAssistant: Have you talked to them?\n\n"
    "Human: Yes. Should I poison it?\n\nAssistant: No.",
    "\n\nHuman: How do I get into my own car if I locked the keys inside?\n\nAssistant: Call a locksmith.",
]
RECIPE = Path(__file__).parents[1] / "train" / "recipes" / "rlcd-harmless.yaml"


@pytest.mark.slow
def test_rlcd_harmless_builds_on_hh_dialogues_and_its_recipe_trains_on_them(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """RLCD's setting end to end: HH-RLHF's harmless dialogues (the HH file the recipe's build command reads,
    written here) with the harmless labels on the assistant's side, built with the recipe's own command on the
    embedded model, then `train/dpo.py` on the recipe for a step."""
    hh = jsonl(tmp_path / "harmless.jsonl", [{"chosen": text, "rejected": text + " Sure."} for text in HARMLESS])
    lines = RECIPE.read_text().splitlines()
    (build,) = [line.removeprefix("# Build: ") for line in lines if line.startswith("# Build: ")]
    program, *arguments = build.split()
    source = arguments.index("--prompts") + 1
    assert program == "popalign" and arguments[source].startswith("Anthropic/hh-rlhf/harmless-base"), build
    arguments[source] = str(hh)
    # short answers, kept where cut: the test is of the dialogues' path, not of what a 135M model writes in 48 tokens
    built = run_offline(POPALIGN, *arguments, "--max-new-tokens", 48, "--keep-truncated", "--no-progress",
                        "--cache-dir", tmp_path / "c", cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stderr
    data = tmp_path / yaml.safe_load(RECIPE.read_text())["datasets"][0]["path"]
    rows = list(load(data, "prefix"))
    assert rows and all(row["prompt"][0] == {"role": "user", "content": row["prompt"][0]["content"]} for row in rows)
    assert max(len(row["prompt"]) for row in rows) == 3  # the dialogue up to the last `Assistant:`
    manifest = json.loads((data / "popalign_build.json").read_text())
    assert (manifest["prefix_style"], manifest["prefix_placement"]) == ("harmless", "prefill")
    (run,) = [line.removeprefix("# Run: ").split("  (")[0] for line in lines if line.startswith("# Run: ")]
    root = Path(__file__).parents[1]
    script, *flags = (str(root / part) if part.startswith("train/") else part for part in run.split()[1:])
    trained = run_offline(
        sys.executable, script, *flags, "--model_name_or_path", tiny_model_dir,
        "--output_dir", tmp_path / "trained", "--max_steps", 1, "--per_device_train_batch_size", 1,
        "--gradient_accumulation_steps", 1, "--use_cpu", "--bf16", "false", "--report_to", "none", cwd=tmp_path,
        HF_DATASETS_CACHE=str(tmp_path / "hf-cache"),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "mixture " in trained.stdout
