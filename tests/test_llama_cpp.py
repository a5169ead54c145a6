"""The llama.cpp backend that runs GGUF models (the embedded demo model by default): its sampling steps equal
transformers' logits processors, it reads a chat as transformers renders and tokenizes it, its weaker copies drop
the same layers as transformers' copies, an answer does not depend on the others sharing its batch, and it
honours the generation settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from popalign.backends.llama_cpp import LlamaCppBackend, candidates, fewer_layers, model_file
from popalign.backends.local import LocalBackend
from popalign.errors import ConfigError
from popalign.generation import LENGTH, STOP, GenerationParams, Request, assistant, chat_prompt, system, user
from popalign.roles import EMBEDDED, ModelSpec

CHATS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is {{ 7*7 }}?"}],
    [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Rain on the window"},
        {"role": "user", "content": "Now make it about snow."},
    ],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "My favourite colour is"}],
]


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(temperature=0.7, top_p=0.9),
        GenerationParams(temperature=1.3, top_p=0.5, top_k=20),
        GenerationParams(temperature=0.9, top_p=1.0, min_p=0.05, repetition_penalty=1.3),
        GenerationParams(temperature=0.5, top_p=0.99, top_k=400),
    ],
)
def test_the_candidates_equal_transformers_logits_processors(params: GenerationParams) -> None:
    logits = np.random.default_rng(7).normal(0, 3, size=5000).astype(np.float32)
    prompt, answer = [3, 17, 17, 256], [9, 3, 4000]
    ids, probs = candidates(logits, prompt, answer, params)
    steps = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
    if params.repetition_penalty != 1.0:
        steps.insert(0, RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.top_k:
        steps.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1:
        steps.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        steps.append(MinPLogitsWarper(params.min_p))
    scores = steps(torch.tensor([prompt + answer]), torch.tensor(logits, dtype=torch.float64)[None])[0]
    expected = torch.softmax(scores, dim=-1).numpy()
    assert set(ids.tolist()) == set(np.flatnonzero(expected > 0).tolist())
    assert np.allclose(probs, expected[ids], atol=1e-9)


def test_the_frequency_and_presence_penalties_count_the_answer_only() -> None:
    logits = np.zeros(6, dtype=np.float32)
    params = GenerationParams(temperature=1.0, top_p=1.0, frequency_penalty=0.5, presence_penalty=0.25)
    ids, probs = candidates(logits, [5, 5, 5], [1, 1, 2], params)
    scores = dict(zip(ids.tolist(), np.log(probs / probs.max()).tolist(), strict=True))
    assert scores[0] == pytest.approx(0) and scores[5] == pytest.approx(0)
    assert scores[1] == pytest.approx(-1.25) and scores[2] == pytest.approx(-0.75)


def test_an_engine_option_is_checked_where_the_spec_is_read() -> None:
    assert ModelSpec.parse("smollm2:layers=24").kind == "llama.cpp"
    assert ModelSpec.parse("smollm2:layers=24,engine=transformers").kind == "local"
    assert ModelSpec.parse("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "local"
    assert ModelSpec.parse("smollm2:engine=transformers").published() == "smollm2"
    assert ModelSpec.parse("smollm2:engine=transformers").recipe_entry() == "smollm2:engine=transformers"
    with pytest.raises(ConfigError, match=r"llama\.cpp runs GGUF files only"):
        ModelSpec.parse("HuggingFaceTB/SmolLM2-135M-Instruct:engine=llama.cpp")
    with pytest.raises(ConfigError, match=r"engine must be one of llama\.cpp, transformers"):
        ModelSpec.parse("smollm2:engine=vllm")


def gaps(logprobs: dict[str, float], choices: list[str]) -> list[float]:
    """Each choice's log-prob less the first one's."""
    return [logprobs[choice] - logprobs[choices[0]] for choice in choices]


@pytest.fixture(scope="module")
def backend() -> LlamaCppBackend:
    return LlamaCppBackend()


@pytest.mark.slow
def test_a_chat_is_read_as_transformers_renders_and_tokenizes_it(backend: LlamaCppBackend) -> None:
    tokenizer = LocalBackend().tokenizer(EMBEDDED)
    model = backend.load(ModelSpec(EMBEDDED))
    for chat in CHATS:
        rendered = model.render(chat)
        assert rendered == chat_prompt(tokenizer, chat)
        assert model.tokenize(rendered) == tokenizer(rendered, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_choice_logprobs_agree_with_transformers_on_the_same_gguf(backend: LlamaCppBackend) -> None:
    spec, choices = ModelSpec(EMBEDDED), ["A", "B", " maybe"]
    ours = backend.choice_logprobs(spec, CHATS[:3], choices)
    theirs = LocalBackend().choice_logprobs(spec, CHATS[:3], choices)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine is not None and reference is not None
        # transformers' figures hold the prompt's own log-prob, the same for every choice: compare the gaps.
        # llama.cpp multiplies with the Q4_1 weights as they are, transformers with them de-quantized to fp32
        assert gaps(mine, choices) == pytest.approx(gaps(reference, choices), abs=0.3), (mine, reference)
        assert max(mine, key=mine.get) == max(reference, key=reference.get)


@pytest.mark.slow
def test_a_weaker_copy_drops_the_layers_transformers_drops(tmp_path: Path, backend: LlamaCppBackend) -> None:
    spec = ModelSpec(EMBEDDED, layers=24)
    copy = gguf.GGUFReader(fewer_layers(model_file(EMBEDDED), spec, tmp_path / "weaker.gguf"))
    assert int(copy.fields["llama.block_count"].contents()) == 24
    assert max(int(t.name.split(".")[1]) for t in copy.tensors if t.name.startswith("blk.")) == 23
    chat = [CHATS[0]]
    ours = backend.choice_logprobs(spec, chat, ["Blue", "Red"])[0]
    theirs = LocalBackend().choice_logprobs(spec, chat, ["Blue", "Red"])[0]
    full = backend.choice_logprobs(ModelSpec(EMBEDDED), chat, ["Blue", "Red"])[0]
    assert ours and theirs and full
    assert gaps(ours, ["Blue", "Red"]) == pytest.approx(gaps(theirs, ["Blue", "Red"]), abs=0.3), (ours, theirs)
    assert any(abs(ours[c] - full[c]) > 0.3 for c in ours)  # and it is another model than the full one


@pytest.mark.slow
def test_an_answer_does_not_depend_on_the_answers_beside_it(backend: LlamaCppBackend) -> None:
    spec = ModelSpec(EMBEDDED)
    params = GenerationParams(max_new_tokens=24, temperature=0.8, seed=3)
    alone = backend.generate(spec, [Request("default", (user("Name three rivers."),))], params)
    others = [Request("default", (user(f"Count to {n}."),)) for n in range(2, 19)]
    rivers = Request("default", (user("Name three rivers."),))
    crowded = backend.generate(spec, [*others[:9], rivers, *others[9:]], params)
    assert crowded[9] == alone[0]
    model = backend.load(spec)  # the tokens of the prompt it answered, as the model tokenizes the rendered chat
    assert alone[0].prompt_tokens == len(model.tokenize(model.render(rivers.chat()))) > 0
    again = backend.generate(spec, [Request("default", (user("Name three rivers."),), sample=1)], params)
    assert again[0] != alone[0]  # another draw of the same prompt


@pytest.mark.slow
def test_the_generation_settings_are_honoured(backend: LlamaCppBackend) -> None:
    spec, request = ModelSpec(EMBEDDED), Request("default", (system("Be brief."), user("List five fruits.")))
    greedy = GenerationParams(max_new_tokens=40, temperature=0)
    [plain] = backend.generate(spec, [request], greedy)
    [top_one] = backend.generate(spec, [request], replace(greedy, temperature=1.5, top_k=1))
    assert top_one.text == plain.text
    [short] = backend.generate(spec, [request], replace(greedy, max_new_tokens=5))
    assert (short.finish_reason, short.tokens) == (LENGTH, 5) and plain.text.startswith(short.text)
    word = plain.text.split()[3]
    [stopped] = backend.generate(spec, [request], replace(greedy, stop=(word,)))
    assert stopped.finish_reason == STOP and word not in stopped.text and plain.text.startswith(stopped.text)
    [penalised] = backend.generate(spec, [request], replace(greedy, repetition_penalty=3.0))
    assert penalised.text != plain.text
    [prefilled] = backend.generate(spec, [Request("default", (user("Name a colour."), assistant("Blue, and")))], greedy)
    assert prefilled.text and not prefilled.text.startswith("Blue")  # the model continued the open turn


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_fails_its_request_alone(backend: LlamaCppBackend) -> None:
    from popalign.errors import RequestFailed

    spec, params = ModelSpec(EMBEDDED), GenerationParams(max_new_tokens=4, temperature=0)
    with pytest.raises(RequestFailed, match="do not fit smollm2's context of 2048"):
        backend.generate(spec, [Request("default", (user("word " * 2100),))], params)
    [fine] = backend.generate(spec, [Request("default", (user("Hi"),))], params)
    assert fine.tokens >= 1


def test_the_python_api_refuses_an_engine_as_the_cli_does() -> None:
    with pytest.raises(ConfigError, match=r"model spec 'smollm2:engine=vllm': engine must be one of"):
        ModelSpec(EMBEDDED, engine="vllm")
    with pytest.raises(ConfigError, match=r"llama\.cpp runs GGUF files only"):
        ModelSpec("org/model", engine="llama.cpp")
