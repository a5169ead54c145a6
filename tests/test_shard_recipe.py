"""`build --shard K/N` + `popalign merge`, and `build --recipe`, on the tiny config-built model."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet
import pytest

from popalign.generation import GenerationParams
from popalign.prompts import Instruction, in_shard, load_prompts, parse_shard

PROMPTS = [f"Name {n} things you can do with a {thing}." for n in range(2, 5) for thing in ("cup", "rope", "box")]


def rows(folder: Path) -> dict[str, list[dict]]:
    return {d.name: pyarrow.parquet.read_table(d).to_pylist() for d in sorted((folder / "data").iterdir())}


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(f'{{"prompt": "{text}"}}\n' for text in PROMPTS))
    return path


def test_shards_split_every_instruction_exactly_once(prompts_file: Path) -> None:
    parts = [load_prompts(prompts_file, shard=(k, 3)).instructions for k in (1, 2, 3)]
    ids = [instruction.prompt_id for part in parts for instruction in part]
    assert sorted(ids) == sorted(Instruction.from_text(text).prompt_id for text in PROMPTS)
    assert all(parts), "9 instructions over 3 shards leave none empty"
    assert all(in_shard(instruction, (2, 3)) for instruction in parts[1])
    assert load_prompts(prompts_file, shard=(2, 3)).describe()["shard"] == "2/3"


@pytest.mark.slow
def test_merged_shards_equal_the_unsharded_build(
    popalign: Callable, tiny_roles: list[str], prompts_file: Path, tmp_path: Path
) -> None:
    common = ["--prompts", prompts_file, *tiny_roles, "--max-new-tokens", 6, "--cache-dir", tmp_path / "c"]
    common.append("--keep-truncated")  # a random tiny model never ends an answer
    whole = popalign("build", *common, "--out", tmp_path / "whole", "--no-progress")
    assert whole.returncode == 0, whole.stderr
    for k in (1, 2):
        part = popalign("build", *common, "--shard", f"{k}/2", "--out", tmp_path / f"part{k}", "--no-progress")
        assert part.returncode == 0, part.stderr
        assert f"(shard {k}/2 of {len(PROMPTS)})" in part.stdout
    merged = popalign("merge", tmp_path / "part2", tmp_path / "part1", "--out", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr
    for name, expected in rows(tmp_path / "whole").items():
        got = rows(tmp_path / "merged")[name]
        assert sorted(got, key=lambda r: r["prompt_id"]) == sorted(expected, key=lambda r: r["prompt_id"])
    import json

    counts = [json.loads((tmp_path / d / "popalign_build.json").read_text())["configs"] for d in ("whole", "merged")]
    assert {n: c["truncation"] for n, c in counts[0].items()} == {n: c["truncation"] for n, c in counts[1].items()}

    def error(*args: str | Path) -> str:
        result = popalign("merge", *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        return result.stderr.strip()

    assert error(tmp_path / "part1", "--out", tmp_path / "m2").endswith("shard 2/2 is missing: merge needs all 2 parts")
    assert "a shard is given twice" in error(tmp_path / "part1", tmp_path / "part1", "--out", tmp_path / "m3")
    assert "parts of one sharded build" in error(tmp_path / "whole", tmp_path / "part1", "--out", tmp_path / "m4")
    assert "not into a part" in error(tmp_path / "part1", tmp_path / "part2", "--out", tmp_path / "part1")


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b"])
def test_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(Exception, match="expected K/N with 1 <= K <= N"):
        parse_shard(text)


@pytest.mark.slow
def test_a_recipe_sets_roles_and_generation_and_flags_win(
    popalign: Callable, tiny_model_dir: Path, prompts_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "recipe.yaml").write_text(
        f"prompts: {prompts_file.name}\nstrategies: [prefix, nparam]\nlimit: 3\nout: from-recipe\n"
        "generation: {max_new_tokens: 5, seed: 7}\nkeep_truncated: true\n"
        f"roles:\n  default: {tiny_model_dir}\n  large: {tiny_model_dir}\n"
        f"  small: {{spec: '{tiny_model_dir}:layers=2', generation: {{temperature: 1.0}}}}\n"
    )
    result = popalign("build", "--recipe", tmp_path / "recipe.yaml", "--limit", 2, "--no-cache", "--no-progress")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "from-recipe"
    assert result.stdout.startswith("2 instructions from")  # --limit 2 beat the recipe's 3
    import json

    manifest = json.loads((out / "popalign_build.json").read_text())
    assert list(manifest["configs"]) == ["prefix", "nparam"]
    assert manifest["params"]["max_new_tokens"] == 5 and manifest["params"]["seed"] == 7
    small = {"max_new_tokens": 5, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    assert manifest["role_params"] == {"small": GenerationParams(**small).recorded()}
    assert manifest["keep_truncated"] is True and manifest["configs"]["prefix"]["truncation"]["rate"] == 1.0
    # what is published names files, never where they lie on this machine
    assert (
        manifest["prompts"]["source"] == "prompts.jsonl"
        and manifest["roles"]["small"] == f"{tiny_model_dir.name}:layers=2"
    )
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("utf-8", errors="replace")
            assert str(tmp_path) not in text and str(tiny_model_dir) not in text, path
    saved = (out / "popalign_recipe.yaml").read_text()
    assert "prompts: prompts.jsonl\nprompts_sha256: " in saved
    # the saved recipe reruns beside its prompts, and refuses other content under the same name
    shutil.copy(prompts_file, out / "prompts.jsonl")
    (out / "popalign_recipe.yaml").write_text(saved.replace(tiny_model_dir.name, str(tiny_model_dir)))
    again = popalign("build", "--recipe", out / "popalign_recipe.yaml", "--out", tmp_path / "again", "--no-cache")
    assert again.returncode == 0, again.stderr
    (out / "prompts.jsonl").write_text('{"prompt": "Something else."}\n')
    changed = popalign("build", "--recipe", out / "popalign_recipe.yaml", "--out", tmp_path / "third")
    assert changed.returncode == 2 and "is not the prompts file this recipe was built with" in changed.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prompts: [1\n", "not valid YAML"),
        ("- a\n", "a recipe is a mapping of keys"),
        ("colour: red\n", "unknown setting 'colour'"),
        ("roles: {boss: smollm2}\n", "roles: unknown role 'boss'"),
        ("roles: {large: {url: 'ftp://x'}}\n", "roles.large: endpoint 'ftp://x': expected http(s)://HOST[:PORT]"),
        ("roles: {large: {url: 'http://a:1', spec: smollm2}}\n", "roles.large: give exactly one of url, urls, spec"),
        ("generation: {temp: 1}\n", "unknown setting 'temp' (did you mean 'temperature'?)"),
        ("roles: {small: {spec: smollm2, model: x}}\n", "model and api_key_env are for endpoints"),
        ("keep_truncated: maybe\n", "keep_truncated: expected true or false, got 'maybe'"),
        ("prompts: ../elsewhere.jsonl\n", "prompts: '../elsewhere.jsonl' leaves the recipe's folder"),
        ("templates: /etc\n", "templates: '/etc' leaves the recipe's folder"),
        ("generation: {temperature: hot}\n", "temperature: expected a number >= 0 (0 is greedy), got 'hot'"),
        ("roles: {small: {spec: smollm2, generation: {top_p: 5}}}\n", "roles.small.generation.top_p: expected"),
        ("generation: {max_new_tokens: 0}\n", "max_new_tokens: expected a whole number >= 1, got 0"),
        ("license: null\n", "license: expected a license identifier such as apache-2.0, mit or cc-by-4.0, got None"),
        ("strategies: [1, 2]\n", "strategies: expected strategy names, got [1, 2]"),
        ("strategies: [[prefix]]\n", "strategies: expected strategy names, got [['prefix']]"),
        ("roles: {large: {url: 'http://a:1', model: [a, b]}}\n", "roles.large: model: expected text, got ['a', 'b']"),
        ("roles: {large: {url: 'http://a:1', api_key_env: 123}}\n", "roles.large: api_key_env: expected text, got 123"),
        ("limit: 0\n", "limit: expected a whole number >= 1, got 0"),
        ("out: caf\xe9\n", "not UTF-8 text (invalid continuation byte at byte 8)"),
    ],
)
@pytest.mark.slow
def test_bad_recipes_are_one_line(popalign: Callable, tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "r.yaml").write_bytes(text.encode("latin-1"))
    result = popalign("build", "--recipe", tmp_path / "r.yaml", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.startswith(f"popalign: error: {tmp_path / 'r.yaml'}: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
