"""The build folder on disk: its file names, reading its manifest, and replacing it whole.

A build (or a scoring or merging pass) is written into a staging folder beside `out`, manifest last; only when
everything is there does the staging folder take `out`'s place, so `out` is at every moment either the old complete
build or the new one. On Linux the swap is one `renameat2(RENAME_EXCHANGE)`; where that is missing it is two
renames, and a run killed between them is repaired by the next command on that folder.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from popalign.config import DEFAULT_LICENSE, LICENSE_FILE, MAX_SHARD_SIZE
from popalign.dataset.quality import QUALITY_DIR
from popalign.dataset.records import (
    ConfigRecord,
    JudgeRecord,
    QualityRecord,
    ReviewRecord,
    ScoreRecord,
    mismatch,
    plain,
)
from popalign.errors import NotABuildError, TamperedBuildError
from popalign.styles import Styles

MANIFEST = "popalign_build.json"
CARD = "README.md"
#: The folder of the configs' Parquet files, and the splits a config can have.
DATA = "data"
SPLITS = ("train", "test")
RECIPE = "popalign_recipe.yaml"
#: Readers' flags (`popalign review`): checked by their own digest, as they change after the build.
FLAGS_FILE = "review_flags.json"
_STAGING = ".popalign-staging"
_OLD = ".popalign-old"
_LOCK = ".popalign-lock"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class Manifest:
    """A build's manifest (`popalign_build.json`), typed: each config's counts, the roles' published model names,
    the generation parameters, the prompt source, the template hashes, and what scoring and judging added.

    >>> manifest = Manifest.from_dict({"configs": {}, "roles": {}, "params": {}, "prompts": {}, "keep_truncated": True})
    >>> again = Manifest.from_dict(manifest.to_dict())
    >>> manifest.styles["elicitive_style"], manifest.to_dict()["keep_truncated"], again == manifest
    ('guided', True, True)
    """

    configs: dict[str, ConfigRecord]
    roles: dict[str, str]
    params: dict[str, Any]
    prompts: dict[str, Any]
    template_hashes: dict[str, str] = field(default_factory=dict)
    backend: str = ""
    model_notes: dict[str, str] = field(default_factory=dict)
    #: By role: what identified its model (`ModelIdentity.recorded`), and for an endpoint role how its settings
    #: were sent (its server kind and request fields).
    identities: dict[str, dict[str, str]] = field(default_factory=dict)
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    role_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: `Styles.recorded()` and where `prefix` put its contrast (`prefix_placement`), flat in the file.
    styles: dict[str, str] = field(default_factory=dict)
    keep_truncated: bool = False
    max_shard_size: int = MAX_SHARD_SIZE
    license: str = DEFAULT_LICENSE
    card: dict[str, str] = field(default_factory=dict)  # `Card.recorded()`: the license's name, languages, title
    test_size: float = 0.0
    overview: dict[str, str] = field(default_factory=dict)
    score: ScoreRecord | None = None
    quality: dict[str, QualityRecord] | None = None
    judge: JudgeRecord | None = None
    review: ReviewRecord | None = None
    #: role to `IN,OUT` per million tokens, where the build was given prices (`costs.recorded_prices`)
    prices: dict[str, str] | None = None
    #: sha256 of each file the build wrote but the manifest, card and license (written again at each push), by
    #: path in the folder: what `check_build` compares before anything passes the folder on (`file_digests`)
    digests: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The typed manifest of a manifest's JSON.

        Raises:
            ValueError: a field of the wrong type, or a config without counts (naming the field).
        """
        names = {f.name for f in fields(cls)} - {"extra", "styles"}
        _check_fields(data, {name: hint for name, hint in get_type_hints(cls).items() if name in names})
        styles = Styles().recorded() | {"prefix_placement": "user"}  # what a build before a style existed used
        styles |= {key: value for key, value in data.items() if key in styles}
        score, quality, judge, review = (data.get(key) for key in ("score", "quality", "judge", "review"))
        records = {
            "configs": {name: ConfigRecord.from_dict(config, name) for name, config in data["configs"].items()},
            "score": None if score is None else ScoreRecord.from_dict(score),
            "quality": None if quality is None else {
                name: QualityRecord.from_dict(report, f"quality: config {name!r}") for name, report in quality.items()
            },
            "judge": None if judge is None else JudgeRecord.from_dict(judge),
            "review": None if review is None else ReviewRecord.from_dict(review),
        }  # fmt: skip
        return cls(
            **{key: value for key, value in data.items() if key in names and key not in records},
            **records,
            styles=styles,
            extra={key: value for key, value in data.items() if key not in names and key not in styles},
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written to disk (fields a build did not set are left out, as on disk)."""
        data = {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("extra", "styles")}
        data |= self.styles
        unset = {"test_size": 0.0}
        kept = {key: value for key, value in data.items() if value is not None}
        return {key: value for key, value in kept.items() if key not in unset or value != unset[key]} | self.extra


def _check_fields(data: dict[str, Any], hints: dict[str, Any]) -> None:
    """Refuse a manifest field whose value is not of its declared type (a record's own fields are checked as it is
    read)."""
    for name, hint in hints.items():
        if name in data and (wrong := mismatch(data[name], hint, repr(name))):
            raise ValueError(f"field {wrong}")


def open_manifest(out: Path) -> Manifest:
    """The typed manifest of a built folder (see `read_manifest`).

    Raises:
        NotABuildError: `out` holds no build, or its manifest is unreadable, truncated or not a build's.
        TamperedBuildError: a field of the manifest is not of its type.
    """
    try:
        return Manifest.from_dict(read_manifest(out))
    except ValueError as err:
        raise TamperedBuildError(f"{out / MANIFEST}: {err}; rebuild the folder") from err


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but its manifest, card, license and readers' flags, by path in the
    folder."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in (MANIFEST, CARD, LICENSE_FILE, FLAGS_FILE):
            with path.open("rb") as file:
                digests[relative] = hashlib.file_digest(file, "sha256").hexdigest()
    return digests


def read_manifest(out: Path) -> dict[str, Any]:
    """The manifest (`popalign_build.json`) of a built folder: roles, parameters, template hashes, counts.

    Raises:
        NotABuildError: `out` holds no build, or its manifest is unreadable, truncated or not a build's.
    """
    recover(out)
    path = out / MANIFEST
    if not path.is_file():
        raise NotABuildError(f"{out}: no popalign build here ({MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotABuildError(f"{path}: unreadable manifest ({err}); rebuild the folder") from err
    except OSError as err:
        raise NotABuildError(f"{path}: cannot read the manifest ({err.strerror})") from err
    keys = ("configs", "roles", "params", "prompts")
    missing = [key for key in keys if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise NotABuildError(f"{path}: not a popalign manifest ({missing[0]!r} is missing); rebuild the folder")
    return manifest


def config_dir(out: Path, name: str) -> Path:
    """Where a config's Parquet files lie: `data/<config>/`."""
    return out / DATA / name


def split_file(out: Path, name: str, split: str, index: int, count: int) -> Path:
    """Shard `index` of `count` of one split of a config: `data/<config>/<split>-0000K-of-0000N.parquet`."""
    return config_dir(out, name) / f"{split}-{index:05d}-of-{count:05d}.parquet"


#: The name `split_file` gives a shard, with its split, index and count.
SHARD_NAME = re.compile(r"(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet")


def split_pattern(name: str, split: str) -> str:
    """The pattern of one split's files, as the card's `configs:` gives it to `load_dataset`."""
    return f"{DATA}/{name}/{split}-*"


def config_prefix(name: str) -> str:
    """The repository path every file of a config starts with."""
    return f"{DATA}/{name}/"


def config_files(out: Path, name: str, splits: tuple[str, ...] = SPLITS) -> list[Path]:
    """The Parquet files of one config of a build (of `splits`), `train` shards first, then `test` ones, in order."""
    return [path for split in splits for path in sorted(config_dir(out, name).glob(f"{split}-*.parquet"))]


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write a build's manifest into `folder` (last, when a build is staged: a folder with one is complete)."""
    write_json(folder / MANIFEST, manifest.to_dict())


def write_json(path: Path, data: Any) -> None:
    """Write JSON next to `path` and rename it into place, so a reader never sees half of it."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text next to `path` and rename it into place, so a reader never sees half of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def check_out(out: Path) -> None:
    """Refuse, before any work is done, an output path that cannot become a build folder.

    Raises:
        NotABuildError: `out` is a file, a folder of something else, or cannot be created.
    """
    if out.is_symlink():  # the swap would replace the link, not the folder it names
        raise NotABuildError(f"{out}: a symbolic link (to {os.readlink(out)}); give the folder itself as the output")
    recover(out)
    if out.exists() and not out.is_dir():
        raise NotABuildError(f"{out}: output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise NotABuildError(f"{out}: folder is not empty and holds no popalign build; choose another --out")
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotABuildError(f"{out}: cannot create the output folder ({ancestor} is not a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise NotABuildError(f"{out}: cannot create the output folder ({ancestor} is not writable)")


@contextmanager
def claimed(out: Path) -> Iterator[None]:
    """Hold `out` for one command (build, score, judge, merge) from its start to its end: another command on the
    same folder meanwhile is refused. The lock is the system's advisory lock on a file beside `out`, so it ends
    with the process however that ends; the file is removed when the command ends normally.

    Raises:
        NotABuildError: another popalign command holds `out`.
    """
    if sys.platform == "win32":  # no advisory locks there: the atomic swap still keeps `out` whole
        yield
        return
    import fcntl

    path = _sibling(out, _LOCK)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise NotABuildError(f"{path}: popalign's lock file for {out} is not a file here; remove it, then rerun")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NotABuildError(f"{out}: cannot create the output folder's parent ({err.strerror})") from err
    while True:
        try:
            handle = path.open("a")
        except OSError as err:
            raise NotABuildError(f"{path}: cannot write popalign's lock file for {out} ({err.strerror})") from err
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise NotABuildError(
                f"{out}: in use by another popalign command; wait for it to end, or give another output folder"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break  # the lock is on the file the path names, not one a finishing command just removed
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # still holding the lock: whoever opens the path next makes a new file
        handle.close()


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` to write a whole build into; when the block ends without error it replaces
    `out` in one step. A failed block leaves `out` as it was.

    >>> with staged(Path("popalign-data")) as folder:  # doctest: +SKIP
    ...     write_json(folder / MANIFEST, manifest)
    """
    check_out(out)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(out, _STAGING)
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap(staging, out)


def recover(out: Path) -> None:
    """Finish what a run killed during the two-rename swap left: put the old build back if `out` is gone, and
    remove the old copy once the new build is in place."""
    old = _sibling(out, _OLD)
    if old.is_dir():
        if out.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, out)


def _swap(staging: Path, out: Path) -> None:
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(staging, out)
    elif _exchange(staging, out):
        shutil.rmtree(staging)  # now the old build
    else:
        old = _sibling(out, _OLD)
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux `renameat2`); False where the system or file system cannot."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _sibling(out: Path, suffix: str) -> Path:
    absolute = out.absolute()
    return absolute.parent / f".{absolute.name}{suffix}"


def copy_recipe(source: Path, folder: Path, *, drop_shard: bool = False) -> None:
    """The recipe and templates of a build (a part's, without its shard, for a merged build) into `folder`."""
    if (source / RECIPE).is_file():
        recipe = yaml.safe_load((source / RECIPE).read_text(encoding="utf-8"))
        if drop_shard:
            recipe.pop("shard", None)
        (folder / RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    if (source / "templates").is_dir():
        shutil.copytree(source / "templates", folder / "templates")


def copy_quality(source: Path, folder: Path) -> None:
    """A build's charts into `folder` for a rewrite (score, judge): the other step's charts stay, and the
    rewriting step draws its own anew over them."""
    if (source / QUALITY_DIR).is_dir():
        shutil.copytree(source / QUALITY_DIR, folder / QUALITY_DIR)
