"""The public Python API: `build`, `score`, `judge`, `merge`, `push`, `versions` and `open_build`.

Every function is keyword-only past its subject, raises the named errors of `popalign.errors`, and loads torch,
transformers and datasets only when the call needs them. The `popalign` command is a thin layer over these
functions; what they report while they run goes to the `popalign` logger.

>>> import popalign
>>> build = popalign.open_build(EXAMPLE)  # a folder written by `popalign.build(...)`
>>> build.configs
['all', 'prefix', 'elicitive']
>>> build.rows("elicitive")[0]["chosen"][0]["role"]
'assistant'
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import huggingface_hub

from popalign.backends import check_installed, open_backends
from popalign.cache import open_cache
from popalign.commands import (
    EvaluateCommand,
    ExportCommand,
    JudgeCommand,
    MergeCommand,
    PushCommand,
    ReviewCommand,
    ScoreCommand,
    ShowCommand,
)
from popalign.config import BuildConfig, JudgeOptions, ScoreOptions
from popalign.dataset.folder import MANIFEST, Manifest, check_out, claimed, open_manifest
from popalign.engine import Engine
from popalign.errors import ConfigError, ShardError
from popalign.estimate import Estimate, estimate_plan
from popalign.evaluation import REFERENCE, Evaluation, evaluate_models
from popalign.export import export_build
from popalign.generation import GenerationParams
from popalign.judging import judge_settings
from popalign.merge import merge_builds
from popalign.pipeline import BuildSummary, judge_dataset, run_plan, score_dataset
from popalign.plan import make_plan
from popalign.publish import PushResult, check_repo_id, list_versions, parse_version, push_dataset
from popalign.review import default_reader, serve, write_html
from popalign.roles import EMBEDDED, parse_spec
from popalign.scale_out import run_tasks, work_folder
from popalign.scoring import score_settings
from popalign.show import read_pairs
from popalign.templates import TemplateSet

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("popalign")
Command = TypeVar("Command")


@dataclass(frozen=True)
class Build:
    """A build folder: its path, its typed manifest, its configs and their rows; `summary` tells what the call
    that returned it did (counts, requests, time), when one did."""

    path: Path
    manifest: Manifest
    summary: BuildSummary | None = field(default=None, repr=False, compare=False)
    #: The version `build(..., push_to=..., release=...)` published, when it did.
    pushed: PushResult | None = field(default=None, repr=False, compare=False)

    @property
    def configs(self) -> list[str]:
        """The configs that hold rows, `all` first, as `load_dataset` names them."""
        return ["all", *(name for name, config in self.manifest.configs.items() if config.rows)]

    def rows(self, config: str = "all", split: str = "train") -> datasets.Dataset:
        """The rows of one config as a `datasets.Dataset`, read as `load_dataset(path, config)` reads them."""
        if config not in self.configs:
            raise ConfigError(f"{self.path}: no config {config!r} (configs: {', '.join(self.configs)})")
        import datasets  # loaded when rows are read, not when popalign is imported

        return datasets.load_dataset(str(self.path), config, split=split)


def open_build(path: str | Path) -> Build:
    """The build in `path`.

    >>> open_build(EXAMPLE).manifest.prompts["count"]
    6

    Raises:
        NotABuildError: `path` holds no build, or its manifest is unreadable.
    """
    return Build(_path(path, "path"), open_manifest(_path(path, "path")))


def build(prompts: str | Path | None = None, *, config: BuildConfig | None = None, **settings: Any) -> Build | None:
    """Generate every strategy's pairs for the instructions in `prompts` (a `.jsonl`, `.csv` or `.parquet` file, or
    a Hub dataset `ORG/NAME[:CONFIG][:SPLIT]`; default: the bundled demo set) and write the folder `out` as a Hub
    dataset, one config per strategy plus `all`.

    `settings` are the build's settings by the same keys as the command's flags and a recipe's keys (see
    `popalign.config.BuildConfig`): `strategies`, `roles` (a role, `default`, `large`, `small`, `first`,
    `second`, `planner` or `reviser`, to a model spec or endpoint URLs; none given: the embedded SmolLM2 and
    weaker copies of it), `out`, generation settings (`max_new_tokens`, `temperature`, ... or `params={...}`, and
    `role_params` per role), `concurrency` and the other endpoint settings (or `endpoints=Endpoints(...)`),
    `score=True` or `ScoreOptions(...)`, `judge=JudgeOptions(...)`, `push_to` with `release`, `executor`... Or
    pass a whole `config`. `executor` runs the parts as datatrove tasks and merges them (None is returned when
    Slurm was only given the jobs).

    >>> import popalign
    >>> built = popalign.build(PROMPTS, strategies=["prefix"], roles={"default": SERVER}, out=OUT, cache=False,
    ...                        progress=False)
    >>> built.configs, len(built.rows("prefix"))
    (['all', 'prefix'], 6)

    Raises:
        PromptsError: the prompts file is missing, or a row or column is bad.
        ConfigError: an unknown strategy, role or setting, a value out of range, or roles a strategy needs are
            missing.
        NotABuildError: `out` cannot become a build folder.
        BackendError: a model cannot be loaded or an endpoint cannot be reached.
        PopAlignError: every pair was dropped (the answers stay cached).
    """
    config = _config(prompts, config, settings)
    if config.dry_run:
        raise ConfigError("dry_run: a dry run writes no build; call popalign.estimate with these settings")
    if not config.progress:
        quiet_libraries()
    check_out(Path(config.out))
    with claimed(Path(config.out)):  # a second command on this folder meanwhile is refused
        if config.push:  # checked before generating; the Hub token comes from $HF_TOKEN or the saved login
            check_publish(config.push.repo_id, config.push.release)
        plan = make_plan(config)
        plan.describe()
        if config.executor:
            tasks, kind = config.executor.tasks, config.executor.kind
            log.info(f"{tasks} tasks on the {kind} executor; parts and logs in {work_folder(plan.out, plan)}")
            return Build(plan.out, open_manifest(plan.out)) if run_tasks(plan) else None
        summary = run_plan(plan)
        built = Build(plan.out, open_manifest(plan.out), summary)
        if config.push:
            pushed = push(built, repo_id=config.push.repo_id, version=config.push.release,
                          private=config.push.private, force=config.push.force, flags=config.push.flags)  # fmt: skip
            built = Build(built.path, built.manifest, summary, pushed)
        return built


def estimate(prompts: str | Path | None = None, *, config: BuildConfig | None = None, **settings: Any) -> Estimate:
    """What `build` with the same settings would ask, use, keep and cost, from a build of `dry_run_sample`
    instructions evenly spaced through the input (generated for real and cached, so the build that follows reuses
    them); nothing is written.

    >>> import popalign
    >>> guess = popalign.estimate(PROMPTS, strategies="prefix", roles={"default": SERVER}, dry_run_sample=2,
    ...                           price={"default": "1,2"}, cache=False, progress=False)
    >>> guess.sampled, guess.total, guess.strategies["prefix"].requests
    (2, 6, 12.0)

    Raises:
        The errors of `build`, but for those of writing the folder.
    """
    config = _config(prompts, config, settings)
    if not config.progress:
        quiet_libraries()
    plan = make_plan(config)
    plan.describe()
    return estimate_plan(plan, config.dry_run_sample, progress=config.progress)


def evaluate(
    build: Build | str | Path | None = None, *, config: EvaluateCommand | None = None, **settings: Any
) -> Evaluation:
    """The win rate of each trained model (`models`: specs, or names to specs) against `reference` on the build's
    held-out `test` split: both answer each instruction greedily, `judge` compares them in both orders, and the
    table (overall and per strategy, with Wilson 95% intervals), the answers and a chart are written to `out`.
    `settings` are `popalign evaluate`'s, by the same keys as its flags (`popalign.commands.EvaluateCommand`).

    >>> report = popalign.evaluate(TESTED, models={"echo": SERVER}, reference=SERVER, judge=JudgeOptions(model=SERVER),
    ...                            out=f"{OUT}-evaluation", cache=False, progress=False)
    >>> report.instructions, report.table["echo"]["overall"].ties  # one server on both sides: every pair ties
    (2, 2)

    Raises:
        NotABuildError: `build` is not a build folder.
        PopAlignError: the build has no test split, or no instruction got every model's answer.
        ConfigError: a bad setting: a model spec, a name given twice, or a bad judge.
    """
    command = _command(EvaluateCommand, config, settings, build=None if build is None else _path(build))
    manifest = open_manifest(command.build)
    if (command.out / MANIFEST).exists():
        raise ConfigError(f"out: {command.out} holds a build; give the report a folder of its own")
    specs = {name: parse_spec(spec) for name, spec in command.models.items()} | {
        REFERENCE: parse_spec(command.reference)
    }
    check_installed(specs.values())
    backends = open_backends(specs.values(), batch_size=command.batch_size, endpoints=command.endpoints)
    generations = open_cache(command.cache, command.cache_dir)
    params = GenerationParams(max_new_tokens=command.max_new_tokens, temperature=0.0, top_p=1.0, seed=0)
    engine = Engine(specs, params, backends=backends, cache=generations, progress=command.progress)
    judging = judge_settings(
        command.judge, TemplateSet(command.templates), generations, command.endpoints, backends.get("local"),
        command.batch_size, command.progress,
    )  # fmt: skip
    return evaluate_models(command.build, manifest, engine, judging, command.out)


def _command(cls: type[Command], config: Command | None, settings: dict[str, Any], **subject: Any) -> Command:
    """A command's checked settings: a whole `config`, or its subject (a build, parts) and flat settings."""
    if config is None:
        return cls.of(**{key: value for key, value in subject.items() if value is not None}, **settings)
    if not isinstance(config, cls):
        raise ConfigError(f"config: expected {cls.__name__}, got {type(config).__name__}")
    if settings or any(value is not None for value in subject.values()):
        raise ConfigError("give a whole config, or the settings, not both")
    return config


