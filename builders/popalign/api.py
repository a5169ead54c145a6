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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popalign.build_folder import DEFAULT_LICENSE, MAX_SHARD_SIZE, Manifest, open_manifest
from popalign.errors import ConfigError
from popalign.generation import ENDPOINT_MAX_NEW_TOKENS, LOCAL_MAX_NEW_TOKENS, GenerationParams, check_setting
from popalign.models import EMBEDDED, EndpointSpec, ModelSpec, parse_spec
from popalign.scale_out import Executor

if TYPE_CHECKING:
    import datasets

    from popalign.cache import GenerationCache
    from popalign.endpoint_backend import EndpointBackend
    from popalign.local_backend import LocalBackend
    from popalign.pipeline import BuildSummary, JudgeSettings, ScoreSettings
    from popalign.publish import PushResult
    from popalign.templates import TemplateSet

log = logging.getLogger("popalign")
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")

Role = str | ModelSpec | EndpointSpec


@dataclass(frozen=True)
class Endpoints:
    """How endpoint roles (and an endpoint judge or TGI scorer) are called: requests in flight per replica,
    attempts per request, seconds per request, the longest `Retry-After` honoured, and an API key (default:
    none; `$HF_TOKEN` or the saved login go to Hugging Face hosts only)."""

    concurrency: int = 64
    retries: int = 6
    timeout: float = 300.0
    max_retry_wait: float = 120.0
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ScoreOptions:
    """DLMA self-reward scoring: the scoring model (a spec or a TGI URL; default: the build's `default` role),
    the local spec whose chat template renders prompts for a TGI scorer, the contrastive prompt pair of the model
    and pipeline strategies, and the curation (`min_score`, `swap`, `order`)."""

    model: str | None = None
    tokenizer: str = EMBEDDED
    contrast: str = "prefix"
    min_score: float | None = None
    swap: str = "keep"
    order: str = "generated"


@dataclass(frozen=True)
class JudgeOptions:
    """A judge: an LLM (`model`, a spec or endpoint URLs, asked in both orders) or a reward model
    (`reward_model`, a sequence-classification model); `min_judge="agree"` keeps only the pairs it agrees with."""

    model: str | None = None
    reward_model: str | None = None
    max_new_tokens: int = 256
    min_judge: str | None = None

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.reward_model):
            raise ConfigError("a judge is an LLM (--judge-model) or a reward model (--judge-reward-model): give one")


@dataclass(frozen=True)
class Build:
    """A build folder: its path, its typed manifest, its configs and their rows; `summary` tells what the call
    that returned it did (counts, requests, time), when one did."""

    path: Path
    manifest: Manifest
    summary: BuildSummary | None = field(default=None, repr=False, compare=False)

    @property
    def configs(self) -> list[str]:
        """The configs that hold rows, `all` first, as `load_dataset` names them."""
        return ["all", *(name for name, config in self.manifest.configs.items() if config["rows"])]

    def rows(self, config: str = "all", split: str = "train") -> datasets.Dataset:
        """The rows of one config as a `datasets.Dataset`, read as `load_dataset(path, config)` reads them."""
        if config not in self.configs:
            raise ConfigError(f"{self.path}: no config {config!r} (configs: {', '.join(self.configs)})")
        import datasets

        return datasets.load_dataset(str(self.path), config, split=split)


def open_build(path: str | Path) -> Build:
    """The build in `path`.

    >>> open_build(EXAMPLE).manifest.prompts["count"]
    6

    Raises:
        NotABuildError: `path` holds no build, or its manifest is unreadable.
    """
    return Build(Path(path), open_manifest(Path(path)))


