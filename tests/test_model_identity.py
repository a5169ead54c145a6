"""What is recorded is what ran. A model is identified by what it computes with: a local folder or GGUF file by a
fingerprint of its files, a served model by what its server says of its weights; a model changed under one name
has its answers generated again, never read from the cache. Each sampling setting reaches a server's sampler in
the field that server kind reads, "off" included where it has defaults of its own, or is refused before any
request. The stand-in servers answer as each kind does (`tests/scripted_server.py --kind`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from helpers import HERE, POPALIGN, load, manifest, prompts, run_offline, save_tiny_model, serve_scripted
from popalign import model_identity
from popalign.model_identity import fingerprint
from popalign.resources import embedded_model_path

TAGS = ["ok", "plain"]


@contextmanager
def served(folder: Path, kind: str, weights: str, model: str = "served-model") -> Iterator[tuple[str, Path]]:
    """A scripted server answering as `kind`, serving `weights` under the name `model`."""
    folder.mkdir(parents=True, exist_ok=True)
    yield from serve_scripted(folder, model, "--kind", kind, "--weights", weights)


def build(folder: Path, model: str, out: str, *flags: str | Path, cache: bool = True, **env: str):
    """A cached (or `cache=False`: uncached) prefix build of two instructions into `folder/out`."""
    caching = ["--cache-dir", folder / "cache"] if cache else ["--no-cache"]
    result = run_offline(
        POPALIGN, "build", "--prompts", prompts(folder, TAGS), "--out", folder / out, *caching, "--no-progress",
        "--templates", HERE / "scripted_templates", "--model", f"default={model}", "--strategies", "prefix", *flags,
        **({"HF_HUB_OFFLINE": "0"} | env),
    )  # fmt: skip
    return result


def sides(folder: Path) -> list[tuple[str, str]]:
    rows = load(folder, "prefix")
    return sorted((row["chosen"][0]["content"], row["rejected"][0]["content"]) for row in rows)


@pytest.mark.parametrize(
    ("kind", "evidence"),
    [("vllm", "vLLM root"), ("tgi", "TGI model_sha"), ("sglang", "SGLang model path and weight_version")],
)
@pytest.mark.slow
def test_a_served_model_whose_reported_weights_change_is_asked_again(kind: str, evidence: str, tmp_path: Path) -> None:
    with served(tmp_path / "v1", kind, "v1") as (url, _):
        first = build(tmp_path, url, "one")
    assert first.returncode == 0, first.stderr
    assert all("(weights v1)" in chosen for chosen, _ in sides(tmp_path / "one"))
    with served(tmp_path / "v2", kind, "v2") as (url, _):
        again = build(tmp_path, url, "two")
        fresh = build(tmp_path, url, "fresh", cache=False)
    assert again.returncode == 0 and fresh.returncode == 0, again.stderr + fresh.stderr
    assert sides(tmp_path / "two") == sides(tmp_path / "fresh")
    assert all("(weights v2)" in chosen and "(weights v2)" in rejected for chosen, rejected in sides(tmp_path / "two"))
    assert "model served-model changed since its answers were cached" in again.stderr
    assert "4 answers generated again: their model changed since they were cached" in again.stdout
    identity = manifest(tmp_path / "two")["identities"]["default"]
    assert (identity["identified_by"] == evidence and "v2" in identity["weights"]) or kind == "tgi"
    assert manifest(tmp_path / "two")["identities"] != manifest(tmp_path / "one")["identities"]


@pytest.mark.slow
def test_a_served_path_is_published_by_its_file_name_and_a_name_alone_is_said(tmp_path: Path) -> None:
    path = "/home/someone/models/qwen3-8b-q4.gguf"  # llama.cpp's server names its model by the path it was given
    with served(tmp_path / "llama", "llamacpp", "v1", model=path) as (url, _):
        result = build(tmp_path, url, "d")
    assert result.returncode == 0, result.stderr
    rows = load(tmp_path / "d", "prefix")
    assert {row["chosen_model"] for row in rows} == {"qwen3-8b-q4.gguf"}
    written = "".join(p.read_text() for p in (tmp_path / "d").rglob("*") if p.suffix in (".json", ".md", ".yaml"))
    assert "/home/someone" not in written and "qwen3-8b-q4.gguf" in written
    identity = manifest(tmp_path / "d")["identities"]["default"]
    assert identity["identified_by"] == "llama.cpp file size and parameter count"
    recipe = yaml.safe_load((tmp_path / "d" / "popalign_recipe.yaml").read_text())
    assert recipe["roles"]["default"] == {"endpoint_model": "qwen3-8b-q4.gguf", "weights": identity["weights"]}
    with served(tmp_path / "openai", "openai", "v1") as (url, _):
        result = build(tmp_path, url, "named")
    assert result.returncode == 0, result.stderr
    card = (tmp_path / "named" / "README.md").read_text()
    fingerprint = manifest(tmp_path / "named")["sent"]["default"]["system_fingerprints"]
    assert "identified by name only" in card and len(fingerprint) == 1 and f"`{fingerprint[0]}`" in card


@pytest.mark.parametrize(
    ("kind", "flags", "used"),
    [
        ("vllm", [], {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "temperature": 0.7, "top_p": 0.9}),
        ("sglang", ["--top-k", "5"], {"top_k": 5, "min_p": 0.0}),
        ("llamacpp", [], {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}),
        ("llamacpp", ["--repetition-penalty", "1.3"], {"repeat_penalty": 1.3, "top_k": 0}),
        ("tgi", ["--top-p", "1"], {"top_p": 1.0, "repetition_penalty": 1.0}),
        ("tgi", ["--frequency-penalty", "0.5"], {"frequency_penalty": 0.5, "repetition_penalty": 1.0}),
    ],
)
@pytest.mark.slow
def test_each_setting_reaches_the_servers_sampler_as_it_reads_it(
    kind: str, flags: list[str], used: dict, tmp_path: Path
) -> None:
    with served(tmp_path / "s", kind, "v1") as (url, log):
        result = build(tmp_path, url, "d", *flags)
    assert result.returncode == 0, result.stderr
    samplers = [json.loads(line)["sampler"] for line in log.read_text().splitlines()]
    assert samplers and all(sampler.items() >= used.items() for sampler in samplers), samplers[0]
    sent = manifest(tmp_path / "d")["sent"]["default"]
    assert sent["honoured"] == "as sent" and sent["server"] in (tmp_path / "d" / "README.md").read_text()
    if kind == "llamacpp":  # it reads repeat_penalty, not repetition_penalty
        assert "repetition_penalty" not in sent["fields"] and sent["fields"]["repeat_penalty"] == used["repeat_penalty"]
    assert "Sampling settings as sent" in (tmp_path / "d" / "README.md").read_text()


@pytest.mark.parametrize(
    ("kind", "flags", "says"),
    [
        ("tgi", ["--top-k", "40"], "top_k (it has no such field)"),
        ("tgi", ["--presence-penalty", "0.5"], "presence_penalty (it turns presence_penalty into a repetition"),
        ("tgi", ["--min-p", "0.1"], "min_p"),
        ("openai", ["--repetition-penalty", "1.2"], "repetition_penalty"),
        ("llamacpp", ["--thinking-budget", "100"], "thinking_budget (only vLLM reads"),
    ],
)
@pytest.mark.slow
def test_a_setting_a_server_cannot_honour_is_refused_before_any_request(
    kind: str, flags: list[str], says: str, tmp_path: Path
) -> None:
    with served(tmp_path / "s", kind, "v1") as (url, log):
        result = build(tmp_path, url, "d", *flags)
    assert result.returncode != 0 and not (tmp_path / "d").exists()
    (line,) = [line for line in result.stderr.splitlines() if "cannot honour" in line]
    assert says in line and "served-model" in line
    assert not log.exists() or not log.read_text()  # no chat request was sent


def test_the_api_refuses_it_alike(tmp_path: Path) -> None:
    import popalign

    with served(tmp_path / "s", "openai", "v1") as (url, log), pytest.raises(popalign.ConfigError, match="top_k"):
        popalign.build(prompts(tmp_path, TAGS), out=tmp_path / "d", roles={"default": url}, strategies=["prefix"],
                       templates=HERE / "scripted_templates", top_k=20, cache=False, progress=False)  # fmt: skip
    assert not log.exists() or not log.read_text()


def test_a_fingerprint_reads_headers_and_every_tensor_and_not_where_or_when(tmp_path: Path, monkeypatch) -> None:
    import torch
    from safetensors.torch import save_file

    monkeypatch.setattr(model_identity, "WHOLE_FILE", 1024)  # read the weights as a large file's are
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"a": torch.zeros(4096), "b": torch.ones(4096)}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    first = fingerprint(folder)
    copy = shutil.copytree(folder, tmp_path / "elsewhere")
    os.utime(copy / "model.safetensors", (1, 1))
    assert fingerprint(copy) == first  # the same weights elsewhere, touched: the same model
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # the end of the last tensor, as training rewrites every element
    (folder / "model.safetensors").write_bytes(bytes(data))
    assert fingerprint(folder) != first
    (copy / "config.json").write_text('{"rope_theta": 1}')
    assert fingerprint(copy) != first
    gguf = embedded_model_path()
    assert fingerprint(gguf).startswith("sha256:") and fingerprint(gguf) == fingerprint(gguf)


@pytest.mark.slow
def test_a_model_trained_again_into_its_folder_is_built_anew(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "trained")
    first = build(tmp_path, str(model), "one", "--max-new-tokens", "8", "--keep-truncated")
    assert first.returncode == 0, first.stderr
    save_tiny_model(model, seed=1)  # trained again into the same folder
    again = build(tmp_path, str(model), "two", "--max-new-tokens", "8", "--keep-truncated")
    fresh = build(tmp_path, str(model), "fresh", "--max-new-tokens", "8", "--keep-truncated", cache=False)
    assert again.returncode == 0 and fresh.returncode == 0, again.stderr + fresh.stderr
    assert sides(tmp_path / "two") == sides(tmp_path / "fresh") != sides(tmp_path / "one")
    assert "answers generated again" in again.stdout
    saved = [yaml.safe_load((tmp_path / out / "popalign_recipe.yaml").read_text()) for out in ("one", "two")]
    weights = manifest(tmp_path / "two")["identities"]["default"]["weights"]
    assert saved[1]["roles"]["default"] == {"spec": "trained", "weights": weights} != saved[0]["roles"]["default"]


@pytest.mark.slow
def test_a_gguf_file_whose_weights_change_is_built_anew(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    shutil.copy(embedded_model_path(), model)
    flags = ["--max-new-tokens", "12", "--keep-truncated", "--temperature", "0"]
    first = build(tmp_path, str(model), "one", *flags)
    assert first.returncode == 0, first.stderr
    with model.open("r+b") as handle:  # new weights for one attention tensor, as training writes them
        handle.read(4)
        _, spans = model_identity._gguf_layout(handle, model.stat().st_size)
        start, end = spans[2]
        handle.seek(start)
        weights = bytearray(handle.read(end - start))
        handle.seek(start)
        handle.write(bytes(value ^ 0x11 for value in weights))
    again = build(tmp_path, str(model), "two", *flags)
    fresh = build(tmp_path, str(model), "fresh", *flags, cache=False)
    assert again.returncode == 0 and fresh.returncode == 0, again.stderr + fresh.stderr
    assert "model model.gguf changed since its answers were cached" in again.stderr
    assert sides(tmp_path / "two") == sides(tmp_path / "fresh") != sides(tmp_path / "one")


def hub_snapshot(cache: Path, repo: str, commit: str, seed: int) -> None:
    """A Hub model as the Hugging Face cache holds it after a download: `refs/main` and the snapshot's files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    save_tiny_model(folder / "snapshots" / commit, seed=seed)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)


