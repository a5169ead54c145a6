"""Log-probs from served models: DLMA scores through TGI's, vLLM's and SGLang's own protocols (told apart by
the routes each server answers) equal the local scores on the same model, and an endpoint judge whose reply
names no letter is read from the first token's `top_logprobs`, equal to the local teacher-forced reading."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import popalign
from helpers import POPALIGN, build, run_offline, save_tiny_model
from logprob_server import KINDS, MODEL_ID, received, serve_logprobs
from popalign import JudgeOptions, ScoreOptions
from popalign.backends.endpoint_scorer import PROTOCOLS, EndpointScorer, checked_total
from popalign.backends.local import LocalBackend
from popalign.cache import open_cache
from popalign.config import Endpoints
from popalign.contrasts import StrategyContext
from popalign.dataset.schema import make_row
from popalign.errors import BackendError, ConfigError
from popalign.judging import judge_chats, likelier_letter, verdict
from popalign.roles import ModelSpec
from popalign.scoring import LocalScorer, score_rows, score_settings
from popalign.templates import TemplateSet

# Served and local log-probs differ by float32 summation order and padding only (as in test_score).
TOLERANCE = 1e-3
TEMPLATES = Path(__file__).parent / "scripted_templates"
ADAPTER = "org/smollm2-adapter"  # a second model the vLLM stand-in lists, as a LoRA adapter would be
INSTRUCTIONS = ("Give one tip for writing clear emails.", "Name a good habit for learning a language.")
ANSWERS = (
    ("Put the main request in the first sentence, and keep each paragraph to one idea.", "emails are whatever lol"),
    ("Practise a little every day, out loud.", "Just buy a dictionary and hope."),
)
STRATEGIES = ("prefix", "demon", "nparam")


def rows() -> list[dict]:
    return [
        make_row(strategy=strategy, prompt=[{"role": "user", "content": instruction}], prompt_id=f"p{i}", chosen=chosen,
                 rejected=rejected, chosen_model="m", rejected_model="m")
        for i, (instruction, (chosen, rejected)) in enumerate(zip(INSTRUCTIONS, ANSWERS, strict=True))
        for strategy in STRATEGIES
    ]  # fmt: skip


@pytest.fixture(scope="module")
def smollm2() -> LocalBackend:
    backend = LocalBackend(batch_size=4)
    backend.load(ModelSpec("smollm2"))
    return backend


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, Path]]]:
    """One stand-in of each kind, each computing with the embedded SmolLM2; the vLLM one lists two models."""
    folder = tmp_path_factory.mktemp("servers")
    with (
        serve_logprobs(folder / "tgi.jsonl", "tgi") as tgi,
        serve_logprobs(folder / "vllm.jsonl", "vllm", also=(ADAPTER,)) as vllm,
        serve_logprobs(folder / "sglang.jsonl", "sglang") as sglang,
    ):
        yield {"tgi": (tgi, folder / "tgi.jsonl"), "vllm": (vllm, folder / "vllm.jsonl"),
               "sglang": (sglang, folder / "sglang.jsonl")}  # fmt: skip


def render(backend: LocalBackend):
    tokenizer = backend.tokenizer("smollm2")
    return lambda chat: tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_protocol_scores_equal_the_local_scores(smollm2, servers, kind: str) -> None:
    url, log = servers[kind]
    context, given = StrategyContext(TemplateSet(), seed=0), rows()
    local, _, _ = score_rows(given, scorer=LocalScorer(smollm2, ModelSpec("smollm2")), render=render(smollm2),
                             context=context)  # fmt: skip
    address = f"{url}#{MODEL_ID}" if kind == "vllm" else url  # vLLM lists two models: one is named
    scorer = EndpointScorer(address, tokenizer=smollm2.tokenizer("smollm2"))  # protocol: auto
    weights = {"tgi": "v1", "vllm": f"/srv/v1/{MODEL_ID}", "sglang": f"{MODEL_ID}#v1"}[kind]
    assert scorer.name == f"{kind}:{MODEL_ID}@{weights}"  # what the server says of its weights keys the cache
    served, _, stats = score_rows(given, scorer=scorer, render=render(smollm2), context=context)
    assert served == pytest.approx(local, abs=TOLERANCE) and len(set(served)) > 2
    posts = [request for request in received(log) if request["method"] == "POST"]
    # nparam is scored with prefix's prompt pair, and the answers are the same: 8 distinct sequences per instruction
    assert len(posts) == stats.computed == 16
    if kind == "tgi":
        assert all(p["parameters"]["details"] and p["parameters"]["decoder_input_details"] for p in posts)
    elif kind == "vllm":
        assert all(p["path"] == "/v1/completions" and p["prompt_logprobs"] == 0 and p["model"] == MODEL_ID
                   and p["add_special_tokens"] is False for p in posts)  # fmt: skip
    else:
        assert all(p["path"] == "/generate" and p["return_logprob"] and p["logprob_start_len"] == 0 for p in posts)
        assert all(p["input_ids"] and "text" not in p for p in posts)  # token ids, which SGLang takes verbatim


@pytest.mark.slow
def test_a_tokenizer_that_adds_a_bos_scores_alike_on_every_protocol(tmp_path: Path) -> None:
    """Llama 3's, Gemma's and Mistral's tokenizers put a BOS before every text and their templates write one: TGI
    and SGLang, which add special tokens to a text, must not score a doubled BOS."""
    model = save_tiny_model(tmp_path / "bos", bos=True)
    backend = LocalBackend(batch_size=4)
    tokenizer = backend.tokenizer(str(model))
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id

    def render(chat):
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

    context, given = StrategyContext(TemplateSet(), seed=0), rows()[:6]
    assert render([{"role": "user", "content": "x"}]).startswith(tokenizer.bos_token)
    local, _, _ = score_rows(given, scorer=LocalScorer(backend, ModelSpec(str(model))), render=render, context=context)
    for kind in KINDS:
        with serve_logprobs(tmp_path / f"{kind}.jsonl", kind, model=str(model)) as url:
            address = f"{url}#{MODEL_ID}" if kind == "vllm" else url
            scorer = EndpointScorer(address, tokenizer=tokenizer)
            served, _, _ = score_rows(given, scorer=scorer, render=render, context=context)
        assert served == pytest.approx(local, abs=TOLERANCE), kind


@pytest.mark.slow
def test_trtllm_serve_is_not_taken_for_vllm(tmp_path: Path) -> None:
    with serve_logprobs(tmp_path / "trt.jsonl", "trtllm") as url, pytest.raises(BackendError) as refused:
        EndpointScorer(url, tokenizer=None)
    assert "answers /version as vLLM does, but its /v1/models says owned_by tensorrt_llm" in str(refused.value)


@pytest.mark.slow
def test_a_served_scorer_is_refused_in_one_line_when_it_cannot_answer(smollm2, servers, scripted) -> None:
    vllm, tgi = servers["vllm"][0], servers["tgi"][0]
    with pytest.raises(BackendError, match=f"endpoint {vllm}: serves several models .*{ADAPTER}.*name one"):
        EndpointScorer(vllm, tokenizer=None)
    with pytest.raises(BackendError, match="serves no model 'org/none'"):
        EndpointScorer(f"{vllm}#org/none", tokenizer=None)
    assert EndpointScorer(f"{vllm}#{ADAPTER}", tokenizer=None).model == ADAPTER
    with pytest.raises(BackendError, match=f"TGI endpoint {tgi}: serves '{MODEL_ID}', not 'org/other'"):
        EndpointScorer(f"{tgi}#org/other", tokenizer=None)
    wrong = EndpointScorer(tgi, tokenizer=smollm2.tokenizer("smollm2"), protocol="sglang")  # named by hand, and wrongly
    says = f"SGLang endpoint {tgi}: request refused \\(HTTP 422: .*missing field `inputs`\\) on {tgi}/generate$"
    with pytest.raises(BackendError, match=says):
        list(wrong.logprobs(["Hello there."]))
    with pytest.raises(BackendError) as refused:  # an OpenAI-style server has no prompt log-probs
        EndpointScorer(scripted[0], tokenizer=None)
    assert str(refused.value) == (
        f"endpoint {scripted[0]}: answers none of TGI's /info, SGLang's /get_model_info and vLLM's /version, so it has "
        "no prompt log-probs to give (name its protocol with --score-protocol)"
    )


def test_the_likelier_letter_is_read_from_its_log_probs() -> None:
    assert likelier_letter({"A": -0.5, "B": -0.7}) == "A" and likelier_letter({"B": -4.0}) == "B"  # A not listed
    assert likelier_letter({"A": -1.0, "B": -1.0}) is None and likelier_letter({}) is None


JUDGE_TEMPLATE = """Which response answers the request better?