def build(
    prompts: str | Path | None = None,
    *,
    strategies: str | Sequence[str] = "all",
    roles: Mapping[str, Role] | None = None,
    out: str | Path = "popalign-data",
    params: Mapping[str, int | float] | None = None,
    role_params: Mapping[str, Mapping[str, int | float]] | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    templates: str | Path | None = None,
    prompt_column: str | None = None,
    limit: int | None = None,
    prompts_revision: str | None = None,
    shard: str | None = None,
    elicitive_style: str = "guided",
    keep_truncated: bool = False,
    max_shard_size: int = MAX_SHARD_SIZE,
    license: str = DEFAULT_LICENSE,
    test_size: float = 0.0,
    batch_size: int = 16,
    endpoints: Endpoints | None = None,
    score: ScoreOptions | None = None,
    judge: JudgeOptions | None = None,
    executor: Executor | None = None,
    progress: bool = True,
) -> Build | None:
    """Generate every strategy's pairs for the instructions in `prompts` (a `.jsonl`, `.csv` or `.parquet` file, or
    a Hub dataset `ORG/NAME[:CONFIG][:SPLIT]` at `prompts_revision`, streamed when `limit` is given; default: the
    bundled demo set) and write `out` as a Hub dataset folder, one config per strategy plus `all`.

    `roles` maps a role (`default`, `large`, `small`, `first`, `second`, `planner`) to a model spec or endpoint
    URLs; none given: the embedded SmolLM2 and weaker copies of it. `params` sets `max_new_tokens`,
    `temperature`, `top_p` and `seed` for every role (`role_params` per role); without `max_new_tokens`, local
    models get 384 tokens and endpoints 1024. `shard="K/N"` builds part K of N (see `merge`); `executor` runs
    the parts as datatrove tasks and merges them (None is returned when Slurm was only given the jobs).

    >>> import popalign
    >>> built = popalign.build(PROMPTS, strategies=["prefix"], roles={"default": SERVER}, out=OUT, cache=False,
    ...                        progress=False)
    >>> built.configs, len(built.rows("prefix"))
    (['all', 'prefix'], 6)

    Raises:
        PromptsError: the prompts file is missing, or a row or column is bad.
        ConfigError: an unknown strategy, role or setting, or roles a strategy needs are missing.
        NotABuildError: `out` cannot become a build folder.
        BackendError: a model cannot be loaded or an endpoint cannot be reached.
        PopAlignError: every pair was dropped (the answers stay cached).
    """
    from popalign.build_folder import check_out
    from popalign.engine import Engine
    from popalign.models import describe_spec, resolve_roles
    from popalign.pipeline import build_dataset
    from popalign.prompts import is_hub_dataset, load_hub_prompts, load_prompts, parse_shard
    from popalign.strategies import STRATEGIES, parse_strategies, roles_used
    from popalign.templates import TemplateSet

    out = Path(out)
    endpoints = endpoints or Endpoints()
    check_out(out)
    if not 0 <= test_size < 1:
        raise ConfigError(f"--test-size {test_size}: expected a share of the instructions, 0 <= F < 1")
    if not _LICENSE.match(license):
        raise ConfigError(f"--license {license!r}: expected a license identifier such as apache-2.0, mit or cc-by-4.0")
    names = parse_strategies(strategies if isinstance(strategies, str) else ",".join(strategies))
    given = {role: parse_spec(spec) if isinstance(spec, str) else spec for role, spec in (roles or {}).items()}
    per_role = {role: dict(values) for role, values in (role_params or {}).items()}
    if "planner" not in given and "default" in per_role:
        per_role["planner"] = per_role["default"]  # the planner is the default model
    used = roles_used(names)
    run_params, run_role_params = generation_params(params or {}, given, per_role, used)
    resolved = resolve_roles(given, {name: STRATEGIES[name].roles for name in names}, run_role_params)
    template_set = TemplateSet(Path(templates) if templates else None)
    part_of = parse_shard(shard) if shard is not None else None
    if isinstance(prompts, str) and is_hub_dataset(prompts):
        prompt_set = load_hub_prompts(
            prompts, column=prompt_column, limit=limit, shard=part_of, revision=prompts_revision
        )
    else:
        prompt_set = load_prompts(
            Path(prompts) if prompts is not None else None, column=prompt_column, limit=limit, shard=part_of
        )
    part = f" (shard {prompt_set.shard[0]}/{prompt_set.shard[1]} of {prompt_set.total})" if prompt_set.shard else ""
    count = len(prompt_set.instructions)
    log.info(f"{count} instructions{part} from {prompt_set.source}; strategies: {', '.join(names)}")
    for role in used:
        log.info(f"  role {role:<8} {resolved[role]}  ({describe_spec(resolved[role])})")
    if executor:
        if shard is not None:
            raise ConfigError("--shard and --executor do not go together: the executor gives each task its shard")
        if score or judge:
            raise ConfigError("--executor builds the data; score or judge the merged folder after")
        options = {
            "prompts": prompts, "strategies": names, "roles": given, "params": params, "role_params": role_params,
            "cache_dir": cache_dir, "cache": cache, "templates": templates, "prompt_column": prompt_column,
            "limit": limit, "prompts_revision": prompt_set.revision or None, "elicitive_style": elicitive_style,
            "keep_truncated": keep_truncated, "max_shard_size": max_shard_size, "license": license,
            "test_size": test_size, "batch_size": batch_size, "endpoints": endpoints,
        }  # fmt: skip
        return _run_tasks(options, out, executor, prompt_set.total, [resolved[role] for role in used])
    needs_local = score is not None or any(not isinstance(resolved[role], EndpointSpec) for role in used)
    local = _local_backend(batch_size) if needs_local else None
    endpoint = _endpoint_backend(endpoints) if any(isinstance(resolved[r], EndpointSpec) for r in used) else None
    generations = _cache(cache, cache_dir)
    engine = Engine(
        {role: resolved[role] for role in used},
        run_params,
        local=local,
        endpoint=endpoint,
        role_params=run_role_params,
        cache=generations,
        progress=progress,
    )
    summary = build_dataset(
        prompt_set,
        strategies=names,
        engine=engine,
        out=out,
        templates=template_set,
        scoring=score_settings(score, local, str(resolved["default"]), endpoints.token) if score else None,
        judging=judge_settings(judge, template_set, generations, endpoints, local, batch_size, progress)
        if judge
        else None,
        keep_truncated=keep_truncated,
        elicitive_style=elicitive_style,
        shard_size=max_shard_size,
        license=license,
        test_size=test_size,
    )
    return Build(out, open_manifest(out), summary)