@pytest.mark.slow
def test_a_hub_model_runs_at_a_commit_and_main_moving_is_a_new_model(tmp_path: Path) -> None:
    hub, first, second = tmp_path / "hub", "a" * 40, "b" * 40
    hub_snapshot(hub, "org/tiny", first, seed=0)
    flags = ["--max-new-tokens", "8", "--keep-truncated"]
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub)}
    one = build(tmp_path, "org/tiny", "one", *flags, **env)
    assert one.returncode == 0, one.stderr
    assert manifest(tmp_path / "one")["identities"]["default"] == {"identified_by": "Hub commit", "weights": first}
    assert f"org/tiny@{first}" in (tmp_path / "one" / "popalign_recipe.yaml").read_text()
    assert {row["chosen_model"] for row in load(tmp_path / "one", "prefix")} == {"org/tiny"}
    hub_snapshot(hub, "org/tiny", second, seed=1)  # main moved on
    two = build(tmp_path, "org/tiny", "two", *flags, **env)
    assert two.returncode == 0, two.stderr
    assert "answers generated again" in two.stdout and sides(tmp_path / "two") != sides(tmp_path / "one")
    pinned = build(tmp_path, f"org/tiny@{first}", "pinned", *flags, **env)
    assert pinned.returncode == 0, pinned.stderr
    assert sides(tmp_path / "pinned") == sides(tmp_path / "one") and " 0 generated" in pinned.stdout