def _config(prompts: str | Path | None, config: BuildConfig | None, settings: dict[str, Any]) -> BuildConfig:
    if config is None:
        return BuildConfig.of(**({"prompts": prompts} if prompts is not None else {}), **settings)
    if settings or prompts is not None:
        raise ConfigError("give a whole config, or prompts and settings, not both")
    return config


def score(
    build: Build | str | Path | None = None,
    options: ScoreOptions | None = None,
    *,
    config: ScoreCommand | None = None,
    **settings: Any,
) -> Build:
    """Add DLMA self-reward scores (`score`, `score_per_token`), curation and a quality report to a build,
    rewriting its folder whole. `options` (or the flat keys `score_model`, `swap`, ...) say how it is scored;
    `settings` are `popalign score`'s, by the same keys as its flags (`popalign.commands.ScoreCommand`): the
    `templates` the build used, `batch_size`, the cache, and how a served scoring model is asked (`concurrency`,
    `timeout`, ..., or `endpoints=Endpoints(...)`), as generation is.

    >>> options = ScoreOptions(model=TINY_MODEL, swap="swap")  # any model spec, or a TGI, vLLM or SGLang URL
    >>> scored = popalign.score(COPY, options, templates=TEMPLATES, cache=False)
    >>> scored.manifest.score.swap, all(row["score"] >= 0 for row in scored.rows("prefix"))
    ('swap', True)

    Raises:
        NotABuildError: not a build folder.
        ConfigError: a bad setting.
        PopAlignError: the build was made with other templates than `templates`.
        BackendError: the scoring model cannot be loaded or reached.
    """
    command = _command(ScoreCommand, config, settings, build=None if build is None else _path(build), score=options)
    path = command.build
    default_model = open_manifest(path).roles.get("default", EMBEDDED)  # not a build: refused, nothing written
    with claimed(path):  # a second command on this folder meanwhile is refused
        scoring = score_settings(command.score, None, default_model, command.endpoints, command.batch_size)
        summary = score_dataset(
            path,
            templates=TemplateSet(command.templates),
            scoring=scoring,
            cache=open_cache(command.cache, command.cache_dir),
        )
    return Build(path, open_manifest(path), summary)


