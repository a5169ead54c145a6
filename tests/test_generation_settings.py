"""The generation settings beyond temperature and top-p (repetition, frequency and presence penalties, min-p, stop
sequences):
sent to an endpoint only when set, refused in one line by an endpoint that does not take one, applied by the
local backend, and in a cache key only when set, so answers cached before they existed are still found."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import build, manifest, serve_scripted
from popalign.backends.local import AnswerPenalty, LocalBackend
from popalign.config import BuildConfig
from popalign.errors import ConfigError
from popalign.generation import GenerationParams, Request, request_key, user
from popalign.roles import ModelSpec


def test_a_cache_key_holds_the_penalties_only_where_set() -> None:
    request = Request("default", (user("Name a colour."),))
    before = {"backend": "local", "model": "m", "messages": request.messages, "sample": 0,
              "params": {"max_new_tokens": 384, "temperature": 0.7, "top_p": 0.9, "seed": 0}}  # fmt: skip
    old = hashlib.sha256(json.dumps(before, sort_keys=True).encode("utf-8")).hexdigest()
    assert request_key("local", "m", request, GenerationParams()) == old  # a key written before the penalties
    penalised = request_key("local", "m", request, GenerationParams(repetition_penalty=1.1))
    assert penalised != old and penalised != request_key("local", "m", request, GenerationParams(min_p=0.1))


def test_the_answer_penalty_is_openais_formula() -> None:
    scores = torch.zeros(2, 5)
    ids = torch.tensor([[9, 9, 1, 1, 2], [9, 9, 3, 3, 3]])  # two prompt columns, then the answer so far
    out = AnswerPenalty(width=2, frequency=0.5, presence=0.25)(ids, scores)
    assert out.tolist() == [[0.0, -1.25, -0.75, 0.0, 0.0], [0.0, 0.0, 0.0, -1.75, 0.0]]


@pytest.mark.slow
def test_an_endpoint_gets_the_penalties_set_and_one_that_refuses_one_says_so(tmp_path: Path) -> None:
    flags = ("--strategies", "prefix", "--repetition-penalty", "1.2")
    with contextmanager(serve_scripted)(tmp_path, "scripted-default") as (url, log):
        result, out = build(tmp_path, url, *flags, "--min-p", "0.05", "--stop", "User:", "--stop", "###", tags=["ok"])
    assert result.returncode == 0, result.stderr
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(sent) == 2
    assert all((r.get("repetition_penalty"), r.get("min_p"), r.get("stop"), "presence_penalty" in r)
               == (1.2, 0.05, ["User:", "###"], False) for r in sent)  # fmt: skip
    recorded = manifest(out)["params"]
    assert (recorded["repetition_penalty"], recorded["stop"]) == (1.2, ["User:", "###"])
    assert "stop:\n  - 'User:'\n  - '###'" in (out / "popalign_recipe.yaml").read_text()
    (tmp_path / "refusing").mkdir()
    refusing = contextmanager(serve_scripted)(
        tmp_path / "refusing", "scripted-default", "--refuse", "repetition_penalty"
    )
    with refusing as (url, _):
        refused, _ = build(tmp_path, url, *flags, tags=["ok"], out="refused")
    assert refused.returncode == 2
    message = "Unrecognized request argument supplied: repetition_penalty"  # the server's own words, out of its JSON
    assert refused.stderr.strip() == (
        f"popalign: error: endpoint {url}: does not take repetition_penalty (HTTP 400: {message}); leave "
        "--repetition-penalty out for this endpoint"
    )


@pytest.mark.slow
def test_the_local_backend_applies_every_penalty(tiny_model_dir: Path) -> None:
    backend = LocalBackend(batch_size=2)
    spec = ModelSpec.parse(str(tiny_model_dir))
    requests = [Request("default", (user("Name a colour."),)), Request("default", (user("Say hi."),))]
    greedy = GenerationParams(max_new_tokens=12, temperature=0.0)
    plain = backend.generate(spec, requests, greedy)
    for changed in ({"repetition_penalty": 1.5}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        penalised = backend.generate(spec, requests, replace(greedy, **changed))
        assert [g.text for g in penalised] != [g.text for g in plain], changed
        assert all(len(set(g.text.split())) >= len(set(p.text.split())) for g, p in zip(penalised, plain,
                                                                                        strict=True))  # fmt: skip


def test_stop_sequences_are_one_setting_in_every_entry_point() -> None:
    assert BuildConfig.of(stop="User:").params["stop"] == ("User:",)
    assert BuildConfig.of(params={"stop": ["User:", "###"]}).params["stop"] == ("User:", "###")
    with pytest.raises(ConfigError, match=r"^stop: expected up to 4 non-empty texts, got \('a', 'b', 'c', 'd', 'e'\)$"):
        GenerationParams(stop=("a", "b", "c", "d", "e"))


@pytest.mark.slow
def test_the_local_backend_ends_an_answer_before_a_stop_sequence(tiny_model_dir: Path) -> None:
    backend = LocalBackend(batch_size=1)
    spec = ModelSpec.parse(str(tiny_model_dir))
    request = [Request("default", (user("Name a colour."),))]
    greedy = GenerationParams(max_new_tokens=16, temperature=0.0)
    (plain,) = backend.generate(spec, request, greedy)
    words = plain.text.split()
    assert len(words) > 3, plain.text
    stop = words[2]
    (stopped,) = backend.generate(spec, request, replace(greedy, stop=(stop,)))
    assert stopped.text == plain.text[: plain.text.index(stop)].strip() and stopped.finish_reason == "stop"
