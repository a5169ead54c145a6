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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import huggingface_hub

from popalign.backends import check_installed, open_backends
from popalign.cache import open_cache
from popalign.config import (
    LOCAL_MAX_NEW_TOKENS,
    BuildConfig,
    Endpoints,
    EvaluateOptions,
    GenerationParams,
    JudgeOptions,
    ScoreOptions,
    check_cache_outside,
)
from popalign.dataset.folder import MANIFEST, Manifest, check_out, claimed, open_manifest
from popalign.engine import Engine
from popalign.errors import ConfigError, PublishError, ShardError
from popalign.estimate import Estimate, estimate_plan
from popalign.evaluation import REFERENCE, Evaluation, evaluate_models
from popalign.export import export_build
from popalign.judging import judge_settings
from popalign.merge import merge_builds
from popalign.pipeline import BuildSummary, judge_dataset, run_plan, score_dataset
from popalign.plan import make_plan
from popalign.publish import PushResult, check_repo_id, list_versions, parse_version, push_dataset
from popalign.roles import EMBEDDED, parse_spec
from popalign.scale_out import run_tasks, work_folder
from popalign.scoring import score_settings
from popalign.templates import TemplateSet

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("popalign")


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
        return ["all", *(name for name, config in self.manifest.configs.items() if config["rows"])]

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
                          private=config.push.private, force=config.push.force)  # fmt: skip
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
    build: Build | str | Path,
    *,
    models: Mapping[str, str] | Sequence[str] | str,
    reference: str,
    judge: JudgeOptions,
    out: str | Path = "popalign-evaluation",
    max_new_tokens: int = LOCAL_MAX_NEW_TOKENS,
    templates: str | Path | None = None,
    batch_size: int = 16,
    endpoints: Endpoints | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    progress: bool = True,
) -> Evaluation:
    """The win rate of each trained model (`models`: specs, or names to specs) against `reference` on the build's
    held-out `test` split: both answer each instruction greedily, `judge` compares them in both orders, and the
    table (overall and per strategy, with Wilson 95% intervals), the answers and a chart are written to `out`.

    >>> report = popalign.evaluate(TESTED, models={"echo": SERVER}, reference=SERVER, judge=JudgeOptions(model=SERVER),
    ...                            out=f"{OUT}-evaluation", cache=False, progress=False)
    >>> report.instructions, report.table["echo"]["overall"].ties  # one server on both sides: every pair ties
    (2, 2)

    Raises:
        NotABuildError: `build` is not a build folder.
        PopAlignError: the build has no test split, or no instruction got every model's answer.
        ConfigError: a bad model spec, a name given twice, or a bad judge.
    """
    path = _path(build)
    if not isinstance(judge, JudgeOptions):
        raise ConfigError(f"judge: expected JudgeOptions(model=...) or JudgeOptions(reward_model=...), got {judge!r}")
    options = EvaluateOptions(
        build=path, models=models, reference=reference, out=_path(out, "out"), max_new_tokens=max_new_tokens
    )
    manifest = open_manifest(path)
    if options.out.resolve().is_relative_to(path.resolve()):
        raise ConfigError(f"out: {options.out} is inside the build folder {path}; give a folder outside it")
    if (options.out / MANIFEST).exists():
        raise ConfigError(f"out: {options.out} holds a build; give the report a folder of its own")
    specs = {name: parse_spec(spec) for name, spec in options.models.items()} | {
        REFERENCE: parse_spec(options.reference)
    }
    check_installed(specs.values())
    endpoints = endpoints or Endpoints()
    backends = open_backends(specs.values(), batch_size=batch_size, endpoints=endpoints)
    generations = open_cache(cache, cache_dir)
    params = GenerationParams(max_new_tokens=options.max_new_tokens, temperature=0.0, top_p=1.0, seed=0)
    engine = Engine(specs, params, backends=backends, cache=generations, progress=progress)
    template_set = TemplateSet(Path(templates) if templates else None)
    judging = judge_settings(judge, template_set, generations, endpoints, backends.get("local"), batch_size, progress)
    return evaluate_models(path, manifest, engine, judging, options.out)


def _config(prompts: str | Path | None, config: BuildConfig | None, settings: dict[str, Any]) -> BuildConfig:
    if config is None:
        return BuildConfig.of(**({"prompts": prompts} if prompts is not None else {}), **settings)
    if settings or prompts is not None:
        raise ConfigError("give a whole config, or prompts and settings, not both")
    return config


