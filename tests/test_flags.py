"""Readers' flags (`popalign review`): the file popalign owns and checks, flags that survive a rebuild of the same
pairs and turn stale where answers changed, what applying them does to rows, what the card reports, and the
page's bad input."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from helpers import POPALIGN, run_offline
from popalign.dataset.flags import (
    FLAGS_FILE,
    Flag,
    Flags,
    applied_rows,
    pair_digest,
    read_flags,
    review_record,
    write_flags,
)
from popalign.errors import ConfigError, TamperedBuildError
from popalign.review import bind, needs_token, render_page


def row(prompt_id: str, chosen: str = "A careful answer.", rejected: str = "A vague one.", verdict=None) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"Question {prompt_id}?"}], "prompt_id": prompt_id,
        "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": rejected}],
        "chosen_model": "big", "rejected_model": "small", "swapped": False, "judge_verdict": verdict,
        "strategy": "prefix",
    }  # fmt: skip


def flag(reader: str, given_on: dict, mark: str, note: str = "") -> Flag:
    return Flag(reader, "prefix", given_on["prompt_id"], pair_digest(given_on), mark, note)


def test_flags_are_written_whole_and_a_hand_edit_is_refused_in_one_line(tmp_path: Path) -> None:
    flags = Flags([flag("ana", row("p1"), "bad", "off topic"), flag("bo", row("p1"), "good")])
    write_flags(tmp_path, flags)
    assert read_flags(tmp_path) == Flags(sorted(flags.flags, key=lambda f: f.key))
    assert not list(tmp_path.glob("*.partial"))
    data = json.loads((tmp_path / FLAGS_FILE).read_text())
    data["flags"][0]["mark"] = "good"  # a reader's bad pair turned good by hand
    (tmp_path / FLAGS_FILE).write_text(json.dumps(data))
    with pytest.raises(TamperedBuildError) as caught:
        read_flags(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / FLAGS_FILE}: its content is not what popalign wrote (its sha256 differs); remove it to start "
        "the review again"
    )
    (tmp_path / FLAGS_FILE).write_text("{not json")
    with pytest.raises(TamperedBuildError, match="unreadable"):
        read_flags(tmp_path)


def test_a_flag_survives_a_rebuild_of_the_same_pair_and_turns_stale_where_its_answers_changed() -> None:
    kept, changed = row("p1"), row("p2")
    flags = Flags([flag("ana", kept, "bad"), flag("ana", changed, "swapped")])
    rebuilt = [row("p1"), row("p2", chosen="Another answer.")]  # p1 is the same pair again, p2 is not
    assert list(flags.current("prefix", rebuilt)) == ["p1"]
    rows, swapped = applied_rows(rebuilt, flags)
    assert [r["prompt_id"] for r in rows] == ["p2"] and swapped == 0  # the stale swap is not acted on


def test_applying_flags_leaves_out_bad_pairs_and_swaps_sides_and_models() -> None:
    rows = [row("p1"), row("p2"), row("p3")]
    flags = Flags([flag("ana", rows[0], "bad"), flag("ana", rows[1], "swapped"), flag("bo", rows[2], "good")])
    applied, swapped = applied_rows(rows, flags)
    assert [r["prompt_id"] for r in applied] == ["p2", "p3"] and swapped == 1
    assert applied[0]["chosen"] == rows[1]["rejected"] and applied[0]["chosen_model"] == "small"
    assert applied[0]["swapped"] is True and applied[1] == rows[2]
    # one reader's bad outweighs another's good; swapped needs every reader of the pair to say so
    both = Flags([flag("ana", rows[2], "good"), flag("bo", rows[2], "bad")])
    assert applied_rows(rows[2:], both)[0] == []
    split = Flags([flag("ana", rows[2], "good"), flag("bo", rows[2], "swapped")])
    assert applied_rows(rows[2:], split) == ([rows[2]], 0)


def test_the_review_record_counts_reads_marks_and_agreement_between_readers_and_with_the_judge(
    tmp_path: Path,
) -> None:
    rows = [row("p1", verdict="chosen"), row("p2", verdict="chosen"), row("p3", verdict="rejected"), row("p4")]
    flags = [
        flag("ana", rows[0], "good"), flag("bo", rows[0], "good"),  # readers agree, and agree with the judge
        flag("ana", rows[1], "swapped"), flag("bo", rows[1], "good"),  # readers differ; bo agrees with the judge
        flag("ana", rows[2], "swapped"),  # agrees with the judge's rejected
        flag("ana", rows[3], "bad"),  # not judged: counts in chosen-better, not in agreement with the judge
        Flag("ana", "prefix", "gone", "0" * 32, "good"),  # a pair a rebuild dropped: stale
    ]  # fmt: skip
    write_flags(tmp_path, Flags(flags))
    record = review_record(tmp_path, ["prefix", "demon"], {"prefix": rows, "demon": []})
    assert record is not None and record.readers == ["ana", "bo"] and record.stale == 1
    prefix = record.configs["prefix"]
    assert (prefix.read, prefix.marks) == (4, {"good": 3, "bad": 1, "swapped": 2})
    assert prefix.chosen_better == 0.5 and prefix.readers_agree == (1, 2) and prefix.judge_agrees == (4, 5)
    assert list(record.configs) == ["prefix"]
    assert review_record(tmp_path / "none", ["prefix"], {"prefix": rows}) is None


def test_the_page_holds_user_text_as_data_and_fetches_nothing() -> None:
    hostile = "</script><script>alert(1)</script> {{ 7*7 }} \u2028"
    page = render_page({"pairs": [{"chosen": hostile}], "build": "b"})
    start = page.index('<script id="review-data" type="application/json">') + len(
        '<script id="review-data" type="application/json">'
    )
    block = page[start : page.index("</script>", start)]
    assert json.loads(block)["pairs"][0]["chosen"] == hostile  # the whole text, as data, inside its block
    assert "http://" not in page and "https://" not in page and " src=" not in page and "@import" not in page
    assert "default-src 'none'" in page  # the browser itself refuses anything from elsewhere


def test_a_port_in_use_is_refused_in_one_line_and_only_this_machine_goes_without_a_token() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            bind("127.0.0.1", port)
    assert str(caught.value) == f"--port {port}: cannot listen on 127.0.0.1 (in use); pick another with --port"
    assert not needs_token("127.0.0.1") and not needs_token("::1") and not needs_token("localhost")
    assert needs_token("0.0.0.0") and needs_token("192.168.1.20") and needs_token("my-host.example")


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda folder: None, "no popalign build here (popalign_build.json is missing)"),
        (lambda folder: (folder / "popalign_build.json").write_text("{"), "unreadable manifest"),
    ],
)
def test_review_of_a_folder_that_is_not_a_build_is_one_line(setup, expected: str, tmp_path: Path) -> None:
    folder = tmp_path / "not-a-build"
    folder.mkdir()
    setup(folder)
    for flags in ([], ["--html", str(tmp_path / "page.html")]):
        result = run_offline(POPALIGN, "review", folder, *flags)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert expected in result.stderr and not (tmp_path / "page.html").exists()
