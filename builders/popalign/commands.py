"""The settings of every command besides `build` (whose are `config.BuildConfig`), declared the same way: one
frozen dataclass per command, whose fields are its own settings (typed and checked, `declarations.setting`) and its
groups of settings (`ScoreOptions`, `JudgeOptions`, `Endpoints`, by `group`). A setting two commands share is
declared once and reused (`shared`), with its help and check. The command's flags (`cli.add_settings`), a command
recipe's keys (`recipe.load_command_recipe`) and the Python API's keywords (`popalign.score(..., batch_size=8)`)
come from these declarations, so all three refuse a bad value with the same line.

>>> ScoreCommand.of(build="data", batch_size="0")
Traceback (most recent call last):
...
popalign.errors.ConfigError: batch_size: expected a whole number >= 1, got 0
>>> JudgeCommand.of(build="data", judge_model="http://localhost:8080", concurrency=4).endpoints.concurrency
4
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from popalign.config import BuildConfig, Endpoints, JudgeOptions, Push, ScoreOptions, check_cache_outside
from popalign.dataset.flags import is_reader
from popalign.declarations import (
    FLAG,
    PATH,
    POSITIVE,
    TEXT,
    Check,
    check_fields,
    checked,
    declared,
    key_of,
    one_of,
    setting,
    unknown_setting,
)
from popalign.errors import ConfigError
from popalign.export import FORMATS
from popalign.generation import LOCAL_MAX_NEW_TOKENS
from popalign.scoring import SCORE_BATCH_SIZE
from popalign.show import Condition, parse_condition


def shared(cls: type, name: str, **changes: Any) -> Any:
    """The declaration of `cls`'s setting `name` for another command: the same key, help and check (`default` or
    `help` changed where given)."""
    item = next(entry for entry in fields(cls) if entry.name == name)
    metadata = dict(item.metadata) | {key: value for key, value in changes.items() if key != "default"}
    return field(default=changes.get("default", item.default), metadata=metadata)


def group(cls: type, *, title: str, only: tuple[str, ...] | None = None, required: bool = False) -> Any:
    """A field holding a group of settings (`cls`), given whole or by its flat keys; `only` limits the keys a
    command takes; a `required` group must be given (its own check says how)."""
    metadata = {"group": cls, "title": title, "only": only}
    if required:
        return field(metadata=metadata)
    return field(default_factory=cls, metadata=metadata)


def groups(cls: type) -> list[Field[Any]]:
    """The fields of a command's settings that are groups."""
    return [item for item in fields(cls) if "group" in item.metadata]


def group_keys(item: Field[Any]) -> dict[str, str]:
    """The flat keys a command's group takes, with their fields in the group."""
    only = item.metadata["only"]
    return {
        key_of(entry): entry.name for entry in declared(item.metadata["group"]) if only is None or key_of(entry) in only
    }


def command_fields(cls: type) -> dict[str, Field[Any]]:
    """Every flat key a command takes, its own settings' then its groups', with its declaration."""
    own = {key_of(item): item for item in declared(cls)}
    for item in groups(cls):
        group_fields = {entry.name: entry for entry in declared(item.metadata["group"])}
        own |= {key: group_fields[name] for key, name in group_keys(item).items()}
    return own


def command_keys(cls: type) -> list[str]:
    """Every flat key a command takes."""
    return list(command_fields(cls))


class CommandSettings:
    """What every command's settings share: `of` builds them from flat keys (and whole groups), as
    `BuildConfig.of` does for `build`, and each value is checked as it is declared."""

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def of(cls, **settings: Any) -> Any:
        """The command's settings from flat keys (`batch_size=8`, `concurrency=4`, `judge_model=URL`) and/or whole
        groups (`endpoints=Endpoints(...)`, `judge={"model": URL}`); a setting whose key is not its field's name
        is also taken by the name (`models` for `model`); every value is checked, and a key the command does not
        take is refused with the nearest one it does."""
        own = {key_of(item): item.name for item in declared(cls)} | {item.name: item.name for item in declared(cls)}
        parts = {item.name: item for item in groups(cls)}
        owner = {key: (item.name, name) for item in parts.values() for key, name in group_keys(item).items()}
        given: dict[str, Any] = {}
        flat: dict[str, dict[str, Any]] = {name: {} for name in parts}
        for key, value in settings.items():
            if key in own:
                given[own[key]] = value
            elif key in parts:
                given[key] = value
            elif key in owner:
                flat[owner[key][0]][owner[key][1]] = value
            else:
                raise ConfigError(unknown_setting(key, command_keys(cls)))
        every = command_fields(cls)
        for key, value in settings.items():  # each value first, in the order given; then how they go together
            if key in every:
                checked(every[key], value)
        for name, item in parts.items():
            kind, whole, values = item.metadata["group"], given.get(name), flat[name]
            if whole is None and not values and item.default_factory is not MISSING:
                continue
            if isinstance(whole, kind):
                given[name] = replace(whole, **values) if values else whole
            elif whole is None or isinstance(whole, Mapping):
                given[name] = kind(**{**(whole or {}), **values})
            else:
                raise ConfigError(f"{name}: expected {kind.__name__}, got {type(whole).__name__}")
        missing = [key_of(item) for item in declared(cls) if item.default is MISSING and item.name not in given]
        if missing:
            raise ConfigError(f"{' and '.join(missing)}: required")
        return cls(**given)


