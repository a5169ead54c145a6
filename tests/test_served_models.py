"""An endpoint names its model (`URL#MODEL`, a recipe's `model:`, the Python API): against a scripted server that
lists three models and answers each by its own name, a named model is asked for by name, a name the server does
not list is refused before any request, and a server listing several is refused when none is named, in one line
listing what it serves; the judge and the scorer take the same syntax."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import popalign
from helpers import POPALIGN, build, load, manifest, prompts, run_offline, serve_scripted
from popalign.errors import ConfigError
from popalign.recipe import load_recipe
from popalign.roles import EndpointSpec

MODELS = ("gpt-4o", "gpt-4o-mini", "llama-3-8b")


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A server that lists the three `MODELS` (an OpenAI-style API, a router, a vLLM with adapters)."""
    yield from serve_scripted(tmp_path, MODELS[0], "--also", MODELS[1], "--also", MODELS[2])


def asked(log: Path) -> list[str]:
    return [json.loads(line)["model"] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow
def test_a_role_asks_for_the_model_it_names(router, tmp_path: Path) -> None:
    url, log = router
    result, out = build(tmp_path, url, "--strategies", "prefix,nparam", "--model", f"default={url}#{MODELS[2]}",
                        "--model", f"large={url}#{MODELS[0]}", "--model", f"small={url}#{MODELS[1]}",
                        tags=["ok", "aaa"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = load(out, "nparam").to_list()
    assert {(row["chosen_model"], row["rejected_model"]) for row in rows} == {(MODELS[0], MODELS[1])}
    assert all(row["chosen"][0]["content"].startswith(f"[{MODELS[0]}] ") for row in rows)
    assert all(row["rejected"][0]["content"].startswith(f"[{MODELS[1]}] ") for row in rows)
    assert {row["chosen_model"] for row in load(out, "prefix").to_list()} == {MODELS[2]}
    assert manifest(out)["roles"] == {"default": MODELS[2], "large": MODELS[0], "small": MODELS[1]}
    assert set(asked(log)) == set(MODELS)

    judged = run_offline(POPALIGN, "judge", out, "--judge-model", f"{url}#{MODELS[0]}", "--no-cache",
                         "--no-progress", HF_HUB_OFFLINE="0")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    assert manifest(out)["judge"]["model"] == MODELS[0]
    assert asked(log)[-1] == MODELS[0]


@pytest.mark.parametrize(
    ("suffix", "says"),
    [("", "serves several models (gpt-4o, gpt-4o-mini, llama-3-8b); name one: {url}#MODEL"),
     ("#gpt-5", "serves no model 'gpt-5' (it lists gpt-4o, gpt-4o-mini, llama-3-8b)")],
)  # fmt: skip
@pytest.mark.slow
def test_an_unnamed_or_unlisted_model_is_refused_before_any_request(router, tmp_path, suffix, says) -> None:
    url, log = router
    line = f"popalign: error: endpoint {url}: {says.format(url=url)}"
    result, out = build(tmp_path, url + suffix, "--strategies", "prefix", tags=["ok"])
    assert (result.returncode, result.stderr.splitlines()[-1]) == (2, line) and not out.exists()
    judged = run_offline(POPALIGN, "judge", tmp_path, "--judge-model", url + suffix, HF_HUB_OFFLINE="0")
    assert judged.returncode == 2
    with pytest.raises(popalign.BackendError) as raised:
        popalign.build(prompts(tmp_path, ["ok"]), strategies="prefix", roles={"default": url + suffix},
                       out=tmp_path / "api", cache=False, progress=False)  # fmt: skip
    assert f"endpoint {url}: {says.format(url=url)}" == str(raised.value)
    assert asked(log) == []  # no chat request reached the server


@pytest.mark.slow
def test_a_recipe_names_the_model_either_way(router, tmp_path: Path) -> None:
    url, log = router
    for role in ({"url": url, "model": MODELS[1]}, {"url": f"{url}#{MODELS[1]}"}):
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"roles": {"default": role}}))
        assert load_recipe(tmp_path / "recipe.yaml").roles["default"] == EndpointSpec((url,), MODELS[1], None, (None,))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"prompts": prompts(tmp_path, ["ok"]).name, "strategies": "prefix", "out": "d",
                                      "roles": {"default": {"url": f"{url}#{MODELS[1]}"}}}))  # fmt: skip
    result = run_offline(POPALIGN, "build", "--recipe", recipe, "--no-cache", "--no-progress", HF_HUB_OFFLINE="0")
    assert result.returncode == 0, result.stderr
    assert manifest(tmp_path / "d")["roles"]["default"] == MODELS[1]
    assert set(asked(log)) == {MODELS[1]}


def test_the_model_after_the_hash_is_parsed_and_checked() -> None:
    spec = EndpointSpec.parse("https://api.openai.com/v1, https://b.example/v1#gpt-4o")
    assert (spec.urls, spec.model) == (("https://api.openai.com/v1", "https://b.example/v1"), "gpt-4o")
    assert EndpointSpec.parse("http://h:1#m", model="m").model == "m"
    with pytest.raises(ConfigError, match="names the model 'a' after '#' and 'b' as its model"):
        EndpointSpec.parse("http://h:1#a", model="b")
    with pytest.raises(ConfigError, match="nothing after '#'"):
        EndpointSpec.parse("http://h:1#")
    assert EndpointSpec.parse("http://alice:pw@h:1#org/model").urls == ("http://h:1",)
