"""Publish a built folder to the Hub as a version, and list the versions of a repository.

A version is one commit on `main` holding every rebuilt config's Parquet under `data/<strategy>/`, the card, the
manifest, the recipe and templates, and the version history; then the tag `v<version>` on that commit. Configs
not rebuilt keep their files from earlier versions, and the card says in which version each last changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoFile, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from popalign.config import LICENSE_FILE
from popalign.dataset.card import card_files, write_card_and_manifest
from popalign.dataset.flags import applied_rows, read_flags, review_record
from popalign.dataset.folder import (
    CARD,
    MANIFEST,
    RECIPE,
    Manifest,
    config_dir,
    config_prefix,
    copy_quality,
    copy_recipe,
    open_manifest,
    staged,
)
from popalign.dataset.integrity import check_build
from popalign.dataset.quality import QUALITY_DIR
from popalign.dataset.rows import keep_sides, read_outcomes, require_rows, write_configs
from popalign.errors import (
    ForeignRepositoryError,
    PopAlignError,
    PublishError,
    VersionExistsError,
    VersionTooOldError,
)

VERSIONS = "popalign_versions.json"
#: What a repository may hold before popalign's first version (what the Hub creates with a repo).
FRESH_REPO_FILES = {".gitattributes", CARD}
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_REPO_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


@dataclass
class PushResult:
    """What `push_dataset` published."""

    repo_id: str
    version: str
    commit: str
    rebuilt: list[str]
    kept: list[str]


def parse_version(text: str) -> tuple[int, int, int]:
    """`X.Y.Z` (a leading `v` is allowed) as a tuple that sorts like the versions."""
    match = _VERSION.match(text.removeprefix("v"))
    if not match:
        raise PublishError(f"version {text!r}: expected X.Y.Z, for example 1.0.0")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def check_repo_id(repo_id: str) -> str:
    """`ORG/NAME` as the Hub allows it: ASCII letters, digits, `-`, `_` and `.`, no `--` or `..`, no `.git` at
    the end, at most 96 characters."""
    if not _REPO_ID.match(repo_id):
        raise PublishError(f"repository {repo_id!r}: expected ORG/NAME of ASCII letters, digits, '-', '_' and '.'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = str(err).partition(":")[0].removeprefix("Repo id ").removeprefix("Repo_id ")
        raise PublishError(f"repository {repo_id!r}: not a valid Hub id ({reason})") from err
    return repo_id


def check_publishable(
    repo_id: str, version: tuple[int, int, int], *, tags: set[str], history: list[str], remote: list[str], force: bool
) -> None:
    """The rules that keep a repository's published versions intact, given what it holds: its tags, the versions
    in its history file, and its files.

    >>> check_publishable("org/d", (1, 0, 0), tags={"v1.0.0"}, history=["1.0.0"], remote=[], force=False)
    Traceback (most recent call last):
    popalign.errors.VersionExistsError: org/d: v1.0.0 is already published; pass --force to replace it

    Raises:
        ForeignRepositoryError: no popalign history, and files popalign would not have put there.
        VersionExistsError: the version is tagged and `force` is not given.
        VersionTooOldError: the version is older than the newest, or `force` would replace an older one.
    """
    tag = _name(version)
    if not history:
        foreign = sorted(path for path in remote if path not in FRESH_REPO_FILES and "/" not in path)
        foreign += sorted({path.split("/")[0] + "/" for path in remote if "/" in path})
        if foreign:
            raise ForeignRepositoryError(
                f"{repo_id}: the repository holds files popalign did not publish ({', '.join(foreign[:3])}); "
                "refusing to overwrite it: choose another --repo"
            )
    published = sorted((parse_version(entry) for entry in history), reverse=True)
    if tag in tags and not force:
        raise VersionExistsError(f"{repo_id}: {tag} is already published; pass --force to replace it")
    if tag in tags and published and version != published[0]:
        raise VersionTooOldError(f"{repo_id}: only the newest version ({_name(published[0])}) can be replaced")
    if tag not in tags and published and version < published[0]:
        newest = _name(published[0])
        raise VersionTooOldError(f"{repo_id}: {tag} is older than the newest published version {newest}")


def push_dataset(
    folder: Path,
    repo_id: str,
    version: str,
    *,
    token: str | None,
    private: bool = False,
    force: bool = False,
    flags: str = "ignore",
) -> PushResult:
    """Publish `folder` (written by `popalign build`) as version `version` of the dataset repo `repo_id`; with
    `flags="apply"`, a copy of it without the pairs readers flagged bad and with those flagged swapped exchanged.

    >>> push_dataset(Path("popalign-data"), "org/popalign", "1.0.0", token=None)  # doctest: +SKIP

    Raises:
        VersionExistsError: the version is published and `force` is not given.
        VersionTooOldError: the version is older than the newest, or `force` would replace an older one.
        ForeignRepositoryError: the repository holds files popalign did not publish.
        PublishError: a bad repository id or version, or the Hub or network failed (nothing is half-published).
        NotABuildError: `folder` is not a build.
        TamperedBuildError: a file of `folder` is not what its manifest records (nothing is asked of the Hub).
    """
    check_repo_id(repo_id)
    number = parse_version(version)
    version = ".".join(map(str, number))
    tag = f"v{version}"
    manifest = open_manifest(folder)
    check_build(folder, manifest)  # before anything is asked of the Hub
    if flags == "apply" and read_flags(folder).flags:
        with tempfile.TemporaryDirectory(prefix="popalign-flags-") as staging:
            applied = applied_copy(folder, manifest, Path(staging) / folder.name)
            return push_dataset(applied, repo_id, version, token=token, private=private, force=force)
    api = HfApi(token=token)
    exists = True
    tags: dict[str, str] = {}
    main: str | None = None
    remote: list[str] = []
    history: list[dict[str, Any]] = []
    previous = None
    with _hub_errors(repo_id, f"nothing of {tag} was published: rerun to publish it whole"):
        try:
            refs = api.list_repo_refs(repo_id, repo_type="dataset")
        except RepositoryNotFoundError:
            exists = False  # created once every check below has passed
        else:
            tags = {ref.name: ref.target_commit for ref in refs.tags}
            main = next((ref.target_commit for ref in refs.branches if ref.name == "main"), None)
            tree = api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)
            remote = [entry.path for entry in tree if isinstance(entry, RepoFile)]
            history = _read_json(repo_id, VERSIONS, main, token) if VERSIONS in remote else []
            previous = _published_manifest(repo_id, main, token) if history else None
    check_publishable(repo_id, number, tags=set(tags), history=[entry["version"] for entry in history],
                      remote=remote, force=force)  # fmt: skip

    rebuilt = [name for name, config in manifest.configs.items() if config.rows]
    merged, kept = _merge_configs(manifest, previous, rebuilt, version)
    merged = replace(merged, digests=None)  # the local folder's: a release may keep configs of an earlier one
    if tag not in tags and main and history and history[-1]["version"] == version and merged == previous:
        # an earlier push of this very folder committed, then stopped before its tag: tag that commit
        with _hub_errors(repo_id, f"{tag} is committed ({main[:12]}) but not tagged: rerun the push to tag it"):
            api.create_tag(repo_id, tag=tag, revision=main, repo_type="dataset", tag_message=f"popalign {tag}")
        return PushResult(repo_id=repo_id, version=version, commit=main, rebuilt=rebuilt, kept=kept)
    history = [entry for entry in history if entry["version"] != version]
    history.append(
        {
            "version": version,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "rebuilt": rebuilt,
            "configs": {name: config.rows for name, config in merged.configs.items()},
        }
    )
    with tempfile.TemporaryDirectory(prefix="popalign-push-") as staging:
        try:
            operations = _stage(folder, Path(staging), merged, history, rebuilt, repo_id, remote)
        except OSError as err:
            missing = os.path.relpath(err.filename, folder) if err.filename else "a file"
            raise PublishError(f"{folder}: {missing} is missing or unreadable; rebuild the folder") from err
        with _hub_errors(repo_id, f"nothing of {tag} was published: rerun to publish it whole"):
            if not exists:
                api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            commit = api.create_commit(
                repo_id,
                repo_type="dataset",
                operations=operations,
                commit_message=f"popalign {tag}",
                commit_description=f"Rebuilt: {', '.join(rebuilt)}." + (f" Kept: {', '.join(kept)}." if kept else ""),
                revision="main",
                parent_commit=main,
            )
    # The Hub cannot move a tag: a replaced version's tag is deleted and at once made again on the new commit,
    # which is already complete; a push stopped between the two is finished by running it again
    with _hub_errors(repo_id, f"{tag} is committed ({commit.oid[:12]}) but not tagged: rerun the push to tag it"):
        if tag in tags:
            api.delete_tag(repo_id, tag=tag, repo_type="dataset")
        api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type="dataset", tag_message=f"popalign {tag}")
    return PushResult(repo_id=repo_id, version=version, commit=commit.oid, rebuilt=rebuilt, kept=kept)


def applied_copy(folder: Path, manifest: Manifest, out: Path) -> Path:
    """A copy of the checked build at `folder`, written to `out`, with its readers' flags applied: pairs flagged
    bad left out (dropped as `flagged-bad`), pairs flagged swapped with their sides exchanged; its card's review
    table describes the pairs as read, and says what was applied."""
    flags = read_flags(folder)
    outcomes = read_outcomes(folder, manifest)
    review = review_record(folder, manifest.configs, {name: outcome.rows for name, outcome in outcomes.items()})
    left_out = swapped = 0
    for outcome in outcomes.values():
        rows, turned = applied_rows(outcome.rows, flags)
        if dropped := len(outcome.rows) - len(rows):
            outcome.dropped["flagged-bad"] += dropped
        outcome.rows, left_out, swapped = rows, left_out + dropped, swapped + turned
    require_rows(outcomes, folder)
    assert review is not None  # there are flags
    review = replace(review, applied={"left_out": left_out, "swapped": swapped})
    with staged(out) as staging:
        copy_quality(folder, staging)
        written = write_configs(outcomes, staging, manifest.max_shard_size, manifest.test_size)
        copy_recipe(folder, staging)
        applied = replace(manifest, configs=keep_sides(written, manifest.configs), review=review)
        write_card_and_manifest(applied, staging, out)
    return out


def list_versions(repo_id: str, *, token: str | None) -> list[dict[str, Any]]:
    """Every published version, newest first: its tag, commit, and configs with their row counts, read from the
    manifest at that tag."""
    check_repo_id(repo_id)
    api = HfApi(token=token)
    versions = []
    with _hub_errors(repo_id, "cannot list its versions"):
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        main = next((ref.target_commit for ref in refs.branches if ref.name == "main"), None)
        tagged = {ref.name.removeprefix("v") for ref in refs.tags}
        if main and api.file_exists(repo_id, VERSIONS, repo_type="dataset", revision=main):
            newest = _read_json(repo_id, VERSIONS, main, token)[-1]
            if newest["version"] not in tagged:  # a push stopped between its commit and its tag
                versions.append(
                    {"version": newest["version"], "commit": main, "configs": newest["configs"],
                     "changed": list(newest["rebuilt"]), "untagged": True}
                )  # fmt: skip
        for ref in refs.tags:
            if not _VERSION.match(ref.name.removeprefix("v")):
                continue
            manifest = _published_manifest(repo_id, ref.name, token)
            configs = {name: config for name, config in manifest.configs.items() if config.rows}
            versions.append(
                {
                    "version": ref.name.removeprefix("v"),
                    "commit": ref.target_commit,
                    "configs": {name: config.rows for name, config in configs.items()},
                    "changed": [name for name, config in configs.items() if config.changed_in == ref.name[1:]],
                }
            )
    return sorted(versions, key=lambda entry: parse_version(entry["version"]), reverse=True)


def _name(number: tuple[int, int, int]) -> str:
    return "v" + ".".join(map(str, number))


def _merge_configs(
    manifest: Manifest, previous: Manifest | None, rebuilt: list[str], version: str
) -> tuple[Manifest, list[str]]:
    """The manifest of the new version: rebuilt configs from `manifest`, the others as previously published."""
    configs = {name: replace(manifest.configs[name], changed_in=version) for name in rebuilt}
    kept = []
    for name, config in (previous.configs if previous else {}).items():
        if name not in configs and config.rows:
            configs[name] = config
            kept.append(name)
    order = list(manifest.configs) + [name for name in configs if name not in manifest.configs]
    merged = replace(manifest, configs={name: configs[name] for name in order if name in configs})
    if previous:  # the roles and models of kept configs, where this build has no such role
        merged = replace(
            merged,
            roles=previous.roles | manifest.roles,
            model_notes=previous.model_notes | manifest.model_notes,
            identities=previous.identities | manifest.identities,
            sent=previous.sent | manifest.sent,
        )
    return merged, kept


def _published_manifest(repo_id: str, revision: str | None, token: str | None) -> Manifest:
    """The manifest of a published version, refused in one line where a field of it is not of its type."""
    try:
        return Manifest.from_dict(_read_json(repo_id, MANIFEST, revision, token))
    except ValueError as err:
        raise PublishError(f"{repo_id}@{revision}: its {MANIFEST} is not popalign's ({err})") from err


def _stage(
    folder: Path,
    staging: Path,
    manifest: Manifest,
    history: list[dict[str, Any]],
    rebuilt: list[str],
    repo_id: str,
    remote: list[str],
) -> list[CommitOperationAdd | CommitOperationDelete]:
    """Write what the commit holds under `staging` and return its operations: additions, plus deletions of
    files a rebuilt config (or the templates) no longer has."""
    for name in rebuilt:
        shutil.copytree(config_dir(folder, name), config_dir(staging, name))
    for extra in ("templates", QUALITY_DIR):
        if (folder / extra).is_dir():
            shutil.copytree(folder / extra, staging / extra)
    if (folder / RECIPE).is_file():
        shutil.copy2(folder / RECIPE, staging / RECIPE)
    (staging / MANIFEST).write_text(
        json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (staging / VERSIONS).write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
    for name, text in card_files(manifest, repo_id=repo_id, versions=history).items():
        (staging / name).write_text(text, encoding="utf-8")
    added = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file())
    replaced = (
        "templates/",
        LICENSE_FILE,  # a version with a chosen license has none
        *(config_prefix(name) for name in rebuilt),
        *(f"{QUALITY_DIR}/{name}_" for name in rebuilt),
    )
    stale = [path for path in remote if path.startswith(replaced) and path not in added]
    return [CommitOperationAdd(path, str(staging / path)) for path in added] + [
        CommitOperationDelete(path) for path in stale
    ]


def _read_json(repo_id: str, filename: str, revision: str | None, token: str | None) -> Any:
    path = hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision, token=token)
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextmanager
def _hub_errors(repo_id: str, state: str) -> Iterator[None]:
    """Turn a Hub or network failure into one line naming the repository and the state it is left in."""
    try:
        yield
    except PopAlignError:
        raise
    except OfflineModeIsEnabled as err:
        raise PublishError(f"{repo_id}: HF_HUB_OFFLINE=1 is set; unset it to reach the Hub") from err
    except RepositoryNotFoundError as err:
        raise PublishError(f"{repo_id}: no such dataset repository (or no access to it)") from err
    except EntryNotFoundError as err:
        raise PublishError(f"{repo_id}: a version's {MANIFEST} is missing; not a popalign repository?") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        hint = " (check --token, HF_TOKEN or `hf auth login`)" if status in (401, 403) else ""
        raise PublishError(f"{repo_id}: the Hub answered HTTP {status}{hint}; {state}") from err
    except (httpx2.HTTPError, OSError) as err:
        raise PublishError(f"{repo_id}: network failure ({type(err).__name__}); {state}") from err
