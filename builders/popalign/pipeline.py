"""The build: instructions → strategy runs → engine → rows → builder → `data/<strategy>/train-*.parquet` + card."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from popalign.backends import open_backends
from popalign.cache import GenerationCache, open_cache
from popalign.config import MAX_SHARD_SIZE, Card, saved_settings
from popalign.contrasts import STRATEGIES, Dropped, Pair, StrategyContext
from popalign.costs import recorded_prices, usage_record
from popalign.dataset.card import write_card_and_manifest
from popalign.dataset.folder import (
    RECIPE,
    Manifest,
    check_out,
    copy_quality,
    copy_recipe,
    open_manifest,
    staged,
)
from popalign.dataset.records import JudgeRecord, QualityRecord
from popalign.dataset.rows import RowSpool, StrategyOutcome, keep_sides, read_outcomes, require_rows, write_configs
from popalign.dataset.schema import make_row
from popalign.engine import Engine, EngineStats
from popalign.errors import BudgetSpentError, PopAlignError
from popalign.judging import (
    JudgeSettings,
    judge_outcomes,
    judge_settings,
    summarize,
)
from popalign.plan import BuildPlan
from popalign.prompts import BUNDLED_LABEL, PromptSet
from popalign.reasoning import inline
from popalign.roles import check_contrast
from popalign.scoring import ScoreSettings, ScoreStats, score_outcomes, score_settings
from popalign.strategies import begun, roles_used
from popalign.styles import Styles
from popalign.templates import TemplateSet


@dataclass
class BuildSummary:
    """What a build (or a scoring pass) wrote, for the CLI's closing table."""

    out: Path
    outcomes: dict[str, StrategyOutcome]
    roles: dict[str, str]
    duplicates: int
    stats: EngineStats | None
    seconds: float
    quality: dict[str, QualityRecord] = field(default_factory=dict)
    score_stats: ScoreStats | None = None
    judge: JudgeRecord | None = None


def run_plan(plan: BuildPlan, out: Path | None = None, *, progress: bool | None = None) -> BuildSummary:
    """Run a build's plan into `out` (default: the plan's): open the backends its roles need and the cache,
    generate, and write the folder (scored and judged first, when the plan says so)."""
    config = plan.config
    progress = config.progress if progress is None else progress
    engine = open_engine(plan, progress)
    local, templates, generations = engine.backends.get("local"), plan.templates(), engine.cache
    scoring = judging = None
    if config.score:
        scoring = score_settings(config.score, local, str(plan.roles["default"]), config.endpoints)
    if config.judge:
        judging = judge_settings(
            config.judge, templates, generations, config.endpoints, local, config.batch_size, progress
        )
    return build_dataset(
        plan.instructions(),
        strategies=list(plan.strategies),
        engine=engine,
        out=out or plan.out,
        templates=templates,
        scoring=scoring,
        judging=judging,
        keep_truncated=config.keep_truncated,
        styles=config.styles,
        shard_size=config.max_shard_size,
        card=config.card,
        test_size=config.test_size,
        saved=saved_settings(config),
    )


def open_engine(plan: BuildPlan, progress: bool) -> Engine:
    """The engine of a plan: the backends its roles need (and a local one for scoring), the cache, the budget."""
    config = plan.config
    specs = [plan.roles[role] for role in plan.used]
    backends = open_backends(
        specs, batch_size=config.batch_size, endpoints=config.endpoints, kinds=["local"] if config.score else []
    )
    return Engine(
        {role: plan.roles[role] for role in plan.used},
        plan.params,
        backends=backends,
        role_params=dict(plan.role_params),
        cache=open_cache(config.cache, config.cache_dir),
        progress=progress,
        budget=config.budget,
        prices=plan.prices,
        think_tags=config.styles.think_tags,
    )


def strategy_context(
    templates: TemplateSet, engine: Engine, *, keep_truncated: bool, styles: Styles
) -> StrategyContext:
    """What the strategy runs of a build read: its templates, the run's seed, whether cut pairs are kept, the
    styles, and whether the default model prefills."""
    return StrategyContext(
        templates,
        seed=engine.default_params.seed,
        keep_truncated=keep_truncated,
        styles=styles,
        prefill="default" in engine.roles and engine.backend("default").prefills,
    )


