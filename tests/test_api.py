"""The Python API: every docstring example of the package runs (doctests, against the test Hub), a build through
`popalign.build` equals the same build through the CLI, and its errors are the named ones."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
import yaml

import popalign
from helpers import HERE, POPALIGN, prompts, run_offline, serve_scripted
from hub_server import serve_hub
from popalign.prompts import Instruction, in_test_split

README = HERE.parent / "README.md"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The scripted endpoint (see scripted_server.py), for the whole module."""
    yield from (url for url, _ in serve_scripted(tmp_path_factory.mktemp("scripted"), "scripted-default"))


@pytest.fixture(scope="module")
def example(server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build of six instructions, `prefix` and `elicitive`, made through the API."""
    folder = tmp_path_factory.mktemp("example")
    built = popalign.build(
        prompts(folder, ["ok", "aaa", "bbb", "ccc", "ddd", "eee"]), strategies=["prefix", "elicitive"],
        roles={"default": server}, out=folder / "example", templates=HERE / "scripted_templates", cache=False,
        progress=False,
    )  # fmt: skip
    assert built.summary is not None and built.summary.outcomes["elicitive"].count == 6
    return built.path


@pytest.mark.slow
def test_every_docstring_example_runs(example: Path, server: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy"  # score and judge rewrite it
    shutil.copytree(example, copy)
    token = "hf_doctestToken_7"
    tested = popalign.build(prompts(tmp_path, ["ok", "aaa", "bbb", "ccc", "ddd", "eee"]), strategies="prefix",
                            roles={"default": server}, out=tmp_path / "tested", test_size=0.34, cache=False,
                            progress=False)  # fmt: skip
    names = {
        "EXAMPLE": str(example), "COPY": str(copy), "SERVER": server, "OUT": str(tmp_path / "o"),
        "TESTED": str(tested.path),
        "PROMPTS": str(prompts(tmp_path, ["ok", "aaa", "bbb", "ccc", "ddd", "eee"])),
        "TEMPLATES": str(HERE / "scripted_templates"), "TINY_MODEL": str(tmp_path / "tiny"), "HUB_TOKEN": token,
    }  # fmt: skip
    with serve_hub(tmp_path / "hub", token) as hub:
        ran = run_offline(sys.executable, HERE / "run_doctests.py", json.dumps(names), cwd=tmp_path, HF_ENDPOINT=hub,
                          HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf-home"))  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads(ran.stdout.splitlines()[-1])
    assert report["failed"] == 0, ran.stdout[-5000:]
    assert report["tried"] >= 30  # the examples of api (every function), build_folder, cache, show, templates, ...
    assert report["shadowed"] == []


@pytest.mark.slow
def test_the_api_and_the_cli_write_the_same_rows(example: Path, server: str, tmp_path: Path) -> None:
    cli = run_offline(
        POPALIGN, "build", "--prompts", prompts(tmp_path, ["ok", "aaa", "bbb", "ccc", "ddd", "eee"]),
        "--strategies", "prefix,elicitive", "--model", f"default={server}", "--out", tmp_path / "cli",
        "--templates", HERE / "scripted_templates", "--no-cache", "--no-progress", HF_HUB_OFFLINE="0",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("6 instructions from prompts.jsonl; strategies: prefix, elicitive\n")
    api, made = popalign.open_build(example), popalign.open_build(tmp_path / "cli")
    assert api.configs == made.configs == ["all", "prefix", "elicitive"]
    for config in api.configs:
        assert api.rows(config).to_list() == made.rows(config).to_list()
    assert api.manifest.configs == made.manifest.configs
    assert api.manifest.to_dict() == json.loads((example / "popalign_build.json").read_text())


def test_the_api_raises_named_errors(example: Path, tmp_path: Path) -> None:
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("mine")
    with pytest.raises(popalign.NotABuildError, match="holds no popalign build"):
        popalign.build(strategies="prefix", out=tmp_path / "stray")
    with pytest.raises(popalign.NotABuildError, match=r"popalign_build\.json is missing"):
        popalign.open_build(tmp_path)
    with pytest.raises(popalign.ShardError, match="merge joins the parts of one sharded build"):
        popalign.merge([example, example], out=tmp_path / "merged")
    with pytest.raises(popalign.ConfigError, match="unknown strategy"):
        popalign.build(strategies="nonsense", out=tmp_path / "x")
    with pytest.raises(popalign.PromptsError, match="prompts file not found"):
        popalign.build(tmp_path / "missing.jsonl", out=tmp_path / "x")
    with pytest.raises(popalign.ConfigError, match="no config 'demon'"):
        popalign.open_build(example).rows("demon")
    assert not (tmp_path / "x").exists() and (tmp_path / "stray" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_the_readme_python_examples_run_as_written(server: str, tmp_path: Path) -> None:
    """The README's "Python API" blocks as a user runs them: the first as written, offline on the embedded model;
    the endpoint one against the scripted endpoint and the test Hub."""
    blocks = [
        block.split("```", 1)[0] for block in README.read_text().split("## Python API", 1)[1].split("```python\n")[1:3]
    ]
    (tmp_path / "readme_api.py").write_text(blocks[0])
    first = run_offline(sys.executable, "readme_api.py", cwd=tmp_path, POPALIGN_CACHE=str(tmp_path / "cache"))
    assert first.returncode == 0, first.stderr
    configs, rows = first.stdout.splitlines()[-2:]
    assert configs == "['all', 'prefix', 'demon']" and rows.split()[0].isdigit() and rows.split()[1] == "smollm2"
    endpoint = 'roles={"default": "http://localhost:8080"},'
    assert endpoint in blocks[1]
    # the scripted server answers by the markers of the tests' templates
    code = blocks[1].replace(
        endpoint, f"roles={{'default': {server!r}}}, templates={str(HERE / 'scripted_templates')!r},"
    )
    (tmp_path / "readme_endpoint.py").write_text(f"import popalign\n{code}")
    token = "hf_readmeApiToken42"
    with serve_hub(tmp_path / "hub", token) as hub:
        env = {"HF_ENDPOINT": hub, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf-home")}  # fmt: skip
        pushed = run_offline(sys.executable, "readme_endpoint.py", cwd=tmp_path, **env)
        again = run_offline(sys.executable, "readme_endpoint.py", cwd=tmp_path, **env)
    assert pushed.returncode == 0, pushed.stderr
    refusal = "my-org/popalign: v1.0.0 is already published; pass --force to replace it"
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].endswith(refusal)
    assert token not in pushed.stdout + pushed.stderr + again.stderr


@pytest.mark.slow
def test_a_test_split_holds_whole_instructions_and_the_card_shows_its_pictures(server: str, tmp_path: Path) -> None:
    texts = [f"Explain topic [{a}{b}]." for a in "abcd" for b in "abcd"]  # 16 instructions
    built = popalign.build(
        prompts(tmp_path, [text.split("[")[1][:2] for text in texts]), strategies=["prefix", "elicitive"],
        roles={"default": server}, out=tmp_path / "d", templates=HERE / "scripted_templates", cache=False,
        progress=False, test_size=0.3, license="cc-by-4.0",
    )  # fmt: skip
    manifest = built.manifest
    assert manifest.test_size == 0.3 and manifest.license == "cc-by-4.0"
    ids = {}
    for config in ("prefix", "elicitive"):
        splits = manifest.configs[config]["splits"]
        assert splits["train"] > 0 and splits["test"] > 0 and sum(splits.values()) == manifest.configs[config]["rows"]
        ids[config] = {split: set(built.rows(config, split)["prompt_id"]) for split in ("train", "test")}
        assert len(built.rows(config, "test")) == splits["test"] and not ids[config]["train"] & ids[config]["test"]
    assert ids["prefix"]["test"] == ids["elicitive"]["test"]  # an instruction is on one side in every config
    assert len(built.rows("all", "test")) == sum(manifest.configs[c]["splits"]["test"] for c in ("prefix", "elicitive"))
    # a word is a token on the scripted server: prefix makes 2 answers of 9 words per instruction, guided elicitive 5
    assert (manifest.configs["prefix"]["tokens"], manifest.configs["elicitive"]["tokens"]) == (16 * 2 * 9, 16 * 45)
    card = (built.path / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "also follows the terms of use of the models" in card
    assert card.count("```mermaid") == 1 and 'prefix_c["M(p+ ⊕ q)' in card and "elicitive_pc" in card
    assert "| 288 |" in card and "| 720 |" in card  # answer tokens per config
    assert 'split="test"' in card and "--dataset_test_split test" in card
    for key, picture in manifest.overview.items():
        assert f"]({picture})" in card and (built.path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    # a judge rewrites the folder and keeps every instruction on its side
    judged = popalign.judge(built, popalign.JudgeOptions(model=server), cache=False, progress=False)
    for config in ("prefix", "elicitive"):
        assert {split: set(judged.rows(config, split)["prompt_id"]) for split in ("train", "test")} == ids[config]
    assert judged.manifest.overview == manifest.overview and judged.manifest.configs["prefix"]["tokens"] == 288
    shown = run_offline(POPALIGN, "show", built.path, "elicitive", "-n", "2", "--where", "judge_verdict!=none",
                        "--where", "chosen~careful", "--width", "80")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("── elicitive · ") == 2 and "[reasoning] - Be exact and complete" in shown.stdout
    assert "judge: chosen" in shown.stdout and shown.stdout.endswith(
        "2 pairs of elicitive meeting judge_verdict!=none and chosen~careful\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize(("share", "empty"), [(0.1, "test"), (0.95, "train")])
def test_every_split_the_card_lists_loads_when_a_share_leaves_one_empty(
    server: str, share: float, empty: str, tmp_path: Path
) -> None:
    """Instructions picked so that `--test-size` puts none of them on one side: the card lists only the other
    split, in `configs:` and `dataset_info` alike, and every config loads each split it lists."""
    tags = [f"t{n}" for n in range(400)]
    kept = [tag for tag in tags if in_test_split(Instruction.from_text(f"Explain tides [{tag}].").prompt_id, share)
            == (empty == "train")][:6]  # fmt: skip
    built = popalign.build(prompts(tmp_path, kept), strategies=["prefix", "elicitive"], roles={"default": server},
                           out=tmp_path / "d", templates=HERE / "scripted_templates", cache=False, progress=False,
                           test_size=share)  # fmt: skip
    card = yaml.safe_load((built.path / "README.md").read_text().split("---")[1])
    for config in card["configs"]:
        listed = [entry["split"] for entry in config["data_files"]]
        assert listed == ["test" if empty == "train" else "train"]
        for split in listed:
            assert len(datasets.load_dataset(str(built.path), config["config_name"], split=split)) > 0
    for info in card["dataset_info"]:
        assert [split["name"] for split in info["splits"]] == listed
    assert not list(built.path.glob(f"data/*/{empty}-*"))


def test_every_type_the_api_page_names_as_popalign_s_imports_from_popalign() -> None:
    """docs/python-api.md names the results and options as `popalign` names: each is one (`popalign.Estimate`)."""
    page = (HERE.parent / "docs" / "python-api.md").read_text()
    named = {name for name in re.findall(r"(?:an?|the) `([A-Z][A-Za-z]+)`", page)}
    assert {"Estimate", "Evaluation"} <= named
    assert [name for name in sorted(named) if name not in popalign.__all__] == []