Request: {{ instruction }}
Response A: {{ answer_a }}
Response B: {{ answer_b }}

Reply with the letter of the better response, A or B."""


@pytest.mark.slow
def test_an_endpoint_judge_without_a_letter_is_read_from_top_logprobs(smollm2, servers, scripted, tmp_path) -> None:
    """The stand-in's chat replies name no letter; each order's choice is then the likelier of A and B as the
    first token, which a direct forward pass of the same model gives too."""
    import torch

    url, log = servers["sglang"]  # any kind: every stand-in answers chat completions, with log-probs when asked
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix,demon", tags=["ok", "tide-two"])
    assert result.returncode == 0, result.stderr
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "judge_pairwise.jinja").write_text(JUDGE_TEMPLATE)
    options, cache = JudgeOptions(model=url), tmp_path / "cache"
    judged = popalign.judge(out, options, templates=templates, cache_dir=cache, progress=False)
    record = judged.manifest.judge
    rows = [row for name in judged.manifest.configs for row in judged.rows(name)]
    assert rows and record["from_logprobs"] == record["judgements"] == 2 * len(rows)

    model, tokenizer = smollm2.load(ModelSpec("smollm2"))
    a, b = (tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in "AB")

    def choice(chat: list[dict]) -> str:
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        with torch.inference_mode():
            logits = model(**tokenizer(prompt, add_special_tokens=False, return_tensors="pt")).logits[0, -1]
        return "A" if logits[a] > logits[b] else "B"

    expected = [verdict(*(choice(chat) for chat in judge_chats(row, TemplateSet(templates)))) for row in rows]
    assert [row["judge_verdict"] for row in rows] == expected
    asked = [request for request in received(log) if request.get("logprobs")]
    assert len(asked) == record["judgements"]
    assert all(request["max_tokens"] == 1 and request["top_logprobs"] == 5 for request in asked)
    again = popalign.judge(out, options, templates=templates, cache_dir=cache, progress=False)
    assert again.manifest.judge["from_logprobs"] == record["from_logprobs"]
    assert len([request for request in received(log) if request.get("logprobs")]) == len(asked)  # from the cache


def test_a_protocol_for_a_local_scorer_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^score_protocol: vllm is for a served scoring model; smollm2 is local$"):
        score_settings(ScoreOptions(model="smollm2", protocol="vllm"), None, "smollm2", Endpoints())
    with pytest.raises(ConfigError, match=r"^score_protocol: expected one of auto, tgi, vllm, sglang, got 'tei'$"):
        ScoreOptions(protocol="tei")


def _answers(values: list) -> dict[str, dict]:
    """One prompt's log-probs as each protocol's answer carries them."""
    return {
        "tgi": {"details": {"prefill": [{"id": i, "text": "t", "logprob": v} for i, v in enumerate(values)]}},
        "vllm": {"choices": [{"prompt_logprobs": [None if v is None else {str(i): {"logprob": v}}
                                                  for i, v in enumerate(values)]}]},
        "sglang": {"meta_info": {"input_token_logprobs": [[v, i, None] for i, v in enumerate(values)]}},
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["tgi", "vllm", "sglang"])
@pytest.mark.parametrize(
    ("values", "says"),
    [
        ([None, None, -0.5], "position 1 has no log-prob"),  # a second empty position is not skipped
        ([None, float("nan"), -0.5], "position 1 has log-prob nan"),
        ([None, float("-inf")], "position 1 has log-prob -inf"),
        ([None, 3.5], "position 1 has log-prob 3.5"),  # a log-prob is never above 0
        ([None, True], "position 1 has log-prob True"),
        ([None, "-1.0"], "position 1 has log-prob '-1.0'"),
        ([None, -1e308, -1e308], "add up to -inf"),
    ],
)
def test_every_served_log_prob_is_checked(kind: str, values: list, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        checked_total(PROTOCOLS[kind].read(_answers(values)[kind]))
    assert checked_total(PROTOCOLS[kind].read(_answers([None, -1.0, -0.25])[kind])) == -1.25


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "fault", "says"),
    [
        ("tgi", "nan", "prompt position 1 has log-prob nan, not a finite number <= 0"),
        ("vllm", "null", "prompt position 1 has no log-prob (only the first may have none)"),
        ("sglang", "true", "prompt position 1 has log-prob True, not a finite number <= 0"),
        ("tgi", "positive", "prompt position 1 has log-prob 1e+300, not a finite number <= 0"),
        ("tgi", "one", "2 prompt log-probs for a text of"),
        ("vllm", "one", "2 prompt log-probs for a text of"),
        ("sglang", "one", "2 prompt log-probs for a text of"),
    ],
)
def test_a_bad_reading_is_refused_in_one_line_and_never_cached(
    smollm2, kind: str, fault: str, says: str, tmp_path: Path
) -> None:
    """A log-prob that is not a finite number at most 0, or not one per token of the text, stops the scoring in
    one line; nothing of it is cached, so a rerun against a healthy server computes every score."""
    context, given, cache = StrategyContext(TemplateSet(), seed=0), rows(), open_cache(True, tmp_path / "cache")
    tokenizer = smollm2.tokenizer("smollm2")
    address = lambda url: f"{url}#{MODEL_ID}" if kind == "vllm" else url  # noqa: E731
    with serve_logprobs(tmp_path / "bad.jsonl", kind, fault=fault) as url:
        scorer = EndpointScorer(address(url), tokenizer=tokenizer)
        with pytest.raises(BackendError) as refused:
            score_rows(given, scorer=scorer, render=render(smollm2), context=context, cache=cache)
    label = {"tgi": "TGI", "vllm": "vLLM", "sglang": "SGLang"}[kind]
    assert str(refused.value).startswith(f"{label} endpoint {url}: unreadable answer ({says}")
    assert str(refused.value).endswith("; nothing of it is cached") and "\n" not in str(refused.value)
    with serve_logprobs(tmp_path / "good.jsonl", kind) as url:
        _, _, stats = score_rows(given, scorer=EndpointScorer(address(url), tokenizer=tokenizer),
                                 render=render(smollm2), context=context, cache=cache)  # fmt: skip
    assert stats.computed == 16 and stats.cached == 0


@pytest.mark.slow
def test_a_busy_server_is_retried_as_generation_is(smollm2, tmp_path: Path) -> None:
    context, given, log = StrategyContext(TemplateSet(), seed=0), rows(), tmp_path / "requests.jsonl"
    with serve_logprobs(log, "tgi", fail_first=3) as url:
        scorer = EndpointScorer(url, tokenizer=smollm2.tokenizer("smollm2"), endpoints=Endpoints(retries=4))
        scores, _, stats = score_rows(given, scorer=scorer, render=render(smollm2), context=context)
    assert stats.computed == 16 and len(set(scores)) > 2
    assert len([request for request in received(log) if request["method"] == "POST"]) == 16 + 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("huge", "still failing after 2 attempts (answer of 5,0"),
        ("drip", "still failing after 2 attempts (no whole answer within 5 s (--timeout))"),
    ],
)
def test_popalign_score_bounds_each_served_answer(fault: str, says: str, scripted, tmp_path: Path) -> None:
    """`popalign score` asks a served scorer within generation's bounds, declared once (`--timeout`, `--retries`):
    an answer past the size a text's tokens allow is abandoned as it arrives, one dripped a byte at a time ends at
    the deadline; both are retried, then refused in one line (the API takes the same `Endpoints`)."""
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix", "--limit", "2")
    assert result.returncode == 0, result.stderr
    with serve_logprobs(tmp_path / "requests.jsonl", "tgi", fault=fault) as url:
        bounds = Endpoints(timeout=5, retries=2, concurrency=2)  # one forward pass at a time: a short queue
        flags = ["--score-model", url, "--timeout", "5", "--retries", "2", "--concurrency", "2", "--no-cache",
                 "--templates", TEMPLATES]  # fmt: skip
        refused = run_offline(POPALIGN, "score", out, *flags, HF_HUB_OFFLINE="0")
        with pytest.raises(BackendError) as raised:
            popalign.score(out, ScoreOptions(model=url), endpoints=bounds, templates=TEMPLATES, cache=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith(f"popalign: error: TGI endpoint {url}: {says}")
    assert str(raised.value).startswith(f"TGI endpoint {url}: {says}")