def score(
    build: Build | str | Path,
    options: ScoreOptions | None = None,
    *,
    templates: str | Path | None = None,
    batch_size: int = 8,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
) -> Build:
    """Add DLMA self-reward scores (`score`, `score_per_token`), curation and a quality report to a build,
    rewriting its folder whole; `templates` are the ones the build used.

    >>> options = ScoreOptions(model=TINY_MODEL, swap="swap")  # any model spec or a TGI URL
    >>> scored = popalign.score(COPY, options, templates=TEMPLATES, cache=False)
    >>> scored.manifest.score["swap"], all(row["score"] >= 0 for row in scored.rows("prefix"))
    ('swap', True)

    Raises:
        NotABuildError: not a build folder.
        PopAlignError: the build was made with other templates than `templates`.
        BackendError: the scoring model cannot be loaded or reached.
    """
    from popalign.pipeline import score_dataset
    from popalign.templates import TemplateSet

    path = _path(build)
    default_model = open_manifest(path).roles.get("default", EMBEDDED)
    template_set = TemplateSet(Path(templates) if templates else None)
    settings = score_settings(options or ScoreOptions(), _local_backend(batch_size), default_model, token)
    summary = score_dataset(path, templates=template_set, scoring=settings, cache=_cache(cache, cache_dir))
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
    from popalign.pipeline import judge_dataset
    from popalign.templates import TemplateSet

    path = _path(build)
    open_manifest(path)  # a folder that is not a build is refused before any model loads
    template_set = TemplateSet(Path(templates) if templates else None)
    generations = _cache(cache, cache_dir)
    settings = judge_settings(options, template_set, generations, endpoints or Endpoints(), None, batch_size, progress)
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
    """
    from popalign.pipeline import merge_builds

    summary = merge_builds([_path(part) for part in parts], Path(out))
    return Build(Path(out), open_manifest(Path(out)), summary)


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
    """
    from popalign.publish import push_dataset

    return push_dataset(_path(build), repo_id, version, token=token, private=private, force=force)


def versions(repo_id: str, *, token: str | None = None) -> list[dict[str, Any]]:
    """The published versions of `repo_id`, newest first: version, commit, rows per config, configs rebuilt.

    >>> popalign.versions("org/popalign", token=HUB_TOKEN)[0]["configs"]
    {'prefix': 6, 'elicitive': 6}

    Raises:
        PublishError: the repository is missing or not popalign's, or the Hub failed.
    """
    from popalign.publish import list_versions

    return list_versions(repo_id, token=token)


