"""A build, resolved and checked once: the `BuildPlan` that `api.build` runs in this process or hands to the
executor, whose every task runs `plan.for_shard(k, n)`.

Resolving a plan reads the instructions (refusing a bad file before any model loads), resolves the roles the
strategies use (the demo roles when none are given, the `planner` following `default`), and gives every role its
generation settings. A task receives the plan itself, so no setting can be left behind on the way to a shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from popalign.backends import check_installed
from popalign.config import BuildConfig, role_defaults
from popalign.contrasts import STRATEGIES
from popalign.costs import Price
from popalign.decontamination import screened
from popalign.errors import ConfigError
from popalign.generation import GenerationParams
from popalign.prompts import PromptSet, is_hub_dataset, load_hub_prompts, load_prompts, parse_shard
from popalign.roles import Spec, check_contrast, resolve_roles
from popalign.strategies import parse_strategies, roles_used
from popalign.templates import TemplateSet

log = logging.getLogger("popalign")


@dataclass(frozen=True)
class BuildPlan:
    """What a build runs: its checked config, the strategies, every used role's spec and generation settings,
    and its instructions (`prompt_set`, this plan's part of them; a Hub dataset pinned at `revision`).

    >>> plan = make_plan(BuildConfig.of(strategies="prefix", roles={"default": "http://localhost:8080"}, limit=4))
    >>> plan.strategies, plan.params.max_new_tokens, plan.for_shard(1, 2).shard
    (('prefix',), 1024, (1, 2))
    """

    config: BuildConfig
    strategies: tuple[str, ...]
    roles: Mapping[str, Spec]
    params: GenerationParams
    role_params: Mapping[str, GenerationParams]
    revision: str | None = None
    total: int = 0
    shard: tuple[int, int] | None = None
    prompt_set: PromptSet | None = field(default=None, repr=False, compare=False)
    #: by role, its price: as given, and a helper role that is the default model at the default's
    prices: Mapping[str, Price] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def used(self) -> list[str]:
        """The roles the strategies generate with."""
        return roles_used(list(self.strategies))

    def templates(self) -> TemplateSet:
        return TemplateSet(self.config.templates)

    def for_shard(self, k: int, n: int) -> BuildPlan:
        """The plan of part `k` of `n` of the instructions (a task of the executor); it loads its own part."""
        return replace(self, shard=(k, n), prompt_set=None, config=replace(self.config, executor=None, push=None))

    def instructions(self) -> PromptSet:
        """This plan's instructions: read at planning, or (a shard's) read now."""
        return self.prompt_set or _load(self.config, self.shard, self.revision)

    def fingerprint(self) -> str:
        """A digest of everything that decides the rows of this build and how it is cut into tasks: strategies,
        roles and their settings, the instructions' content, templates, output settings and the task count. The
        executor keys its parts and completion marks by it, so a rerun with other options never reuses them."""
        prompts = self.instructions()
        config = self.config
        payload = {
            "strategies": self.strategies,
            "roles": {role: [str(spec), getattr(spec, "model", None)] for role, spec in self.roles.items()},
            "params": asdict(self.params),
            "role_params": {role: asdict(params) for role, params in self.role_params.items()},
            "prompts": [prompts.source, prompts.sha256, prompts.revision, prompts.limit, prompts.total],
            "prompt_column": config.prompt_column,
            "system": config.system,
            "templates": self.templates().hashes(),
            "output": [config.keep_truncated, config.test_size, config.max_shard_size],
            "styles": asdict(config.styles),
            "card": asdict(config.card),
            "tasks": config.executor.tasks if config.executor else None,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()

    def describe(self) -> None:
        """Log what the build will do, as the command prints it before generating."""
        prompt_set = self.instructions()
        part = f" (shard {prompt_set.shard[0]}/{prompt_set.shard[1]} of {prompt_set.total})" if prompt_set.shard else ""
        count = len(prompt_set.instructions)
        log.info(f"{count} instructions{part} from {prompt_set.source}; strategies: {', '.join(self.strategies)}")
        for role in self.used:
            log.info(f"  role {role:<8} {self.roles[role]}  ({self.roles[role].describe()})")


def make_plan(config: BuildConfig) -> BuildPlan:
    """Resolve and check a build's config: the strategies, the roles and their generation settings, the
    templates and the instructions (read now, so a bad file is refused before any model loads).

    Raises:
        ConfigError: an unknown strategy, roles a strategy needs are missing, or one model on both sides.
        PromptsError: the instructions file is missing, or a row or column is bad.
        TemplateError: a template of the override folder is bad.
        MissingExtraError: a role's model needs an extra that is not installed.
    """
    names = parse_strategies(config.strategies)
    given = dict(config.roles)
    per_role = {role: dict(values) for role, values in config.role_params.items()}
    for helper in STRATEGIES.helper_roles():
        if helper not in given and "default" in per_role:
            per_role[helper] = per_role["default"]  # a helper role not given is the default model
    used = roles_used(names)
    needs = {name: STRATEGIES[name].roles for name in names}
    resolved = resolve_roles(given, needs)
    check_installed(resolved[role] for role in used)  # a missing extra is said before any file is read
    params, role_params = _generation(config.params, resolved, per_role, used)
    for role in used:
        check_sent(role, resolved[role], role_params.get(role, params))
    for name in names:  # one model with one setting on both sides of a contrast
        if len(needs[name]) == 2:
            first, second = needs[name]
            same = role_params.get(first, params) == role_params.get(second, params)  # as each role runs
            check_contrast(name, (first, second), resolved, same)
    prices = dict(config.prices or {})
    for helper in STRATEGIES.helper_roles():
        if helper in used and helper not in prices and "default" in prices and resolved[helper] == resolved["default"]:
            prices[helper] = prices["default"]  # the default model, at its price
    unpriced = [role for role in used if role not in prices]
    if config.budget and config.budget.money and unpriced:
        raise ConfigError(
            f"budget {config.budget.shown()}: role {unpriced[0]} has no price; give --price {unpriced[0]}=IN,OUT "
            "(per million tokens in and out), or a budget in tokens"
        )
    TemplateSet(config.templates)  # a bad override folder is refused now
    shard = parse_shard(config.shard) if config.shard is not None else None
    prompt_set = _load(config, shard, config.prompts_revision)
    if config.executor and config.executor.tasks > prompt_set.total:
        raise ConfigError(f"tasks {config.executor.tasks}: more tasks than the {prompt_set.total} instructions")
    return BuildPlan(
        config=config,
        strategies=tuple(names),
        roles=resolved,
        params=params,
        role_params=role_params,
        revision=prompt_set.revision or None,
        total=prompt_set.total,
        shard=shard,
        prompt_set=prompt_set,
        prices=prices,
    )


def check_sent(role: str, spec: Spec, params: GenerationParams) -> None:
    """Refuse a setting only endpoints are sent (`GenerationParams.endpoint_only`) on a role that runs in process,
    before any request: it would be recorded and not used."""
    unsent = params.endpoint_only() if not spec.served else []
    if unsent:
        raise ConfigError(
            f"{unsent[0]}: role {role} runs {spec} in process, which has no such setting (endpoints only); leave "
            f"it out, or set it for endpoint roles alone (roles: {role}: generation: in a recipe)"
        )


def _load(config: BuildConfig, shard: tuple[int, int] | None, revision: str | None) -> PromptSet:
    """The plan's instructions (of its shard): screened whole first, where the build decontaminates or drops
    near-duplicates, so every shard drops the same instructions."""
    screening = bool(config.decontaminate or config.near_duplicates)
    prompt_set = _source(
        config.prompts, config.prompt_column, config.limit, None if screening else shard, revision, config.system
    )
    if not screening:
        return prompt_set
    benchmarks = [_source(source, None, None, None, None, None) for source in config.decontaminate]
    return screened(prompt_set, benchmarks, near_duplicates=config.near_duplicates, shard=shard)


def _source(
    prompts: str | Path | None,
    column: str | None,
    limit: int | None,
    shard: tuple[int, int] | None,
    revision: str | None,
    system: str | None,
) -> PromptSet:
    """Instructions from a file (None: the bundled demo set) or a Hub dataset `ORG/NAME[:SPLIT]`, each under a
    `system` turn where given."""
    if isinstance(prompts, str) and is_hub_dataset(prompts):
        return load_hub_prompts(prompts, column=column, limit=limit, shard=shard, revision=revision, system=system)
    path = Path(prompts) if prompts is not None else None
    return load_prompts(path, column=column, limit=limit, shard=shard, system=system)


def _generation(
    params: Mapping[str, int | float],
    roles: Mapping[str, Spec],
    per_role: Mapping[str, Mapping[str, int | float]],
    used: list[str],
) -> tuple[GenerationParams, dict[str, GenerationParams]]:
    """The run's generation settings and each role's own. A setting the run leaves out takes each role's default
    (`config.role_defaults`: 384 tokens on local models and 1024 on endpoints, the demo model's frequency
    penalty): the run records the smallest, and a role whose default differs gets its own; per-role settings win.

    >>> from popalign.roles import parse_spec
    >>> _generation({"temperature": 0}, {"default": parse_spec("http://a:1")}, {}, ["default"])[0].max_new_tokens
    1024
    """
    defaults = {role: role_defaults(roles[role]) for role in used}
    unset = [name for name in defaults[used[0]] if params.get(name) is None]
    run_values = {name: min(values[name] for values in defaults.values()) for name in unset}
    run = replace(GenerationParams(), **{**params, **run_values})
    role_params = {}
    for role in used:
        own = {name: defaults[role][name] for name in unset if defaults[role][name] != run_values[name]}
        values = {**own, **per_role.get(role, {})}
        if values:
            role_params[role] = replace(run, **values)
    return run, role_params