_NAMED_MODEL = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)=(?P<spec>.+)$")


def named_models(value: Any) -> dict[str, str]:
    """Trained models by name from `NAME=SPEC` or bare `SPEC` texts (named by the spec itself), in order, or from a
    mapping of name to spec.

    >>> named_models(["dpo=out/model", "smollm2:layers=24"])
    {'dpo': 'out/model', 'smollm2:layers=24': 'smollm2:layers=24'}
    """
    if isinstance(value, Mapping):
        if not all(isinstance(name, str) and isinstance(spec, str) for name, spec in value.items()):
            raise ValueError("expected names of model specs, as text")
        value = [f"{name}={spec}" for name, spec in value.items()]
    texts = [value] if isinstance(value, str) else list(value)
    if not texts or not all(isinstance(text, str) and text.strip() for text in texts):
        raise ValueError("expected model specs")
    models: dict[str, str] = {}
    for text in map(str.strip, texts):
        match = _NAMED_MODEL.match(text)
        name, spec = (match["name"], match["spec"]) if match else (text, text)
        if name in models or name == "reference":
            raise ValueError(f"the name {name!r} is taken")
        models[name] = spec
    return models


MODELS = Check(dict, "[NAME=]SPEC, once per trained model, each named once", convert=named_models)


BUILD = Check(Path, "a build folder", lambda value: str(value) != "", metavar="DIR")


def _build(help: str = "a folder written by popalign build") -> Any:
    return setting(check=BUILD, key="build", positional="1", help=help)