def judge(
    build: Build | str | Path | None = None,
    options: JudgeOptions | None = None,
    *,
    config: JudgeCommand | None = None,
    **settings: Any,
) -> Build:
    """Judge every pair of a build: `judge_verdict` (and `judge_margin` for a reward model) per row, and each
    strategy's accuracy with a 95% Wilson interval in the manifest and the card. `options` (or the flat keys
    `judge_model`, `judge_reward_model`, ...) name the judge; `settings` are `popalign judge`'s, by the same keys as
    its flags (`popalign.commands.JudgeCommand`).

    >>> judged = popalign.judge(COPY, JudgeOptions(model=SERVER), cache=False, progress=False)
    >>> judged.manifest.judge.configs["elicitive"].accuracy  # the scripted judge prefers the careful answer
    1.0

    Raises:
        NotABuildError: not a build folder.
        ConfigError: a bad setting, or no judge.
        BackendError: the judge cannot be loaded, or every request to it failed.
    """
    command = _command(JudgeCommand, config, settings, build=None if build is None else _path(build), judge=options)
    path = command.build
    open_manifest(path)  # a folder that is not a build is refused before any model loads
    with claimed(path):  # a second command on this folder meanwhile is refused
        generations = open_cache(command.cache, command.cache_dir)
        judging = judge_settings(
            command.judge, TemplateSet(command.templates), generations, command.endpoints, None, command.batch_size,
            command.progress,
        )  # fmt: skip
        summary = judge_dataset(path, judging=judging)
    return Build(path, open_manifest(path), summary)