def generation_params(
    params: Mapping[str, int | float],
    given: Mapping[str, Role],
    role_generation: Mapping[str, Mapping[str, int | float]],
    used: Sequence[str],
) -> tuple[GenerationParams, dict[str, GenerationParams]]:
    """The run's generation parameters and each role's own. Without `max_new_tokens`, local models get
    `LOCAL_MAX_NEW_TOKENS` and endpoints `ENDPOINT_MAX_NEW_TOKENS`; per-role settings win.

    >>> generation_params({"temperature": 0}, {"default": "http://a:1"}, {}, ["default"])[0].max_new_tokens
    1024
    """
    from dataclasses import replace

    def checked(values: Mapping[str, int | float], where: str) -> dict[str, int | float]:
        try:
            return {name: check_setting(name, value) for name, value in values.items() if value is not None}
        except (KeyError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None

    def default_tokens(role: str) -> int:
        spec = given.get(role, given.get("default", EMBEDDED))
        spec = parse_spec(spec) if isinstance(spec, str) else spec
        return ENDPOINT_MAX_NEW_TOKENS if isinstance(spec, EndpointSpec) else LOCAL_MAX_NEW_TOKENS

    settings = checked(params, "params")
    explicit = settings.get("max_new_tokens")
    tokens = int(explicit or min(default_tokens(role) for role in used))
    run = replace(GenerationParams(), **{**settings, "max_new_tokens": tokens})
    per_role = {}
    for role in used:
        values = checked(role_generation.get(role, {}), f"role {role}")
        if explicit is None and default_tokens(role) != tokens:
            values = {"max_new_tokens": default_tokens(role), **values}
        if values:
            per_role[role] = replace(run, **values)
    return run, per_role


def score_settings(
    options: ScoreOptions, backend: LocalBackend | None, default_model: str, token: str | None
) -> ScoreSettings:
    """The scorer, prompt renderer and curation that `options` ask for (one spec parser for roles and scorer)."""
    from popalign.pipeline import ScoreSettings
    from popalign.scoring import LocalScorer, TGIScorer

    backend = backend or _local_backend(8)
    spec = parse_spec(options.model or default_model)
    if isinstance(spec, EndpointSpec):
        scorer: Any = TGIScorer(options.model or default_model, token=token)
        template_source = ModelSpec.parse(options.tokenizer).source
    else:
        scorer, template_source = LocalScorer(backend, spec), spec.source
    tokenizer = backend.tokenizer(template_source)

    def render(chat: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return ScoreSettings(
        scorer=scorer, render=render, count_tokens=count_tokens, contrast=options.contrast,
        min_score=options.min_score, swap=options.swap, order=options.order,
    )  # fmt: skip


def judge_settings(
    options: JudgeOptions,
    templates: TemplateSet,
    cache: GenerationCache | None,
    endpoints: Endpoints,
    local: LocalBackend | None,
    batch_size: int,
    progress: bool,
) -> JudgeSettings:
    """The judge `options` ask for: a reward model, or an engine with a `judge` role (sharing `local`, a build's
    local backend, when there is one)."""
    from popalign.engine import Engine
    from popalign.pipeline import JudgeSettings

    if options.reward_model:
        from popalign.reward_model import RewardModel

        model = RewardModel(ModelSpec.parse(options.reward_model), batch_size=batch_size)
        return JudgeSettings(reward_model=model, templates=templates, min_judge=options.min_judge)
    spec = parse_spec(options.model or "")
    endpoint = _endpoint_backend(endpoints) if isinstance(spec, EndpointSpec) else None
    if endpoint is None and local is None:
        local = _local_backend(batch_size)
    params = GenerationParams(max_new_tokens=options.max_new_tokens, temperature=0.0, top_p=1.0, seed=0)
    engine = Engine({"judge": spec}, params, local=local, endpoint=endpoint, cache=cache, progress=progress)
    return JudgeSettings(engine=engine, templates=templates, min_judge=options.min_judge)


def _run_tasks(
    options: dict[str, Any], out: Path, executor: Executor, instructions: int, specs: list[Role]
) -> Build | None:
    from popalign.scale_out import run_tasks, work_folder

    credentials = [key for spec in specs if isinstance(spec, EndpointSpec) for key in spec.credentials]
    if options["endpoints"].token or any(credentials):
        raise ConfigError(
            "--executor writes the command's arguments into the tasks' pickled pipeline: give endpoint keys "
            "through a role's api_key_env or $HF_TOKEN (the tasks inherit the environment), not --token or a URL"
        )
    if executor.tasks > instructions:
        raise ConfigError(f"--tasks {executor.tasks}: more tasks than the {instructions} instructions")
    log.info(f"{executor.tasks} tasks on the {executor.kind} executor; parts and logs in {work_folder(out)}")
    if not run_tasks(options, out, executor):
        return None
    return Build(out, open_manifest(out))


def _path(build: Build | str | Path) -> Path:
    return build.path if isinstance(build, Build) else Path(build)


def _cache(enabled: bool, folder: str | Path | None) -> GenerationCache | None:
    from popalign.cache import GenerationCache, default_cache_dir

    return GenerationCache(Path(folder) if folder else default_cache_dir()) if enabled else None


def _local_backend(batch_size: int) -> LocalBackend:
    from popalign.local_backend import LocalBackend

    return LocalBackend(batch_size=batch_size)


def _endpoint_backend(endpoints: Endpoints) -> EndpointBackend:
    from popalign.endpoint_backend import EndpointBackend, RetryPolicy

    retry = RetryPolicy(attempts=endpoints.retries, max_wait=endpoints.max_retry_wait)
    return EndpointBackend(
        token=endpoints.token, concurrency=endpoints.concurrency, timeout=endpoints.timeout, retry=retry
    )