@dataclass(frozen=True, kw_only=True)
class ScoreCommand(CommandSettings):
    """`popalign score`: DLMA self-reward scores, curation and a quality report added to a build."""

    build: Path = _build()
    templates: Path | None = shared(BuildConfig, "templates")
    batch_size: int = shared(BuildConfig, "batch_size", default=SCORE_BATCH_SIZE, help="local scoring batch size")
    cache_dir: Path | None = shared(BuildConfig, "cache_dir")
    cache: bool = shared(BuildConfig, "cache")
    score: ScoreOptions = group(ScoreOptions, title="scoring (DLMA self-reward, curation, curriculum)")
    endpoints: Endpoints = group(Endpoints, title="endpoints (a served scoring model)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_cache_outside(self.cache_dir, self.build)


@dataclass(frozen=True, kw_only=True)
class JudgeCommand(CommandSettings):
    """`popalign judge`: every pair of a build judged, and each strategy's accuracy."""

    build: Path = _build()
    templates: Path | None = shared(BuildConfig, "templates")
    batch_size: int = shared(BuildConfig, "batch_size", help="local judge batch size")
    cache_dir: Path | None = shared(BuildConfig, "cache_dir")
    cache: bool = shared(BuildConfig, "cache")
    progress: bool = shared(BuildConfig, "progress")
    judge: JudgeOptions = group(
        JudgeOptions, title="judging (the paper's pairwise accuracy per strategy)", required=True
    )
    endpoints: Endpoints = group(Endpoints, title="endpoints")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_cache_outside(self.cache_dir, self.build)


@dataclass(frozen=True, kw_only=True)
class EvaluateCommand(CommandSettings):
    """`popalign evaluate`: each trained model against the reference, on the held-out `test` split of a build,
    judged in both orders."""

    build: Path = setting(check=BUILD, metavar="DIR", help="a build folder with a test split (built with --test-size)")
    models: Mapping[str, str] = setting(
        check=MODELS,
        key="model",
        repeat=True,
        metavar="[NAME=]SPEC",
        help="a trained model: a local model spec (a folder, a .gguf file) or endpoint URLs, named by NAME=; "
        "repeatable, to compare several (the ablations) in one table",
    )
    reference: str = setting(
        check=TEXT, metavar="SPEC|URL", help="the model the trained ones are compared with (their base)"
    )
    out: Path = setting(Path("popalign-evaluation"), check=PATH, metavar="DIR", help="folder of the report")
    max_new_tokens: int = setting(LOCAL_MAX_NEW_TOKENS, check=POSITIVE, help="tokens per answer (greedy decoding)")
    templates: Path | None = shared(BuildConfig, "templates")
    batch_size: int = shared(BuildConfig, "batch_size")
    cache_dir: Path | None = shared(BuildConfig, "cache_dir")
    cache: bool = shared(BuildConfig, "cache")
    progress: bool = shared(BuildConfig, "progress")
    judge: JudgeOptions = group(
        JudgeOptions,
        title="judging (both orders, as popalign judge)",
        only=("judge_model", "judge_reward_model", "judge_max_new_tokens"),
        required=True,
    )
    endpoints: Endpoints = group(Endpoints, title="endpoints")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.out.resolve().is_relative_to(self.build.resolve()):
            raise ConfigError(f"out: {self.out} is inside the build folder {self.build}; give a folder outside it")


@dataclass(frozen=True, kw_only=True)
class PushCommand(CommandSettings):
    """`popalign push`: a build published as a tagged version of a Hub dataset."""

    build: Path = _build()
    repo: str = setting(check=TEXT, metavar="ORG/NAME", help="the Hub dataset repository")
    release: str = shared(Push, "release")
    private: bool = shared(Push, "private")
    force: bool = shared(Push, "force")
    flags: str = shared(Push, "flags")
    token: str | None = setting(
        None, check=TEXT, recipe=False, metavar="TOKEN", help="Hub token (default: $HF_TOKEN or the saved login)"
    )

    def __repr__(self) -> str:  # the token never reaches a log or an error
        shown = ", ".join(f"{item.name}={getattr(self, item.name)!r}" for item in fields(self) if item.name != "token")
        return f"PushCommand({shown})"


FOLDERS = Check(
    tuple,
    "part folders",
    lambda value: bool(value) and all(str(path).strip() for path in value),
    convert=lambda value: (Path(value),) if isinstance(value, str | Path) else tuple(map(_folder, value)),
    metavar="PART",
)


def _folder(value: Any) -> Path:
    if not isinstance(value, str | Path):
        raise ValueError
    return Path(value)


@dataclass(frozen=True, kw_only=True)
class MergeCommand(CommandSettings):
    """`popalign merge`: the part folders of a sharded build joined into one build."""

    parts: tuple[Path, ...] = setting(
        check=FOLDERS, key="parts", positional="+", help="the part folders, one per shard"
    )
    out: Path = setting(check=PATH, metavar="DIR", help="folder of the merged dataset")


@dataclass(frozen=True, kw_only=True)
class ExportCommand(CommandSettings):
    """`popalign export`: a build written in another trainer's format."""

    build: Path = _build()
    format: str = setting(
        "llamafactory",
        check=one_of(FORMATS),
        help="the trainer's format: LLaMA-Factory's ranking data and its dataset_info.json",
    )
    out: Path = setting(check=PATH, metavar="DIR", help="a new folder for the files and dataset_info.json")


CONDITIONS = Check(
    tuple,
    "conditions FIELD OP VALUE",
    convert=lambda value: tuple(map(_condition, [value] if isinstance(value, str) else value)),
    metavar="COND",
)


def _condition(value: Any) -> Condition:
    return value if isinstance(value, Condition) else parse_condition(value)


@dataclass(frozen=True, kw_only=True)
class ShowCommand(CommandSettings):
    """`popalign show`: a build's pairs read in the terminal."""

    build: Path = _build()
    strategy: str = setting("all", check=TEXT, positional="?", metavar="CONFIG", help="a strategy's config, or all")
    n: int = setting(5, check=POSITIVE, flag="-n", metavar="N", help="pairs to show")
    where: tuple[Any, ...] = setting(
        (),
        check=CONDITIONS,
        repeat=True,
        help="show only pairs meeting FIELD OP VALUE (OP: = != < > <= >=, or ~ for contains), e.g. score<0, "
        "judge_verdict=rejected, chosen~tide; repeatable (all must hold)",
    )
    side_by_side: bool = setting(False, check=FLAG, help="chosen and rejected in two columns")
    width: int | None = setting(None, check=POSITIVE, metavar="N", help="line width (default: the terminal's)")


PORT = Check(int, "a port, 0 to 65535 (0: any free one)", lambda value: 0 <= value <= 65535, metavar="PORT")
READER = Check(str, "a name of letters, digits, '.', '_' or '-' (up to 40)", lambda value: is_reader(value))


@dataclass(frozen=True, kw_only=True)
class ReviewCommand(CommandSettings):
    """`popalign review`: a build's pairs read, compared and flagged on a local page, or written as one file."""

    build: Path = _build()
    host: str = setting(
        "127.0.0.1", check=TEXT, metavar="ADDRESS", help="address to serve on; any but this machine's own asks for a "
        "token, printed in the URL"
    )  # fmt: skip
    port: int = setting(8700, check=PORT, help="port to serve on (0: any free one)")
    reader: str | None = setting(
        None, check=READER, metavar="NAME", help="whose flags these are (default: your login name); readers' flags are "
        "kept apart"
    )  # fmt: skip
    html: Path | None = setting(
        None, check=PATH, metavar="FILE", help="write the review as one read-only page (no server, nothing fetched) "
        "and exit"
    )  # fmt: skip


#: The checks of settings that name a file or folder (a recipe's are resolved beside it).
PATHS = (PATH, BUILD, FOLDERS)

#: Every command's settings but build's, by command.
COMMANDS: dict[str, type] = {
    "score": ScoreCommand,
    "judge": JudgeCommand,
    "evaluate": EvaluateCommand,
    "push": PushCommand,
    "merge": MergeCommand,
    "export": ExportCommand,
    "show": ShowCommand,
    "review": ReviewCommand,
}