def merge(
    parts: Sequence[Build | str | Path] | None = None, *, config: MergeCommand | None = None, **settings: Any
) -> Build:
    """Join the parts of a sharded build (`build(..., shard="K/N")`, every K once) into one build in `out`.

    >>> parts = [popalign.build(PROMPTS, strategies="prefix", roles={"default": SERVER}, out=f"{OUT}-{k}",
    ...                         shard=f"{k}/2", cache=False, progress=False) for k in (1, 2)]
    >>> merged = popalign.merge(parts, out=f"{OUT}-merged")
    >>> [part.manifest.prompts["count"] for part in parts], merged.manifest.prompts["count"]
    ([..., ...], 6)

    Raises:
        ShardError: the parts are not every shard of one unscored, unjudged build, once each.
        NotABuildError: a part is not a build.
        TamperedBuildError: a part's files are not what its manifest records.
        ConfigError: a bad setting.
    """
    if isinstance(parts, str | Path):
        raise ShardError("merge joins the part folders of a sharded build: give a list of them")
    folders = None if parts is None else [_path(part, "parts") for part in parts]
    command = _command(MergeCommand, config, settings, parts=folders)
    check_out(command.out)
    with claimed(command.out):
        summary = merge_builds(list(command.parts), command.out)
    return Build(command.out, open_manifest(command.out), summary)


def push(build: Build | str | Path | None = None, *, config: PushCommand | None = None, **settings: Any) -> PushResult:
    """Publish a build as version `release` (tag `vX.Y.Z`) of the Hub dataset `repo`, in one commit. `settings` are
    `popalign push`'s, by the same keys as its flags (`popalign.commands.PushCommand`): `repo`, `release`,
    `private`, `force` and `token`; `repo_id` and `version` are older names of `repo` and `release`.

    >>> popalign.push(EXAMPLE, repo="org/popalign", release="1.0.0", token=HUB_TOKEN).rebuilt
    ['prefix', 'elicitive']

    Raises:
        VersionExistsError: the version is published and `force` is not given.
        VersionTooOldError: the version is older than the newest published one.
        ForeignRepositoryError: the repository holds files popalign did not publish.
        PublishError: a bad repository id, or the Hub failed (nothing is half-published).
        ConfigError: a bad setting.
        TamperedBuildError: a file of the build is not what its manifest records (the Hub is not asked).
    """
    for old, new in (("repo_id", "repo"), ("version", "release")):
        if old in settings:
            if new in settings:
                raise ConfigError(f"{new}: given twice ({new} and its older name {old})")
            settings[new] = settings.pop(old)
    command = _command(PushCommand, config, settings, build=None if build is None else _path(build))
    return push_dataset(
        command.build, command.repo, command.release,
        token=command.token, private=command.private, force=command.force, flags=command.flags,
    )  # fmt: skip


