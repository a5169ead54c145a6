"""`push`, `merge` and `export` pass on only what a build wrote: each tampered copy of a scripted build (a Parquet file
cut, garbage, of another schema, of another config or its rows replaced at the same count; an edited template or
recipe; a manifest that lies or whose fields are of the wrong type; a link, an extra file, a config named like a path)
is refused in one line naming the file, by all three, before the Hub is asked anything or anything is written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet
import pytest

import popalign
from helpers import POPALIGN, build, run_offline, tags
from popalign import PublishError, TamperedBuildError
from popalign.dataset.folder import open_manifest
from popalign.dataset.integrity import check_build

TRAIN = "data/prefix/train-00000-of-00001.parquet"


def edit_manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(copy: Path) -> None:
        data = json.loads((copy / "popalign_build.json").read_text())
        edit(data["configs"])
        (copy / "popalign_build.json").write_text(json.dumps(data))

    return change


def edit_fields(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(copy: Path) -> None:
        data = json.loads((copy / "popalign_build.json").read_text())
        edit(data)
        (copy / "popalign_build.json").write_text(json.dumps(data))

    return change


def swap_configs(copy: Path) -> None:
    (copy / "data" / "prefix").rename(copy / "data" / "swap")
    (copy / "data" / "elicitive").rename(copy / "data" / "prefix")
    (copy / "data" / "swap").rename(copy / "data" / "elicitive")


def append(relative: str, text: str) -> Callable[[Path], None]:
    def change(copy: Path) -> None:
        with (copy / relative).open("a") as file:
            file.write(text)

    return change


def rewrite_parquet(edit: Callable[[pyarrow.Table], pyarrow.Table]) -> Callable[[Path], None]:
    def change(copy: Path) -> None:
        pyarrow.parquet.write_table(edit(pyarrow.parquet.read_table(copy / TRAIN)), copy / TRAIN)

    return change


def link_template(copy: Path) -> None:
    secret = copy.parent / "outside-secret.txt"
    secret.write_text("not for the Hub")
    (copy / "templates" / "prefix.jinja").unlink()
    (copy / "templates" / "prefix.jinja").symlink_to(secret)


def rename_config(configs: dict) -> None:
    configs["../../outside-secret"] = configs.pop("prefix")


def cut_both_counts(configs: dict) -> None:
    configs["prefix"]["rows"] = 1
    configs["prefix"]["dataset_info"]["splits"][0]["num_examples"] = 1


@pytest.fixture
def part(scripted, tmp_path: Path) -> tuple[Path, int]:
    """One part of a sharded scripted build (prefix and elicitive) and its prefix row count."""
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix,elicitive", "--shard", "1/2", tags=tags(8))
    assert result.returncode == 0, result.stderr
    return out, open_manifest(out).configs["prefix"]["rows"]


def cases(rows: int) -> dict[str, tuple[Callable[[Path], None], str, str]]:
    """Name: (how the copy is tampered, the file the error names, what it says)."""
    manifest = "popalign_build.json"
    return {
        "rows-0": (edit_manifest(lambda c: c["prefix"].update(rows=0)), "data/prefix",
                   "holds files but the manifest records no rows"),
        "info-lies": (edit_manifest(lambda c: c["prefix"]["dataset_info"]["splits"][0].update(num_examples=1)),
                      manifest, "config 'prefix': its dataset_info splits differ from its row counts"),
        "both-counts-lie": (edit_manifest(cut_both_counts), TRAIN, f"prefix train holds {rows} rows but the manifest "
                            "records 1"),
        "no-dropped": (edit_manifest(lambda c: c["prefix"].pop("dropped")), manifest,
                       "config 'prefix' has no drop counts"),
        "splits-lie": (edit_manifest(lambda c: c["prefix"].update(splits={"train": rows, "test": 1})), manifest,
                       f"config 'prefix': its split counts do not add up to its {rows} rows"),
        "path-name": (edit_manifest(rename_config), manifest,
                      "config '../../outside-secret' is not a strategy (known: prefix, demon, elicitive, nparam, "
                      "leaderboard, refine, bestofn, teacher, temperature)"),
        "no-data": (lambda copy: shutil.rmtree(copy / "data" / "prefix"), "data/prefix/train-*.parquet",
                    f"prefix train holds 0 rows but the manifest records {rows}"),
        "one-row": (rewrite_parquet(lambda table: table.slice(0, 1)), TRAIN,
                    f"prefix train holds 1 rows but the manifest records {rows}"),
        "other-schema": (rewrite_parquet(lambda table: table.drop_columns(["score"])), TRAIN,
                         "its columns are not popalign's row schema"),
        "before-thinking": (rewrite_parquet(lambda table: table.drop_columns(["chosen_thinking", "rejected_thinking"])),
                            TRAIN, "written by an earlier popalign (no `chosen_thinking` column)"),
        "garbage": (lambda copy: (copy / TRAIN).write_bytes(b"PAR1 garbage"), TRAIN,
                    "not a readable Parquet file"),
        "linked-template": (link_template, "templates/prefix.jinja",
                            "a symbolic link; a build holds only its own files"),
        "extra-file": (lambda copy: (copy / "data" / "prefix" / "notes.txt").write_text("x"), "data/prefix/notes.txt",
                       "a file popalign did not write"),
        "swapped-configs": (swap_configs, TRAIN, "holds 'elicitive' rows in the prefix config"),
        "first-row-copies": (rewrite_parquet(lambda table: table.take([0] * table.num_rows)), TRAIN,
                             "its content is not what the build wrote (its sha256 differs)"),
        "edited-template": (append("templates/prefix.jinja", "\nAlways agree."), "templates/prefix.jinja",
                            "its content is not what the build wrote (its sha256 differs)"),
        "edited-recipe": (append("popalign_recipe.yaml", "\nstrategies: [demon]\n"), "popalign_recipe.yaml",
                          "its content is not what the build wrote (its sha256 differs)"),
        "no-digests": (edit_fields(lambda m: m.pop("digests")), manifest,
                       "records no file digests (written by an earlier popalign)"),
        "configs-list": (edit_fields(lambda m: m.update(configs=list(m["configs"]))), manifest,
                         "field 'configs' is a list, not an object"),
        "role-number": (edit_fields(lambda m: m["roles"].update(default=5)), manifest,
                        "field 'roles'['default'] is a number, not text"),
        "negative-drop": (edit_manifest(lambda c: c["prefix"]["dropped"].update(duplicate=-3)), manifest,
                          "config 'prefix': its 'duplicate' drop count -3 is not a count"),
        "renumbered": (lambda copy: (copy / TRAIN).rename(copy / "data/prefix/train-00001-of-00002.parquet"),
                       "data/prefix", "its train shards are not numbered 0..N-1 of N"),
    }  # fmt: skip


@pytest.mark.slow
def test_push_merge_and_export_refuse_every_tampered_copy_in_one_line(part: tuple[Path, int], tmp_path: Path) -> None:
    out, rows = part
    check_build(out, open_manifest(out))  # the build as written passes
    with pytest.raises(PublishError) as untouched:  # and its push goes on to the Hub (unreachable here)
        popalign.push(out, repo_id="org/popalign", version="1.0.0")
    assert not isinstance(untouched.value, TamperedBuildError)
    for name, (change, file, says) in cases(rows).items():
        copy = tmp_path / name
        shutil.copytree(out, copy, symlinks=True)
        change(copy)
        for entry, keywords in ((popalign.push, {"repo_id": "org/popalign", "version": "1.0.0"}),
                                (popalign.merge, {"out": tmp_path / "merged"}),
                                (popalign.export, {"out": tmp_path / "exported"})):  # fmt: skip
            with pytest.raises(TamperedBuildError) as refused:
                entry([copy, out] if entry is popalign.merge else copy, **keywords)
            assert str(refused.value).startswith(f"{copy / file}: {says}"), name
            assert str(refused.value).endswith("; rebuild the folder") and "\n" not in str(refused.value), name
        assert not (tmp_path / "merged").exists() and not (tmp_path / "exported").exists()
    # and the command line says the same in one line, exit status 2
    copy = tmp_path / "one-row"
    pushed = run_offline(POPALIGN, "push", copy, "--repo", "org/popalign", "--release", "1.0.0", "--token", "hf_x")
    merged = run_offline(POPALIGN, "merge", copy, out, "--out", tmp_path / "merged")
    exported = run_offline(POPALIGN, "export", copy, "--out", tmp_path / "exported")
    says = f"{copy / TRAIN}: prefix train holds 1 rows but the manifest records {rows}; rebuild the folder"
    says = f"popalign: error: {says}\n"
    assert (pushed.returncode, pushed.stderr) == (2, says)
    assert (merged.returncode, merged.stderr) == (2, says)
    assert (exported.returncode, exported.stderr) == (2, says)
