"""`prefix`'s styles: a principle sentence in the user turn (`sentences`), or RLCD's and the paper's mechanism, a
label of the response on the assistant's side, as a prefill on a local model and as a system message on an
endpoint, from the helpfulness or the harmlessness set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import POPALIGN, build, card_metadata, manifest, requests, run_offline
from popalign.contrasts import StrategyContext
from popalign.errors import ConfigError
from popalign.generation import chat_prompt
from popalign.prompts import Instruction
from popalign.strategies import prefix_messages
from popalign.styles import Styles
from popalign.templates import TemplateSet

HOSTILE = "Explain {{ 7*7 }} briefly."


def labels(style: str) -> list[dict[str, str]]:
    return TemplateSet().records(f"prefix_labels_{style}.yaml", ("positive", "negative"))


@pytest.mark.parametrize("style", ["helpful", "harmless"])
def test_a_label_goes_to_the_assistants_side_and_the_instruction_stays_plain(style: str) -> None:
    instruction = Instruction.from_text(HOSTILE)
    prefilled = prefix_messages(StrategyContext(TemplateSet(), styles=Styles(prefix=style), prefill=True), instruction)
    system = prefix_messages(StrategyContext(TemplateSet(), styles=Styles(prefix=style)), instruction)
    pair = next(p for p in labels(style) if f"(response: {p['positive']})" == prefilled[0][1][1])
    assert prefilled == (
        (("user", HOSTILE), ("assistant", f"(response: {pair['positive']})")),
        (("user", HOSTILE), ("assistant", f"(response: {pair['negative']})")),
    )
    assert system == (
        (("system", f"The assistant's next response to the user is {pair['positive']}."), ("user", HOSTILE)),
        (("system", f"The assistant's next response to the user is {pair['negative']}."), ("user", HOSTILE)),
    )
    other = "harmless" if style == "helpful" else "helpful"
    assert pair not in labels(other)  # the two sets are apart
    sentences = prefix_messages(StrategyContext(TemplateSet()), instruction)
    assert [len(side) for side in sentences] == [1, 1] and all(side[0][1].endswith(HOSTILE) for side in sentences)


def test_the_labels_of_each_set_are_picked_by_seed_over_instructions() -> None:
    context = StrategyContext(TemplateSet(), styles=Styles(prefix="harmless"))
    seen = {prefix_messages(context, Instruction.from_text(f"Task {i}."))[0][0][1] for i in range(40)}
    assert len(seen) == len(labels("harmless"))
    with pytest.raises(ConfigError, match=r"^prefix_style: expected one of sentences, helpful, harmless, got 'rude'$"):
        Styles(prefix="rude")


@pytest.mark.slow
def test_a_prefilled_chat_leaves_the_assistant_turn_open(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "(response: helpful)"}]
    text = chat_prompt(tokenizer, chat)
    assert text.endswith("<|im_start|>assistant\n(response: helpful)")
    plain = chat_prompt(tokenizer, chat[:1])
    assert plain.endswith("<|im_start|>assistant\n") and text.startswith(plain)


@pytest.mark.slow
def test_an_endpoint_build_puts_the_label_in_a_system_message(scripted, tmp_path: Path) -> None:
    url, log = scripted
    result, out = build(tmp_path, url, "--strategies", "prefix", "--prefix-style", "harmless", tags=["ok", "tide-two"])
    assert result.returncode == 0, result.stderr
    chats = requests(log)
    assert len(chats) == 4
    negatives = {pair["negative"] for pair in labels("harmless")}
    for chat in chats:
        (system, asked) = chat
        assert system["role"] == "system" and asked == {"role": "user", "content": asked["content"]}
        assert asked["content"].startswith("Explain tides [")  # the plain instruction
    said = {
        chat[0]["content"].removeprefix("The assistant's next response to the user is ").rstrip(".") for chat in chats
    }
    assert said & negatives and said - negatives
    recorded = manifest(out)
    assert (recorded["prefix_style"], recorded["prefix_placement"]) == ("harmless", "system")
    card = (out / "README.md").read_text()
    assert "Prefix style: `harmless`" in card and "as a system message naming the response" in card
    assert "| `prefix` | prompt | M(q), response labelled harmless | M(q), response labelled harmful |" in card
    assert card_metadata(out)["configs"]
    assert "prefix_style: harmless" in (out / "popalign_recipe.yaml").read_text()


@pytest.mark.slow
def test_a_local_build_prefills_the_label_and_scores_in_the_same_context(tiny_roles, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_offline(
        POPALIGN, "build", "--limit", 2, "--strategies", "prefix", "--prefix-style", "helpful", "--out", out,
        "--max-new-tokens", 8, "--keep-truncated", "--no-cache", "--no-progress", *tiny_roles,
        "--score", "--score-model", tiny_roles[1].split("=")[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    recorded = json.loads((out / "popalign_build.json").read_text())
    assert (recorded["prefix_style"], recorded["prefix_placement"]) == ("helpful", "prefill")
    assert recorded["configs"]["prefix"]["rows"] > 0 and recorded["score"]
    assert (
        "as the opening of its own turn, which the model\ncontinues (an assistant prefill)"
        in (out / "README.md").read_text()
    )