def export(
    build: Build | str | Path | None = None, *, config: ExportCommand | None = None, **settings: Any
) -> dict[str, int]:
    """Write a build in another trainer's format into the new folder `out` (`format`, default `llamafactory`: one
    ranking JSON file per config and split, and its `dataset_info.json`); return the rows per dataset name.

    >>> popalign.export(EXAMPLE, out=f"{OUT}-llamafactory")["popalign_prefix"]
    6

    Raises:
        NotABuildError: not a build, or `out` is not a new folder.
        ConfigError: a bad setting, such as an unknown format.
    """
    command = _command(ExportCommand, config, settings, build=None if build is None else _path(build))
    return export_build(command.build, command.out, format=command.format)


def review(
    build: Build | str | Path | None = None, *, config: ReviewCommand | None = None, **settings: Any
) -> int | None:
    """Review a build's pairs (`popalign review`): with `html`, write the read-only page there and return the pairs
    it holds; else serve the page on `host:port` until interrupted (`popalign[review]`); `settings` are
    `popalign review`'s.

    >>> popalign.review(EXAMPLE, html=f"{OUT}-review.html") > 0
    True

    Raises:
        NotABuildError: not a build.
        TamperedBuildError: its flags file is not what popalign wrote.
        ConfigError: a bad setting, or a port in use.
    """
    command = _command(ReviewCommand, config, settings, build=None if build is None else _path(build))
    reader = command.reader or default_reader()
    if command.html:
        return write_html(command.build, command.html, reader=reader)
    serve(command.build, host=command.host, port=command.port, reader=reader)
    return None


def pairs(
    build: Build | str | Path | None = None, *, config: ShowCommand | None = None, **settings: Any
) -> list[dict[str, Any]]:
    """The pairs `popalign show` prints: at most `n` rows of `strategy` (a strategy's config, or `all`) meeting every
    `where` condition (`"score<0"`, `"chosen~tide"`); `settings` are `popalign show`'s, by the same keys as its flags
    (`popalign.commands.ShowCommand`).

    >>> [row["strategy"] for row in popalign.pairs(EXAMPLE, strategy="elicitive", n=2)]
    ['elicitive', 'elicitive']

    Raises:
        NotABuildError: not a build folder.
        ConfigError: a bad setting, a bad condition, or no such config.
    """
    command = _command(ShowCommand, config, settings, build=None if build is None else _path(build))
    return list(read_pairs(command.build, command.strategy, command.where, command.n))


def versions(repo_id: str, *, token: str | None = None) -> list[dict[str, Any]]:
    """The published versions of `repo_id`, newest first: version, commit, rows per config, configs rebuilt.

    >>> popalign.versions("org/popalign", token=HUB_TOKEN)[0]["configs"]
    {'prefix': 6, 'elicitive': 6}

    Raises:
        PublishError: the repository is missing or not popalign's, or the Hub failed.
    """
    return list_versions(repo_id, token=token)


def quiet_libraries() -> None:
    """Keep the output to popalign's own progress bar and summary (the command always; `progress=False` in the
    API): the Hub's, `datasets`' and transformers' bars and notices are silenced."""
    huggingface_hub.utils.disable_progress_bars()  # transformers follows the Hub's setting
    for name, value in (
        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
        ("DATASETS_VERBOSITY", "error"),
        ("TRANSFORMERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(name, value)  # read when `datasets` and transformers are first imported
    if sys.modules.get("datasets") is not None:  # imported already: tell them directly
        sys.modules["datasets"].disable_progress_bars()
    if sys.modules.get("transformers") is not None:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def check_publish(repo_id: str, release: str) -> None:
    """Refuse a bad repository id or version before anything is generated."""
    check_repo_id(repo_id)
    parse_version(release)


def _path(build: Build | str | Path, setting: str = "build") -> Path:
    """A folder the API was given (a `Build`, or a path as text or `Path`), refused in one line if it is not one."""
    if isinstance(build, Build):
        return build.path
    if not isinstance(build, str | Path) or not str(build).strip():
        kinds = "a folder's path or a Build" if setting in ("build", "parts") else "a folder's path"
        raise ConfigError(f"{setting}: expected {kinds}, got {build!r}")
    return Path(build)
