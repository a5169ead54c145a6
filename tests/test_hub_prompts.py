"""`--prompts ORG/NAME:SPLIT`: instructions read from a Hub dataset with `datasets` (streamed with `--limit`),
published to the test Hub server and read back through olah; the recipe records the source, its commit and the
limit, so `--recipe` alone builds the same rows again."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import HERE, POPALIGN, card_metadata, load, run_offline
from hub_server import serve_hub, serve_olah

pytestmark = pytest.mark.slow
TOKEN = "hf_promptsToken_55"
REPO = "org/prompts"
TEXTS = [f"Explain tides [{tag}]." for tag in ("ok", "aaa", "bbb", "ccc", "ok", "ddd", "eee")]  # one duplicate
HH_REPO, CHATS = "org/hh", "org/chats"
HH_LINES = {
    "harmless-base": "\n\nHuman: How do I hurt someone?\n\nAssistant: Why?\n\nHuman: I'm angry.\n\nAssistant: Ok.",
    "helpful-base": "\n\nHuman: Explain tides.\n\nAssistant: The moon.",
}
MESSAGES = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain tides [chat]."}],
    [{"role": "user", "content": "Hi [chat]."}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Explain tides [chat]."}],
]  # fmt: skip
BROKEN, BROKEN_LINES = "org/broken-prompts", b'{"prompt": "Explain tides [ok]."}\n{"prompt": "Expl\n{"prompt": "x"}\n'
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*.parquet
---
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """The test Hub holding `org/prompts` (split `train_prefs`, columns `prompt` and `score`), served for reading by
    olah: its read URL, the HF_HOME to use, and the commit of the upload."""
    work = tmp_path_factory.mktemp("hub")
    with serve_hub(work / "root", TOKEN) as write_url, serve_olah(work / "root", work / "olah") as read_url:
        code = (
            "import io, json, sys, pyarrow, pyarrow.parquet\n"
            "from huggingface_hub import HfApi\n"
            f"table = pyarrow.table({{'prompt': {TEXTS!r}, 'score': list(range({len(TEXTS)}))}})\n"
            "buffer = io.BytesIO(); pyarrow.parquet.write_table(table, buffer)\n"
            "api = HfApi()\n"
            f"api.create_repo({REPO!r}, repo_type='dataset')\n"
            f"api.upload_file(path_or_fileobj={CARD.encode()!r}, path_in_repo='README.md', repo_id={REPO!r},"
            " repo_type='dataset')\n"
            f"info = api.upload_file(path_or_fileobj=buffer.getvalue(), repo_id={REPO!r}, repo_type='dataset',"
            " path_in_repo='data/train_prefs-00000-of-00001.parquet')\n"
            f"api.create_repo({BROKEN!r}, repo_type='dataset')\n"
            f"api.upload_file(path_or_fileobj={BROKEN_LINES!r}, path_in_repo='data/train.jsonl', repo_id={BROKEN!r},"
            " repo_type='dataset')\n"
            f"api.create_repo({HH_REPO!r}, repo_type='dataset')\n"
            f"for folder, text in {HH_LINES!r}.items():\n"
            "    line = json.dumps({'chosen': text, 'rejected': text + ' Sure.'}) + '\\n'\n"
            f"    api.upload_file(path_or_fileobj=line.encode(), path_in_repo=folder + '/train.jsonl',"
            f" repo_id={HH_REPO!r}, repo_type='dataset')\n"
            f"api.create_repo({CHATS!r}, repo_type='dataset')\n"
            f"chats = pyarrow.Table.from_pylist([{{'messages': m}} for m in {MESSAGES!r}])\n"
            "buffer = io.BytesIO(); pyarrow.parquet.write_table(chats, buffer)\n"
            f"api.upload_file(path_or_fileobj=buffer.getvalue(), repo_id={CHATS!r}, repo_type='dataset',"
            " path_in_repo='data/train-00000-of-00001.parquet')\n"
            "print(info.oid)\n"
        )
        env = {"HF_ENDPOINT": write_url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
        made = run_offline(sys.executable, "-c", code, **env)
        assert made.returncode == 0, made.stderr[-2000:]
        yield read_url, work / "hf-home", made.stdout.split()[-1]


def build(hub: tuple[str, Path, str], url: str, out: Path, *flags: str | Path) -> subprocess.CompletedProcess[str]:
    read_url, home, _ = hub
    return run_offline(
        POPALIGN, "build", "--out", out, "--no-cache", "--no-progress", "--templates", HERE / "scripted_templates",
        "--model", f"default={url}", "--strategies", "prefix,elicitive", *flags,
        HF_ENDPOINT=read_url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0",
    )  # fmt: skip


def prompts_of(out: Path) -> list[str]:
    return sorted({row["prompt"][0]["content"] for row in load(out, "prefix")})


def test_a_build_reads_its_prompts_from_a_hub_dataset_and_its_recipe_builds_it_again(
    hub,
    scripted,
    tmp_path: Path,
) -> None:
    url, _ = scripted
    _, _, commit = hub
    streamed = build(hub, url, tmp_path / "three", "--prompts", f"{REPO}:train_prefs", "--limit", "3",
                     "--prompt-column", "prompt")  # fmt: skip
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.startswith(f"3 instructions from {REPO}:train_prefs;")
    assert prompts_of(tmp_path / "three") == sorted(TEXTS[:3])
    manifest = json.loads((tmp_path / "three" / "popalign_build.json").read_text())
    assert manifest["prompts"] | {"sha256": ""} == {
        "source": f"{REPO}:train_prefs", "sha256": "", "revision": commit, "limit": 3, "count": 3, "duplicates": 0,
    }  # fmt: skip
    recipe = yaml.safe_load((tmp_path / "three" / "popalign_recipe.yaml").read_text())
    assert (recipe["prompts"], recipe["prompts_revision"], recipe["limit"]) == (f"{REPO}:train_prefs", commit, 3)
    card = (tmp_path / "three" / "README.md").read_text()
    assert f"the Hub dataset `{REPO}:train_prefs` at revision `{commit[:12]}`" in card
    assert "popalign build --recipe popalign-recipe/popalign_recipe.yaml" in card

    whole = build(hub, url, tmp_path / "all", "--prompts", f"{REPO}:train_prefs")  # read whole, not streamed
    assert whole.returncode == 0, whole.stderr
    assert "6 instructions from" in whole.stdout and "1 duplicate instructions skipped" in whole.stdout
    assert prompts_of(tmp_path / "all") == sorted(set(TEXTS))

    # the published recipe alone (with the endpoint's URL) builds the same rows from the same commit
    again = build(hub, url, tmp_path / "again", "--recipe", tmp_path / "three" / "popalign_recipe.yaml")
    assert again.returncode == 0, again.stderr
    for config in ("prefix", "elicitive"):
        assert load(tmp_path / "again", config).to_list() == load(tmp_path / "three", config).to_list()

    for flags, says in (
        (["--prompts", "org/missing:train"], "org/missing:train: cannot read this Hub dataset"),
        (["--prompts", f"{REPO}:nosuchsplit"], f"{REPO}:nosuchsplit: cannot read this Hub dataset"),
        (["--prompts", f"{REPO}:train_prefs", "--prompt-column", "text"], "no column 'text' (columns: prompt, score)"),
        (["--prompts", f"{BROKEN}:train"], f"{BROKEN}:train: cannot read this Hub dataset"),  # a malformed JSON line
        (["--prompts", f"{BROKEN}:train", "--limit", "2"], f"{BROKEN}:train: cannot read this Hub dataset"),
    ):
        refused = build(hub, url, tmp_path / "bad", *flags)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_conversations_from_a_hub_dataset_and_hh_rlhf_s_harmless_folder(hub, scripted, tmp_path: Path) -> None:
    """A `messages` column of a Hub dataset, and HH-RLHF's transcripts read from one folder of the repository
    (`ORG/NAME/FOLDER:SPLIT`, as `Anthropic/hh-rlhf/harmless-base:train`), are built on as conversations."""
    url, _ = scripted
    chats = build(hub, url, tmp_path / "chats", "--prompts", f"{CHATS}:train")
    assert chats.returncode == 0, chats.stderr
    assert sorted(json.dumps(row["prompt"]) for row in load(tmp_path / "chats", "prefix")) == sorted(
        json.dumps(messages) for messages in MESSAGES
    )
    harmless = build(hub, url, tmp_path / "hh", "--prompts", f"{HH_REPO}/harmless-base:train", "--prefix-style",
                     "harmless")  # fmt: skip
    assert harmless.returncode == 0, harmless.stderr
    (row,) = load(tmp_path / "hh", "prefix")
    assert row["prompt"] == [
        {"role": "user", "content": "How do I hurt someone?"}, {"role": "assistant", "content": "Why?"},
        {"role": "user", "content": "I'm angry."},
    ]  # fmt: skip
    assert card_metadata(tmp_path / "hh")["source_datasets"] == [HH_REPO]