def build_dataset(
    prompts: PromptSet,
    *,
    strategies: list[str],
    engine: Engine,
    out: Path,
    templates: TemplateSet,
    scoring: ScoreSettings | None = None,
    judging: JudgeSettings | None = None,
    keep_truncated: bool = False,
    styles: Styles = Styles(),  # noqa: B008 (frozen)
    shard_size: int = MAX_SHARD_SIZE,
    card: Card = Card(),  # noqa: B008 (frozen)
    test_size: float = 0.0,
    saved: Mapping[str, Any] | None = None,
) -> BuildSummary:
    """Generate every strategy's pairs for `prompts` with `engine` and write `out` as a Hub dataset repository
    layout. Pairs with a side cut at the token limit are dropped unless `keep_truncated`; with `scoring` and
    `judging`, the pairs are scored, then judged, before anything is written; the saved recipe records `saved`
    (`config.saved_settings`) beside what ran.

    >>> build_dataset(load_prompts(limit=4), strategies=list(STRATEGIES), engine=engine, ...)  # doctest: +SKIP
    """
    started = time.monotonic()
    check_out(out)
    context = strategy_context(templates, engine, keep_truncated=keep_truncated, styles=styles)
    instructions = prompts.instructions
    planned = {name: STRATEGIES[name].planned(context) for name in strategies}  # requests per instruction, at most
    runs = (
        (name, begun(STRATEGIES[name], instruction, context)) for instruction in instructions for name in strategies
    )
    names: dict[str, str] = {}

    def ready() -> None:  # the roles' identities are known: check the contrasts, name the models in rows
        _check_contrasts(engine, strategies)
        names.update({role: engine.published_name(role) for role in engine.roles})

    outcomes = {name: StrategyOutcome() for name in strategies}
    screening = prompts.screening or {}
    for outcome in outcomes.values():  # an instruction dropped before any request has no pair in any config
        for reason, key in (("contaminated", "contaminated"), ("near-duplicate", "near_duplicates")):
            if screening.get(key):
                outcome.dropped[reason] = screening[key]
    with tempfile.TemporaryDirectory(prefix="popalign-rows-") as spools:
        for name, outcome in outcomes.items():
            outcome.spool = RowSpool(Path(spools) / f"{name}.jsonl")

        preambles: Counter[str] = Counter()  # by strategy: revisions whose announcing opening line was taken off

        def trained(answer: str, trace: str | None) -> str:  # the text a side trains on
            return inline(answer, trace, styles.think_tags) if styles.thinking == "inline" else answer

        def collect(index: int, result: Pair | Dropped) -> None:
            name, instruction = strategies[index % len(strategies)], instructions[index // len(strategies)]
            outcome = outcomes[name]
            if isinstance(result, Dropped):
                outcome.dropped[result.reason] += 1
                return
            outcome.cut_kept += result.truncated
            preambles[name] += result.preamble_removed
            assert outcome.spool is not None
            outcome.spool.add(
                make_row(
                    strategy=name,
                    prompt=instruction.chat(),
                    prompt_id=instruction.prompt_id,
                    chosen=trained(result.chosen, result.chosen_thinking),
                    rejected=trained(result.rejected, result.rejected_thinking),
                    chosen_model=names[result.chosen_role],
                    rejected_model=names[result.rejected_role],
                    chosen_reasoning=result.chosen_reasoning,
                    rejected_reasoning=result.rejected_reasoning,
                    chosen_thinking=result.chosen_thinking,
                    rejected_thinking=result.rejected_thinking,
                )
            )

        engine.run_each(runs, collect, len(instructions) * sum(planned.values()), check=ready, planned=planned)
        if engine.stats.stopped:
            raise BudgetSpentError(budget_line(engine, out))
        for outcome in outcomes.values():
            assert outcome.spool is not None
            outcome.spool.close()
            if scoring or judging:  # they need every row at once
                outcome.rows, outcome.spool = outcome.spool.read(), None
        used_roles = roles_used(strategies)
        manifest = Manifest(
            backend="+".join(sorted({engine.backend_name(role) for role in used_roles})),
            configs={},
            roles={role: names[role] for role in used_roles},
            model_notes={names[role]: model_note(engine, role) for role in used_roles},
            identities={role: engine.identities[role].recorded() for role in used_roles},
            sent={role: engine.sent[role] for role in used_roles if role in engine.sent},
            params=engine.default_params.recorded(),
            role_params={
                role: engine.params[role].recorded()
                for role in used_roles
                if engine.params[role] != engine.default_params
            },
            prompts=prompts.describe(),
            template_hashes=templates.hashes(),
            styles=styles.recorded() | {"prefix_placement": context.prefix_placement},
            keep_truncated=keep_truncated,
            max_shard_size=shard_size,
            license=card.license,
            card=card.recorded(),
            test_size=test_size,
            prices=recorded_prices(engine.prices) if engine.prices else None,
        )
        quality: dict[str, QualityRecord] = {}
        score_stats = None
        require_rows(outcomes, out, engine.stats.failure_lines())
        with staged(out) as folder:
            if scoring:
                quality, score_stats = score_outcomes(outcomes, scoring, context, engine.cache, folder)
                manifest = replace(manifest, score=scoring.describe(), quality=quality)
            if judging:
                manifest = replace(manifest, judge=judge_outcomes(outcomes, judging, folder))
            configs = write_configs(outcomes, folder, shard_size, test_size)
            for name, config in configs.items():
                strategy, counts = STRATEGIES[name], engine.stats.by_strategy[name]
                configs[name] = replace(
                    config,
                    chosen_model=names[strategy.chosen_role],
                    rejected_model=names[strategy.rejected_role],
                    **usage_record(counts.requests, counts.by_role, config.rows, engine.prices),
                    reasoning_tokens=counts.reasoning_tokens or None,  # what a server said were thinking tokens
                    shapes=counts.shapes(),  # answers asked in a shape (a rating): how many came in it
                    preambles_removed=preambles[name] or None,
                )
            manifest = replace(manifest, configs=configs)
            _write_recipe(folder, strategies, engine, prompts, context, templates, card, _saved(saved, test_size))
            write_card_and_manifest(manifest, folder, out)
    return BuildSummary(
        out=out,
        outcomes=outcomes,
        roles=manifest.roles,
        duplicates=prompts.duplicates,
        stats=engine.stats,
        seconds=time.monotonic() - started,
        quality=quality,
        score_stats=score_stats,
        judge=manifest.judge,
    )


def score_dataset(
    out: Path, *, templates: TemplateSet, scoring: ScoreSettings, cache: GenerationCache | None
) -> BuildSummary:
    """Score every config of a built folder, curate and order its rows, and rewrite the folder with a `score`
    column, the quality report (`quality/*.png`) and an updated card.

    >>> score_dataset(Path("popalign-data"), templates=TemplateSet(), scoring=settings, cache=None)  # doctest: +SKIP
    """
    started = time.monotonic()
    manifest = open_manifest(out)
    recorded = manifest.template_hashes  # a template added since the build (the judge's) is not its concern
    changed = [name for name, digest in templates.hashes().items() if recorded.get(name, digest) != digest]
    if changed:
        raise PopAlignError(
            f"{out}: built with other templates ({changed[0]} differs); pass the --templates folder it was built with"
        )
    outcomes = read_outcomes(out, manifest)
    context = StrategyContext(
        templates,
        seed=manifest.params["seed"],
        styles=Styles.from_recorded(manifest.styles),
        prefill=manifest.styles.get("prefix_placement") == "prefill",
    )
    require_rows(outcomes, out)
    with staged(out) as folder:
        copy_quality(out, folder)
        quality, score_stats = score_outcomes(outcomes, scoring, context, cache, folder)
        if manifest.judge:  # the judge's agreement with the new scores
            agreement = {name: summarize(outcomes[name].rows).dlma_agreement for name in manifest.judge.configs}
            judged = {name: replace(s, dlma_agreement=agreement[name]) for name, s in manifest.judge.configs.items()}
            manifest = replace(manifest, judge=replace(manifest.judge, configs=judged))
        configs = keep_sides(
            write_configs(outcomes, folder, manifest.max_shard_size, manifest.test_size), manifest.configs
        )
        manifest = replace(manifest, configs=configs, score=scoring.describe(), quality=quality)
        copy_recipe(out, folder)
        write_card_and_manifest(manifest, folder, out)
    return BuildSummary(
        out=out,
        outcomes=outcomes,
        roles=manifest.roles,
        duplicates=manifest.prompts["duplicates"],
        stats=None,
        seconds=time.monotonic() - started,
        quality=quality,
        score_stats=score_stats,
    )


def judge_dataset(out: Path, *, judging: JudgeSettings) -> BuildSummary:
    """Judge every pair of a built folder (see `popalign.judging`) and rewrite the folder with a `judge_verdict` per
    row and per-strategy accuracies in the manifest and card. A folder judged before is judged again: the newest
    verdicts replace the old, and the card names both judges.

    >>> judge_dataset(Path("popalign-data"), judging=JudgeSettings(reward_model=model))  # doctest: +SKIP
    """
    started = time.monotonic()
    manifest = open_manifest(out)
    outcomes = read_outcomes(out, manifest)
    require_rows(outcomes, out)
    with staged(out) as folder:
        copy_quality(out, folder)
        judge = judge_outcomes(outcomes, judging, folder)
        earlier = [manifest.judge.model, *(manifest.judge.replaced or [])] if manifest.judge else []
        replaced = set(earlier) - {judge.model}
        judge = replace(judge, replaced=sorted(replaced) or None)
        written = write_configs(outcomes, folder, manifest.max_shard_size, manifest.test_size)
        manifest = replace(manifest, configs=keep_sides(written, manifest.configs), judge=judge)
        copy_recipe(out, folder)
        write_card_and_manifest(manifest, folder, out)
    return BuildSummary(
        out=out,
        outcomes=outcomes,
        roles=manifest.roles,
        duplicates=manifest.prompts["duplicates"],
        stats=judging.engine.stats if judging.engine else None,
        seconds=time.monotonic() - started,
        judge=judge,
    )


def model_note(engine: Engine, role: str) -> str:
    """The card's note on a role's model: what it is, and what identified it."""
    return f"{engine.roles[role].describe()}; {engine.identities[role].note()}"


def _write_recipe(
    out: Path,
    strategies: list[str],
    engine: Engine,
    prompts: PromptSet,
    context: StrategyContext,
    templates: TemplateSet,
    card: Card,
    saved: Mapping[str, Any],
) -> None:
    """`popalign_recipe.yaml` and `templates/`: what the build ran with, to publish next to the data: the
    instructions, strategies, styles and card as they ran, then every other setting the build was given
    (`saved`), then the generation settings, roles and templates. Endpoint roles are written by served model name
    (URLs and keys are left out)."""
    roles: dict[str, Any] = {}
    defaults = Card().recorded()
    for role in roles_used(strategies):
        roles[role] = engine.roles[role].recipe_entry(engine.identities.get(role))
        if engine.params[role] != engine.default_params:
            roles[role] = {"spec": roles[role]} if isinstance(roles[role], str) else roles[role]
            roles[role]["generation"] = engine.params[role].recorded()
    ran = {
        **_recipe_prompts(prompts),
        "strategies": strategies,
        **context.styles.recorded(),
        "keep_truncated": context.keep_truncated,
        "license": card.license,
        **{key: value for key, value in card.recorded().items() if value != defaults[key]},
    }
    last = {
        "generation": engine.default_params.recorded(),
        "roles": roles,
        "templates": "templates",
        **({"shard": f"{prompts.shard[0]}/{prompts.shard[1]}"} if prompts.shard else {}),
    }
    given = {key: value for key, value in saved.items() if key not in ran and key not in last}
    recipe = ran | given | last
    (out / RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (out / "templates").mkdir()
    for entry in templates.entries():
        (out / "templates" / entry.name).write_text(templates.source(entry.name), encoding="utf-8")


def _saved(saved: Mapping[str, Any] | None, test_size: float) -> Mapping[str, Any]:
    """What the recipe records of the settings given: `saved`, or where a caller gave none, the test split."""
    return saved if saved is not None else ({"test_size": test_size} if test_size else {})


def _recipe_prompts(prompts: PromptSet) -> dict[str, Any]:
    """How the recipe names the instructions: a file with its digest, or a Hub dataset at its commit; and the
    column, system prompt and `--limit` the build took where it was told them (the bundled demo set is the default,
    and not named)."""
    source: dict[str, Any] = {}
    if prompts.revision:
        source = {"prompts": prompts.source, "prompts_revision": prompts.revision}
    elif prompts.source != BUNDLED_LABEL:
        source = {"prompts": prompts.source, "prompts_sha256": prompts.sha256}
    chosen = {"prompt_column": prompts.column} if prompts.column else {}
    return (
        source
        | chosen
        | ({"system": prompts.system} if prompts.system else {})
        | ({"limit": prompts.limit} if prompts.limit is not None else {})
    )


def budget_line(engine: Engine, out: Path) -> str:
    """Why a build stopped on its budget, and how to go on."""
    budget, stats = engine.budget, engine.stats
    assert budget is not None
    spent = budget.spent(stats.spent, engine.prices)
    return (
        f"{out}: the budget of {budget.shown()} is spent ({budget.shown(spent)} on {stats.generated} requests "
        f"generated, each kept in the cache): nothing was written; rerun with a larger --budget to go on"
    )


def _check_contrasts(engine: Engine, strategies: list[str]) -> None:
    """Refuse a model contrast whose two roles are one model on one server with the same settings, however its
    URLs are spelled: every such pair would be dropped as identical."""
    for name in strategies:
        sides = STRATEGIES[name].chosen_role, STRATEGIES[name].rejected_role
        same_settings = engine.params[sides[0]] == engine.params[sides[1]]
        check_contrast(name, sides, engine.roles, same_settings, engine.identities)