def score(
    build: Build | str | Path,
    options: ScoreOptions | None = None,
    *,
    templates: str | Path | None = None,
    batch_size: int = 8,
    endpoints: Endpoints | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
) -> Build:
    """Add DLMA self-reward scores (`score`, `score_per_token`), curation and a quality report to a build,
    rewriting its folder whole; `templates` are the ones the build used; a served scoring model is asked as
    `endpoints` say (deadline, retries, key), as generation is.

    >>> options = ScoreOptions(model=TINY_MODEL, swap="swap")  # any model spec, or a TGI, vLLM or SGLang URL
    >>> scored = popalign.score(COPY, options, templates=TEMPLATES, cache=False)
    >>> scored.manifest.score["swap"], all(row["score"] >= 0 for row in scored.rows("prefix"))
    ('swap', True)

    Raises:
        NotABuildError: not a build folder.
        PopAlignError: the build was made with other templates than `templates`.
        BackendError: the scoring model cannot be loaded or reached.
    """
    path = _path(build)
    check_cache_outside(cache_dir, path)
    if options is not None and not isinstance(options, ScoreOptions):
        raise ConfigError(f"score: expected ScoreOptions(...), got {options!r}")
    default_model = open_manifest(path).roles.get("default", EMBEDDED)  # not a build: refused, nothing written
    with claimed(path):  # a second command on this folder meanwhile is refused
        template_set = TemplateSet(Path(templates) if templates else None)
        settings = score_settings(options or ScoreOptions(), None, default_model, endpoints or Endpoints(), batch_size)
        summary = score_dataset(path, templates=template_set, scoring=settings, cache=open_cache(cache, cache_dir))
    return Build(path, open_manifest(path), summary)


def judge(
    build: Build | str | Path,
    options: JudgeOptions,
    *,
    templates: str | Path | None = None,
    batch_size: int = 16,
    endpoints: Endpoints | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    progress: bool = True,
) -> Build:
    """Judge every pair of a build: `judge_verdict` (and `judge_margin` for a reward model) per row, and each
    strategy's accuracy with a 95% Wilson interval in the manifest and the card.

    >>> judged = popalign.judge(COPY, JudgeOptions(model=SERVER), cache=False, progress=False)
    >>> judged.manifest.judge["configs"]["elicitive"]["accuracy"]  # the scripted judge prefers the careful answer
    1.0

    Raises:
        NotABuildError: not a build folder.
        BackendError: the judge cannot be loaded, or every request to it failed.
    """
    path = _path(build)
    if not isinstance(options, JudgeOptions):
        raise ConfigError(f"judge: expected JudgeOptions(model=...) or JudgeOptions(reward_model=...), got {options!r}")
    check_cache_outside(cache_dir, path)
    open_manifest(path)  # a folder that is not a build is refused before any model loads
    with claimed(path):  # a second command on this folder meanwhile is refused
        template_set = TemplateSet(Path(templates) if templates else None)
        generations = open_cache(cache, cache_dir)
        settings = judge_settings(
            options, template_set, generations, endpoints or Endpoints(), None, batch_size, progress
        )
        summary = judge_dataset(path, judging=settings)
    return Build(path, open_manifest(path), summary)


def merge(parts: Sequence[Build | str | Path], *, out: str | Path) -> Build:
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
    """
    if not parts or isinstance(parts, str | Path):
        raise ShardError("merge joins the part folders of a sharded build: give a list of them")
    folder = _path(out, "out")
    check_out(folder)
    with claimed(folder):
        summary = merge_builds([_path(part, "parts") for part in parts], folder)
    return Build(folder, open_manifest(folder), summary)


def push(
    build: Build | str | Path,
    *,
    repo_id: str,
    version: str,
    token: str | None = None,
    private: bool = False,
    force: bool = False,
) -> PushResult:
    """Publish a build as version `version` (tag `vX.Y.Z`) of the Hub dataset `repo_id`, in one commit.

    >>> popalign.push(EXAMPLE, repo_id="org/popalign", version="1.0.0", token=HUB_TOKEN).rebuilt
    ['prefix', 'elicitive']

    Raises:
        VersionExistsError: the version is published and `force` is not given.
        VersionTooOldError: the version is older than the newest published one.
        ForeignRepositoryError: the repository holds files popalign did not publish.
        PublishError: a bad repository id or version, or the Hub failed (nothing is half-published).
        TamperedBuildError: a file of the build is not what its manifest records (the Hub is not asked).
    """
    if not isinstance(version, str) or not isinstance(repo_id, str):
        raise PublishError(f"push: repo_id and version are text (ORG/NAME, X.Y.Z), got {repo_id!r} and {version!r}")
    return push_dataset(_path(build), repo_id, version, token=token, private=private, force=force)


def export(build: Build | str | Path, *, out: str | Path, format: str = "llamafactory") -> dict[str, int]:
    """Write a build in another trainer's format into the new folder `out` (`llamafactory`: one ranking JSON file
    per config and split, and its `dataset_info.json`); return the rows per dataset name.

    >>> popalign.export(EXAMPLE, out=f"{OUT}-llamafactory")["popalign_prefix"]
    6

    Raises:
        NotABuildError: not a build, or `out` is not a new folder.
        ConfigError: an unknown format.
    """
    return export_build(_path(build), _path(out, "out"), format=format)


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