@pytest.mark.slow
def test_a_model_trained_again_into_its_folder_is_evaluated_anew(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    texts = [f"Explain topic {n} [eval]." for n in range(4)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": text}) + "\n" for text in texts))
    built = run_offline(POPALIGN, "build", "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "d", "--no-cache",
                        "--no-progress", "--model", f"default={url}", "--strategies", "prefix", "--test-size", "0.5",
                        HF_HUB_OFFLINE="0")  # fmt: skip
    assert built.returncode == 0, built.stderr
    model, reference = save_tiny_model(tmp_path / "trained"), save_tiny_model(tmp_path / "reference", seed=2)

    def evaluate(out: str, *flags: str):
        return run_offline(
            POPALIGN, "evaluate", "--build", tmp_path / "d", "--model", f"trained={model}", "--reference", reference,
            "--judge-model", url, "--max-new-tokens", "8", "--out", tmp_path / out, "--cache-dir", tmp_path / "cache",
            "--no-progress", *flags, HF_HUB_OFFLINE="0",
        )  # fmt: skip

    def answers(out: str) -> list[str]:
        records = (tmp_path / out / "answers.jsonl").read_text().splitlines()
        return [json.loads(line)["answer"] for line in records]

    assert evaluate("first").returncode == 0
    save_tiny_model(model, seed=1)  # trained again into the same folder
    again, fresh = evaluate("again"), evaluate("fresh", "--no-cache")
    assert again.returncode == 0 and fresh.returncode == 0, again.stderr + fresh.stderr
    assert answers("again") == answers("fresh") != answers("first")
    assert "answers generated again" in again.stdout
    reports = [json.loads((tmp_path / out / "evaluation.json").read_text()) for out in ("first", "again")]
    assert reports[0]["identities"]["trained"] != reports[1]["identities"]["trained"]
    assert reports[0]["identities"]["reference"] == reports[1]["identities"]["reference"]
