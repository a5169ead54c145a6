"""Publishing versions: `popalign push` / `build --push-to` against the test Hub-protocol server (write path), and
`load_dataset` / `popalign versions` through olah, a third-party Hub mirror serving the same git repositories
(read path). The data is the embedded SmolLM2 build of the session, rebuilt per strategy set from its cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet
import pytest

from helpers import POPALIGN, run_offline
from hub_server import serve_hub, serve_olah

pytestmark = pytest.mark.slow
TOKEN = "hf_testsecret_9f3a1c"
REPO = "org/popalign"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """The Hub-protocol server (writes) and olah (reads) over one folder of git repositories."""
    work = tmp_path_factory.mktemp("hub")
    with serve_hub(work / "root", TOKEN) as write_url, serve_olah(work / "root", work / "olah") as read_url:
        yield write_url, read_url, work / "root"


def hub_env(url: str, home: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(home)}


def push(hub: tuple[str, str, Path], folder: Path, version: str, *extra: str, token: str = TOKEN, repo: str = REPO):
    home = folder.parent / "hf-home"
    return run_offline(POPALIGN, "push", folder, "--repo", repo, "--release", version, "--token", token, *extra,
                       **hub_env(hub[0], home))  # fmt: skip


def build(embedded_build: tuple[Path, object], out: Path, strategies: str, *extra: str, **env: str):
    """A build of `strategies` on the embedded model, answered from the session build's cache."""
    cache = embedded_build[0].parent / "cache"
    result = run_offline(
        POPALIGN, "build", "--limit", 4, "--strategies", strategies, "--out", out,
        "--cache-dir", cache, "--no-progress", *extra, **env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert " 0 generated" in result.stdout
    return result


def load(read_url: str, home: Path, config: str, revision: str) -> list[dict]:
    """`load_dataset` as a user writes it, in a fresh process pointed at the mirror."""
    code = (
        "import datasets, json, sys\n"
        f"ds = datasets.load_dataset({REPO!r}, {config!r}, revision={revision!r}, split='train')\n"
        "print(json.dumps(ds.to_list()))\n"
    )
    env = hub_env(read_url, home)
    result = run_offline(sys.executable, "-c", code, **env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def parquet_rows(folder: Path, config: str) -> list[dict]:
    return pyarrow.parquet.read_table(folder / "data" / config).to_pylist()


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", root / "datasets" / REPO, *args], capture_output=True, text=True).stdout


def test_versions_round_trip(hub, embedded_build, tmp_path: Path) -> None:
    write_url, read_url, root = hub
    printed = []
    v1 = build(embedded_build, tmp_path / "v1", "prefix,demon,elicitive")
    first = push(hub, tmp_path / "v1", "1.0.0")
    assert first.returncode == 0, first.stderr
    assert "published org/popalign v1.0.0" in first.stdout
    # build --push-to takes the Hub token from the environment, like the rest of the Hub stack
    env = hub_env(write_url, tmp_path / "home") | {"HF_TOKEN": TOKEN}
    v2 = build(embedded_build, tmp_path / "v2", "nparam", "--push-to", REPO, "--release", "1.1.0", **env)
    assert "published org/popalign v1.1.0" in v2.stdout
    assert "kept from earlier versions: prefix, demon, elicitive" in v2.stdout
    printed += [v1.stdout, v1.stderr, first.stdout, first.stderr, v2.stdout, v2.stderr]

    # each tag loads exactly its own data, through a third-party mirror
    home = tmp_path / "reader"
    for config in ("prefix", "demon", "elicitive"):
        assert load(read_url, home, config, "v1.0.0") == parquet_rows(tmp_path / "v1", config)
        assert load(read_url, home, config, "v1.1.0") == parquet_rows(tmp_path / "v1", config)
    assert load(read_url, home, "nparam", "v1.1.0") == parquet_rows(tmp_path / "v2", "nparam")
    missing = run_offline(
        sys.executable, "-c", f"import datasets; datasets.load_dataset({REPO!r}, 'nparam', revision='v1.0.0')",
        **hub_env(read_url, home),
    )  # fmt: skip
    assert missing.returncode != 0 and "nparam" in missing.stderr

    # one commit per version, tagged; main is the newest
    tags = dict(line.split() for line in git(root, "for-each-ref", "--format=%(refname:short) %(*objectname)",
                                              "refs/tags").splitlines())  # fmt: skip
    assert set(tags) == {"v1.0.0", "v1.1.0"}
    assert git(root, "rev-parse", "main").strip() == tags["v1.1.0"]
    assert git(root, "rev-parse", f"{tags['v1.1.0']}^").strip() == tags["v1.0.0"]
    card = git(root, "show", "v1.1.0:README.md")
    assert "`v1.0.0`" in card and "`v1.1.0`" in card and 'revision="v1.1.0"' in card
    assert "| `prefix` |" in card and "v1.0.0 |" in card  # the card says where each config last changed
    assert "config_name: nparam" in card and "dataset_info:" in card
    assert git(root, "show", "v1.0.0:popalign_recipe.yaml").startswith("limit: 4\nstrategies:")  # the bundled set
    assert "prefix.jinja" in git(root, "ls-tree", "-r", "--name-only", "v1.0.0", "templates")

    listing = run_offline(POPALIGN, "versions", REPO, **hub_env(read_url, home))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    rows = {name: len(parquet_rows(tmp_path / folder, name)) for folder, name in [("v1", "prefix"), ("v2", "nparam")]}
    assert lines[0].startswith("v1.1.0") and f"nparam {rows['nparam']}*" in lines[0]
    assert f"prefix {rows['prefix']}," in lines[0]
    assert lines[1].startswith("v1.0.0") and f"prefix {rows['prefix']}*" in lines[1] and "nparam" not in lines[1]
    everything = load(read_url, home, "all", "v1.1.0")  # the default config spans kept and rebuilt configs
    assert sorted(row["strategy"] for row in everything) == sorted(
        name for folder, names in [("v1", ("prefix", "demon", "elicitive")), ("v2", ("nparam",))]
        for name in names for _ in parquet_rows(tmp_path / folder, name)
    )  # fmt: skip
    printed += [listing.stdout, listing.stderr]

    # a published version is refused, replaced with --force (the newest only), never rewound
    again = push(hub, tmp_path / "v2", "1.1.0")
    assert again.returncode == 2
    assert (
        again.stderr.strip() == "popalign: error: org/popalign: v1.1.0 is already published; pass --force to replace it"
    )
    older = push(hub, tmp_path / "v2", "1.0.5")
    assert "v1.0.5 is older than the newest published version v1.1.0" in older.stderr
    oldest = push(hub, tmp_path / "v1", "1.0.0", "--force")
    assert "only the newest version (v1.1.0) can be replaced" in oldest.stderr
    forced = push(hub, tmp_path / "v1", "1.1.0", "--force")
    assert forced.returncode == 0, forced.stderr
    assert git(root, "rev-parse", "v1.1.0^{commit}").strip() == git(root, "rev-parse", "main").strip()
    assert git(root, "rev-parse", "v1.1.0^{commit}").strip() != tags["v1.1.0"]
    assert git(root, "rev-parse", "v1.0.0^{commit}").strip() == tags["v1.0.0"]
    printed += [again.stderr, older.stderr, oldest.stderr, forced.stdout, forced.stderr]

    # the token is in no line printed and in no file of any version (git objects and LFS objects)
    stored = git(root, "log", "-p", "--all") + "".join(
        p.read_bytes().decode("utf-8", "replace") for p in (root / "datasets" / REPO / ".git" / "lfs").rglob("*")
        if p.is_file()
    )  # fmt: skip
    assert "hf_testsecret" not in stored
    assert all("hf_testsecret" not in text for text in printed)


def test_an_interrupted_push_publishes_nothing_and_a_rerun_publishes_it_whole(
    hub, embedded_build, tmp_path: Path
) -> None:
    write_url, _, root = hub
    build(embedded_build, tmp_path / "d", "prefix,refine")
    before = git(root, "for-each-ref")
    with _dropped(write_url, "commits"):
        failed = push(hub, tmp_path / "d", "2.0.0")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "network failure" in failed.stderr and "nothing of v2.0.0 was published" in failed.stderr
    assert git(root, "for-each-ref") == before  # no new commit on main, no tag
    retried = push(hub, tmp_path / "d", "2.0.0")
    assert retried.returncode == 0, retried.stderr
    assert git(root, "rev-parse", "v2.0.0^{commit}").strip() == git(root, "rev-parse", "main").strip()
    assert {"data/prefix/train-00000-of-00001.parquet", "data/refine/train-00000-of-00001.parquet"} <= set(
        git(root, "ls-tree", "-r", "--name-only", "v2.0.0").split()
    )


@contextmanager
def _dropped(url: str, route: str) -> Iterator[None]:
    """While in the block, the test Hub drops the connection of every request to `route` (commits, tags)."""

    def switch(on: bool) -> None:
        body = json.dumps({"on": on}).encode()
        request = urllib.request.Request(f"{url}/_test/drop-{route}", data=body, method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    switch(True)
    try:
        yield
    finally:
        switch(False)


def test_a_repo_with_another_layout_or_a_bad_token_is_refused(hub, embedded_build, tmp_path: Path) -> None:
    write_url, _, _ = hub
    build(embedded_build, tmp_path / "d", "prefix")
    env = hub_env(write_url, tmp_path / "home")
    code = (
        "from huggingface_hub import HfApi\n"
        f"api = HfApi(token={TOKEN!r})\n"
        "api.create_repo('org/weights', repo_type='dataset')\n"
        "api.upload_file(path_or_fileobj=b'x' * 10, path_in_repo='weights.bin', repo_id='org/weights',"
        " repo_type='dataset')\n"
    )
    assert run_offline(sys.executable, "-c", code, **env).returncode == 0
    refused = run_offline(POPALIGN, "push", tmp_path / "d", "--repo", "org/weights", "--release", "1.0.0",
                          "--token", TOKEN, **env)  # fmt: skip
    assert refused.returncode == 2
    assert "org/weights: the repository holds files popalign did not publish (weights.bin)" in refused.stderr
    wrong = push(hub, tmp_path / "d", "3.0.0", token="hf_wrong_token_77")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "HTTP 401 (check --token, HF_TOKEN or `hf auth login`)" in wrong.stderr
    assert "hf_wrong_token_77" not in wrong.stderr + wrong.stdout
    bad = push(hub, tmp_path / "d", "1.0")
    assert bad.stderr.strip() == "popalign: error: release: expected a version X.Y.Z, got 1.0"


def test_a_forced_push_stopped_before_its_tag_is_listed_and_a_rerun_tags_it(
    hub, embedded_build, tmp_path: Path
) -> None:
    write_url, _, root = hub
    build(embedded_build, tmp_path / "d", "prefix")
    assert push(hub, tmp_path / "d", "5.0.0").returncode == 0
    build(embedded_build, tmp_path / "d2", "prefix,demon")
    with _dropped(write_url, "tags"):
        failed = push(hub, tmp_path / "d2", "5.0.0", "--force")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "v5.0.0 is committed (" in failed.stderr and "but not tagged: rerun the push to tag it" in failed.stderr
    head = git(root, "rev-parse", "main").strip()

    def versions() -> str:
        listing = run_offline(POPALIGN, "versions", REPO, **hub_env(write_url, tmp_path / "home"))
        assert listing.returncode == 0, listing.stderr
        return listing.stdout

    listed = versions()
    assert (
        f"v5.0.0      {head[:12]}" in listed
        and "(untagged: its push stopped before the tag; rerun that push)" in listed
    )
    rerun = push(hub, tmp_path / "d2", "5.0.0")  # no --force needed: it finishes the stopped push
    assert rerun.returncode == 0, rerun.stderr
    assert git(root, "rev-parse", "v5.0.0^{commit}").strip() == head == git(root, "rev-parse", "main").strip()
    assert "untagged" not in versions()


def test_a_refused_push_creates_no_repository(hub, embedded_build, tmp_path: Path) -> None:
    _, _, root = hub
    build(embedded_build, tmp_path / "d", "prefix,demon")
    shutil.rmtree(tmp_path / "d" / "data" / "demon")
    refused = push(hub, tmp_path / "d", "1.0.0", repo="org/never-made")
    assert refused.returncode == 2, refused.stderr
    rows = json.loads((tmp_path / "d" / "popalign_build.json").read_text())["configs"]["demon"]["rows"]
    assert refused.stderr.splitlines() == [
        f"popalign: error: {tmp_path / 'd' / 'data/demon/train-*.parquet'}: demon train holds 0 rows but the manifest "
        f"records {rows}; rebuild the folder"
    ]
    assert not (root / "datasets" / "org" / "never-made").exists()
