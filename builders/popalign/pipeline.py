"""The build: instructions → strategy runs → engine → rows → builder → `data/<strategy>/train-*.parquet` + card."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from popalign.backends import open_backends
from popalign.backends.endpoint import same_server
from popalign.backends.reward_model import pair_chats
from popalign.build_folder import (
    RECIPE,
    Manifest,
    check_out,
    config_files,
    open_manifest,
    staged,
    write_manifest,
)
from popalign.cache import GenerationCache, open_cache
from popalign.card import render_card
from popalign.config import DEFAULT_LICENSE, MAX_SHARD_SIZE
from popalign.engine import Engine, EngineStats
from popalign.errors import PopAlignError, ShardError
from popalign.judging import (
    JUDGE_TEMPLATE,
    JudgeSettings,
    judge_chats,
    judge_run,
    judge_settings,
    logprob_choices,
    margin_verdict,
    summarize,
    verdict,
    write_accuracy_chart,
)
from popalign.plan import BuildPlan
from popalign.prompts import BUNDLED_LABEL, PromptSet
from popalign.quality import OVERVIEW, QUALITY_DIR, quality_report, write_histogram, write_overview
from popalign.row_spool import RowSpool
from popalign.schema import make_row
from popalign.scoring import ScoreSettings, ScoreStats, curate, order_rows, score_rows, score_settings
from popalign.strategies import STRATEGIES, Dropped, Pair, StrategyContext, roles_used
from popalign.templates import TemplateSet


@dataclass
class StrategyOutcome:
    """Rows written and pairs dropped (by reason) for one strategy; `cut_kept` counts pairs kept with a side
    cut at the token limit (`--keep-truncated`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    cut_kept: int = 0
    spool: RowSpool | None = None  # a build's rows, on disk as they finish, where none need to be in memory

    @property
    def count(self) -> int:
        """Rows written (or to be written)."""
        return self.spool.count if self.spool else len(self.rows)

    def truncation(self) -> dict[str, Any]:
        """How many pairs had a side cut at the token limit (dropped or kept), of all pairs made."""
        made = self.count + sum(self.dropped.values())
        cut = self.dropped.get("truncated", 0) + self.cut_kept
        return {"pairs": made, "cut": cut, "rate": round(cut / made, 4) if made else 0.0}


@dataclass
class BuildSummary:
    """What a build (or a scoring pass) wrote, for the CLI's closing table."""

    out: Path
    outcomes: dict[str, StrategyOutcome]
    roles: dict[str, str]
    duplicates: int
    stats: EngineStats | None
    seconds: float
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    score_stats: ScoreStats | None = None
    judge: dict[str, Any] | None = None


def run_plan(plan: BuildPlan, out: Path | None = None, *, progress: bool | None = None) -> BuildSummary:
    """Run a build's plan into `out` (default: the plan's): open the backends its roles need and the cache,
    generate, and write the folder (scored and judged first, when the plan says so)."""
    config = plan.config
    progress = config.progress if progress is None else progress
    specs = [plan.roles[role] for role in plan.used]
    backends = open_backends(
        specs, batch_size=config.batch_size, endpoints=config.endpoints, kinds=["local"] if config.score else []
    )
    generations = open_cache(config.cache, config.cache_dir)
    engine = Engine(
        {role: plan.roles[role] for role in plan.used},
        plan.params,
        backends=backends,
        role_params=dict(plan.role_params),
        cache=generations,
        progress=progress,
    )
    local, templates = backends.get("local"), plan.templates()
    scoring = judging = None
    if config.score:
        scoring = score_settings(config.score, local, str(plan.roles["default"]), config.endpoints.token)
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
        elicitive_style=config.elicitive_style,
        shard_size=config.max_shard_size,
        license=config.license,
        test_size=config.test_size,
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
    elicitive_style: str = "guided",
    shard_size: int = MAX_SHARD_SIZE,
    license: str = DEFAULT_LICENSE,
    test_size: float = 0.0,
) -> BuildSummary:
    """Generate every strategy's pairs for `prompts` with `engine` and write `out` as a Hub dataset repository
    layout. Pairs with a side cut at the token limit are dropped unless `keep_truncated`; with `scoring` and
    `judging`, the pairs are scored, then judged, before anything is written.

    >>> build_dataset(load_prompts(limit=4), strategies=list(STRATEGIES), engine=engine, ...)  # doctest: +SKIP
    """
    started = time.monotonic()
    check_out(out)
    context = StrategyContext(
        templates, seed=engine.default_params.seed, keep_truncated=keep_truncated, elicitive_style=elicitive_style
    )
    instructions = prompts.instructions
    expected = len(instructions) * sum(STRATEGIES[name].requests for name in strategies)
    runs = ((name, STRATEGIES[name].run(instruction, context)) for instruction in instructions for name in strategies)
    names: dict[str, str] = {}

    def ready() -> None:  # the roles' identities are known: check the contrasts, name the models in rows
        _check_contrasts(engine, strategies)
        names.update({role: _published_name(engine, role) for role in engine.roles})

    outcomes = {name: StrategyOutcome() for name in strategies}
    with tempfile.TemporaryDirectory(prefix="popalign-rows-") as spools:
        for name, outcome in outcomes.items():
            outcome.spool = RowSpool(Path(spools) / f"{name}.jsonl")

        def collect(index: int, result: Pair | Dropped) -> None:
            name, instruction = strategies[index % len(strategies)], instructions[index // len(strategies)]
            outcome = outcomes[name]
            if isinstance(result, Dropped):
                outcome.dropped[result.reason] += 1
                return
            outcome.cut_kept += result.truncated
            assert outcome.spool is not None
            outcome.spool.add(
                make_row(
                    strategy=name,
                    instruction=instruction.text,
                    prompt_id=instruction.prompt_id,
                    chosen=result.chosen,
                    rejected=result.rejected,
                    chosen_model=names[result.chosen_role],
                    rejected_model=names[result.rejected_role],
                    chosen_reasoning=result.chosen_reasoning,
                    rejected_reasoning=result.rejected_reasoning,
                )
            )

        engine.run_each(runs, collect, expected, check=ready)
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
            model_notes={names[role]: engine.roles[role].describe() for role in used_roles},
            params=asdict(engine.default_params),
            role_params={
                role: asdict(engine.params[role]) for role in used_roles if engine.params[role] != engine.default_params
            },
            prompts=prompts.describe(),
            template_hashes=templates.hashes(),
            elicitive_style=elicitive_style,
            keep_truncated=keep_truncated,
            max_shard_size=shard_size,
            license=license,
            test_size=test_size,
        )
        quality: dict[str, dict[str, Any]] = {}
        score_stats = None
        _require_rows(outcomes, out)
        with staged(out) as folder:
            if scoring:
                quality, score_stats = _score(outcomes, scoring, context, engine.cache, folder)
                manifest = replace(manifest, score=scoring.describe(), quality=quality)
            if judging:
                manifest = replace(manifest, judge=_judge(outcomes, judging, folder))
            manifest = replace(manifest, configs=_write_configs(outcomes, folder, shard_size, test_size))
            for name, config in manifest.configs.items():
                strategy = STRATEGIES[name]
                config |= {
                    "chosen_model": names[strategy.chosen_role],
                    "rejected_model": names[strategy.rejected_role],
                    "tokens": engine.stats.by_strategy[name].tokens,
                }
            _write_recipe(folder, strategies, engine, prompts, context, license, test_size)
            _write_manifest_and_card(manifest, folder, out)
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
    outcomes = _read_outcomes(out, manifest)
    context = StrategyContext(templates, seed=manifest.params["seed"], elicitive_style=manifest.elicitive_style)
    _require_rows(outcomes, out)
    with staged(out) as folder:
        _copy_quality(out, folder)
        quality, score_stats = _score(outcomes, scoring, context, cache, folder)
        if manifest.judge:
            for name, record in manifest.judge["configs"].items():
                record["dlma_agreement"] = summarize(outcomes[name].rows).dlma_agreement
        configs = _keep_sides(
            _write_configs(outcomes, folder, manifest.max_shard_size, manifest.test_size), manifest.configs
        )
        manifest = replace(manifest, configs=configs, score=scoring.describe(), quality=quality)
        _copy_recipe(out, folder)
        _write_manifest_and_card(manifest, folder, out)
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
    outcomes = _read_outcomes(out, manifest)
    _require_rows(outcomes, out)
    with staged(out) as folder:
        _copy_quality(out, folder)
        judge = _judge(outcomes, judging, folder)
        earlier = manifest.judge or {}
        replaced = dict.fromkeys([earlier.get("model"), *earlier.get("replaced", [])]).keys() - {None, judge["model"]}
        if replaced:
            judge["replaced"] = sorted(replaced)
        written = _write_configs(outcomes, folder, manifest.max_shard_size, manifest.test_size)
        manifest = replace(manifest, configs=_keep_sides(written, manifest.configs), judge=judge)
        _copy_recipe(out, folder)
        _write_manifest_and_card(manifest, folder, out)
    return BuildSummary(
        out=out,
        outcomes=outcomes,
        roles=manifest.roles,
        duplicates=manifest.prompts["duplicates"],
        stats=judging.engine.stats if judging.engine else None,
        seconds=time.monotonic() - started,
        judge=judge,
    )


def merge_builds(parts: list[Path], out: Path) -> BuildSummary:
    """Join the shard folders of one build (`popalign build --shard K/N`, every K once) into one dataset folder.

    The parts must agree on everything but their shard: prompts source, roles, parameters and templates.

    Raises:
        ShardError: the parts are not every shard of one unscored, unjudged build, once each.
        NotABuildError: a part is not a build folder.
    """
    started = time.monotonic()
    manifests = [open_manifest(part) for part in parts]
    first = manifests[0]
    counts = {manifest.prompts.get("shard", "").partition("/")[2] for manifest in manifests}
    if any("shard" not in manifest.prompts for manifest in manifests) or len(counts) != 1:
        raise ShardError(f"{parts[0]}: merge joins the parts of one sharded build (popalign build --shard K/N)")
    for part, manifest in zip(parts, manifests, strict=True):
        for step in ("score", "judge"):
            if getattr(manifest, step) is not None:
                raise ShardError(f"{part}: this part is {step}d; merge the parts before, then run popalign {step}")
        for key in ("backend", "roles", "params", "role_params", "template_hashes", "configs", "test_size"):
            if _agreed(manifest, key) != _agreed(first, key):
                raise ShardError(f"{part}: its {key} differ from those of {parts[0]}; parts of one build must agree")
        keys = ("source", "sha256", "revision", "total")
        if [manifest.prompts.get(key) for key in keys] != [first.prompts.get(key) for key in keys]:
            raise ShardError(f"{part}: built from other prompts than {parts[0]}")
    shards = {manifest.prompts["shard"]: part for part, manifest in zip(parts, manifests, strict=True)}
    count = int(counts.pop())
    if len(shards) != len(parts):
        raise ShardError(f"{parts[-1]}: a shard is given twice (each of 1..{count} once)")
    missing = [f"{k}/{count}" for k in range(1, count + 1) if f"{k}/{count}" not in shards]
    if missing:
        raise ShardError(f"shard {missing[0]} is missing: merge needs all {count} parts")
    if out.resolve() in {part.resolve() for part in parts}:
        raise ShardError(f"{out}: write the merged dataset to a new folder, not into a part")
    check_out(out)
    outcomes = {name: StrategyOutcome() for name in first.configs}
    seen: dict[tuple[str, str], Path] = {}
    for k in range(1, count + 1):
        part = shards[f"{k}/{count}"]
        manifest = manifests[parts.index(part)]
        for name, config in manifest.configs.items():
            outcomes[name].dropped.update(config["dropped"])
            outcomes[name].cut_kept += _cut_kept(config)
            for row in _read_rows(part, name) if config["rows"] else []:
                if (name, row["prompt_id"]) in seen:
                    raise ShardError(
                        f"{part}: {name} row {row['prompt_id'][:12]} is also in {seen[name, row['prompt_id']]}"
                    )
                seen[name, row["prompt_id"]] = part
                outcomes[name].rows.append(row)
    total = sum(manifest.prompts["count"] for manifest in manifests)
    if total != first.prompts["total"]:
        raise ShardError(f"the parts hold {total} instructions but their prompts have {first.prompts['total']}")
    prompts = {key: first.prompts[key] for key in ("source", "sha256", "revision", "limit") if key in first.prompts}
    prompts |= {"count": total, "duplicates": first.prompts["duplicates"]}
    _require_rows(outcomes, out)
    with staged(out) as folder:
        configs = _keep_sides(_write_configs(outcomes, folder, first.max_shard_size, first.test_size), first.configs)
        for name, config in configs.items():
            config["tokens"] = sum(manifest.configs[name].get("tokens", 0) for manifest in manifests)
        manifest = replace(first, prompts=prompts | {"merged_shards": count}, configs=configs)
        _copy_recipe(parts[0], folder, drop_shard=True)
        _write_manifest_and_card(manifest, folder, out)
    return BuildSummary(
        out=out,
        outcomes=outcomes,
        roles=first.roles,
        duplicates=first.prompts["duplicates"],
        stats=None,
        seconds=time.monotonic() - started,
    )


def _published_name(engine: Engine, role: str) -> str:
    """How outputs name a role's model: a local spec by its own name, an endpoint by its served model."""
    return engine.roles[role].published(engine.identities.get(role, ""))


def _keep_sides(configs: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rewritten configs with the models of each side and the tokens generated as an earlier manifest recorded
    them."""
    for name, config in configs.items():
        kept = ("chosen_model", "rejected_model", "tokens")
        config |= {key: before[name][key] for key in kept if key in before[name]}
    return configs


def _read_outcomes(out: Path, manifest: Manifest) -> dict[str, StrategyOutcome]:
    """Every config of a built folder as its rows and drop counts, to rewrite it (score, judge)."""
    return {
        name: StrategyOutcome(
            rows=_read_rows(out, name) if config["rows"] else [],
            dropped=Counter(config["dropped"]),
            cut_kept=_cut_kept(config),
        )
        for name, config in manifest.configs.items()
    }


def _cut_kept(config: dict[str, Any]) -> int:
    """Pairs of a written config kept with a cut side (`--keep-truncated`), from its manifest entry."""
    return config.get("truncation", {}).get("cut", 0) - config["dropped"].get("truncated", 0)


def _copy_recipe(source: Path, folder: Path, *, drop_shard: bool = False) -> None:
    """The recipe and templates of a build (a part's, without its shard, for a merged build) into `folder`."""
    if (source / RECIPE).is_file():
        recipe = yaml.safe_load((source / RECIPE).read_text(encoding="utf-8"))
        if drop_shard:
            recipe.pop("shard", None)
        (folder / RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    if (source / "templates").is_dir():
        shutil.copytree(source / "templates", folder / "templates")


def _copy_quality(source: Path, folder: Path) -> None:
    """A build's charts into `folder` for a rewrite (score, judge): the other step's charts stay, and the
    rewriting step draws its own anew over them."""
    if (source / QUALITY_DIR).is_dir():
        shutil.copytree(source / QUALITY_DIR, folder / QUALITY_DIR)


def _agreed(manifest: Manifest, key: str) -> Any:
    """What parts of one build must share: for `configs`, only which strategies were built."""
    value = getattr(manifest, key)
    return sorted(value) if key == "configs" else value


def _score(
    outcomes: dict[str, StrategyOutcome],
    scoring: ScoreSettings,
    context: StrategyContext,
    cache: GenerationCache | None,
    out: Path,
) -> tuple[dict[str, dict[str, Any]], ScoreStats]:
    """Score all rows in one pass (batched across strategies), report on them, then curate and order them."""
    rows = [row for outcome in outcomes.values() for row in outcome.rows]
    scores, per_token, stats = score_rows(
        rows,
        scorer=scoring.scorer,
        render=scoring.render,
        context=context,
        contrast=scoring.contrast,
        cache=cache,
        count_tokens=scoring.count_tokens,
    )
    for row, score, normalised in zip(rows, scores, per_token, strict=True):
        row["score"], row["score_per_token"] = score, normalised
    quality = {}
    for name, outcome in outcomes.items():
        report = quality_report(outcome.rows, outcome.dropped)
        if outcome.rows:
            report["histogram"] = write_histogram([row["score"] for row in outcome.rows], name, out)
        kept, actions = curate(outcome.rows, min_score=scoring.min_score, swap=scoring.swap)
        report["curation"] = dict(actions)
        outcome.dropped.update({reason: n for reason, n in actions.items() if reason != "swapped"})
        outcome.rows = order_rows(kept, scoring.order)
        quality[name] = report
    return quality, stats


def _judge(outcomes: dict[str, StrategyOutcome], judging: JudgeSettings, out: Path) -> dict[str, Any]:
    """Judge all rows in one pass, summarize each strategy (before `--min-judge` curation), curate, and draw the
    accuracy chart into `out`; return the manifest's `judge` record."""
    rows = [row for outcome in outcomes.values() for row in outcome.rows]
    if judging.reward_model:
        scores = judging.reward_model.scores([chat for row in rows for chat in pair_chats(row)])
        for index, row in enumerate(rows):
            margin = scores[2 * index] - scores[2 * index + 1]
            row["judge_verdict"], row["judge_margin"] = margin_verdict(margin), margin
        judge: dict[str, Any] = {"model": judging.reward_model.name, "kind": "reward-model"}
    else:
        assert judging.engine is not None
        judge = _llm_verdicts(rows, judging.engine, judging.templates)
    summaries = {name: summarize(outcome.rows) for name, outcome in outcomes.items() if outcome.rows}
    judge |= {"min_judge": judging.min_judge, "configs": {name: s.describe() for name, s in summaries.items()}}
    judge["chart"] = write_accuracy_chart(summaries, judge["model"], out)
    if judging.min_judge == "agree":
        for outcome in outcomes.values():
            for row in outcome.rows:
                if row["judge_verdict"] != "chosen":
                    outcome.dropped["judge-failed" if row["judge_verdict"] is None else "judge-disagrees"] += 1
            outcome.rows = [row for row in outcome.rows if row["judge_verdict"] == "chosen"]
    return judge


def _llm_verdicts(rows: list[dict[str, Any]], engine: Engine, templates: TemplateSet) -> dict[str, Any]:
    """Set each row's `judge_verdict` from the engine's `judge` role (None where a request failed for good). A
    local judge's reply that names no choice is read from its log-probabilities of `A` and `B` instead."""
    runs = [(row["strategy"], judge_run(row, templates)) for row in rows]
    answers = engine.run(runs, expected=2 * len(rows))  # each a pair of choices, or Dropped
    if rows and all(isinstance(answer, Dropped) for answer in answers):
        judge = _published_name(engine, "judge")
        raise PopAlignError(f"judge {judge}: every request failed ({engine.stats.last_failure})")
    choices = {(i, order): pair[order] for i, pair in enumerate(answers) if isinstance(pair, tuple) for order in (0, 1)}
    spec, unread = engine.roles["judge"], [key for key, choice in choices.items() if choice is None]
    read: list[str | None] = []
    if spec.kind == "local" and engine.local and unread:
        read = logprob_choices(engine.local, spec, [judge_chats(rows[i], templates)[order] for i, order in unread])
        choices.update(zip(unread, read, strict=True))
    for i, row in enumerate(rows):
        row["judge_verdict"] = verdict(choices[i, 0], choices[i, 1]) if (i, 0) in choices else None
        row["judge_margin"] = None
    return {
        "model": _published_name(engine, "judge"),
        "kind": "llm",
        "template_sha256": templates.hashes()[JUDGE_TEMPLATE],
        "from_logprobs": sum(choice is not None for choice in read),
        "judgements": len(choices),
    }


def _read_rows(out: Path, name: str) -> list[dict[str, Any]]:
    import pyarrow.parquet

    rows = [row for file in config_files(out, name) for row in pyarrow.parquet.read_table(file).to_pylist()]
    defaults = {"swapped": False, "score_per_token": None, "judge_verdict": None, "judge_margin": None}
    return [{**defaults, **row} for row in rows]


def _write_manifest_and_card(manifest: Manifest, folder: Path, out: Path) -> None:
    """The card, then the manifest (last: a folder with a manifest is complete) of the build bound for `out`."""
    manifest = replace(manifest, overview={key: path for key, path in OVERVIEW.items() if (folder / path).is_file()})
    (folder / "README.md").write_text(render_card(manifest, repo_id=_local_name(out)), encoding="utf-8")
    write_manifest(folder, manifest)


def _local_name(out: Path) -> str:
    """How the card names a local build in its loading examples: the path from the working folder when the build
    lies under it, else the folder's name (never an absolute path, which the card would publish)."""
    relative = os.path.relpath(out.absolute())
    return out.name if relative.startswith("..") else relative


def _write_recipe(
    out: Path,
    strategies: list[str],
    engine: Engine,
    prompts: PromptSet,
    context: StrategyContext,
    license: str,
    test_size: float,
) -> None:
    """`popalign_recipe.yaml` and `templates/`: what the build ran with, to publish next to the data. Endpoint
    roles are written by served model name (URLs and keys are left out)."""
    roles: dict[str, Any] = {}
    for role in roles_used(strategies):
        roles[role] = engine.roles[role].recipe_entry(engine.identities.get(role, ""))
        if engine.params[role] != engine.default_params:
            roles[role] = {"spec": roles[role]} if isinstance(roles[role], str) else roles[role]
            roles[role]["generation"] = asdict(engine.params[role])
    recipe = {
        **_recipe_prompts(prompts),
        "strategies": strategies,
        "elicitive_style": context.elicitive_style,
        "keep_truncated": context.keep_truncated,
        "license": license,
        **({"test_size": test_size} if test_size else {}),
        "generation": asdict(engine.default_params),
        "roles": roles,
        "templates": "templates",
        **({"shard": f"{prompts.shard[0]}/{prompts.shard[1]}"} if prompts.shard else {}),
    }
    (out / RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (out / "templates").mkdir()
    for entry in context.templates.entries():
        (out / "templates" / entry.name).write_text(context.templates.source(entry.name), encoding="utf-8")


def _recipe_prompts(prompts: PromptSet) -> dict[str, Any]:
    """How the recipe names the instructions: a file with its digest, or a Hub dataset at its commit; and the
    `--limit` the build took (the bundled demo set is the default, and not named)."""
    source: dict[str, Any] = {}
    if prompts.revision:
        source = {"prompts": prompts.source, "prompts_revision": prompts.revision}
    elif prompts.source != BUNDLED_LABEL:
        source = {"prompts": prompts.source, "prompts_sha256": prompts.sha256}
    return source | ({"limit": prompts.limit} if prompts.limit is not None else {})


def _check_contrasts(engine: Engine, strategies: list[str]) -> None:
    """Refuse a model contrast whose two roles are one model on one server with the same settings, however its
    URLs are spelled: every such pair would be dropped as identical."""
    for name in strategies:
        first, second = STRATEGIES[name].chosen_role, STRATEGIES[name].rejected_role
        a, b = engine.roles[first], engine.roles[second]
        if first == second or not (a.kind == b.kind == "endpoint"):
            continue
        if engine.identities[first] != engine.identities[second] or engine.params[first] != engine.params[second]:
            continue
        shared = [(x, y) for x in a.urls for y in b.urls if same_server(x, y)]
        if shared:
            raise PopAlignError(
                f"strategy {name!r} contrasts roles {first} and {second}, but both are {engine.identities[first]} on "
                f"one server ({shared[0][0]} and {shared[0][1]}) with the same settings: give them different "
                "models or generation parameters"
            )


def _require_rows(outcomes: dict[str, StrategyOutcome], out: Path) -> None:
    if not any(outcome.count for outcome in outcomes.values()):
        raise PopAlignError(
            f"{out}: every pair was dropped, nothing to write (answers are cached; see the drop counts)"
        )


def _write_configs(
    outcomes: dict[str, StrategyOutcome], out: Path, shard_size: int, test_size: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Run the builder for each strategy and place its Parquet under `data/<strategy>/`: `train-00000-of-00001.parquet`
    (and `test-…` with a `test_size`), or `train-0000K-of-0000N.parquet` where a split is larger than `shard_size`
    bytes."""
    from popalign.builder import PopAlign  # datasets loads when there is something to write

    configs: dict[str, dict[str, Any]] = {
        name: {"rows": 0, "dropped": dict(outcome.dropped), "truncation": outcome.truncation()}
        for name, outcome in outcomes.items()
    }
    lengths: dict[str, tuple[list[int], list[int]]] = {}
    with tempfile.TemporaryDirectory(prefix="popalign-") as staging:
        for name, outcome in outcomes.items():
            spool = outcome.spool or RowSpool.of(outcome.rows, Path(staging) / f"{name}.jsonl")
            lengths[name] = (list(spool.words[0]), list(spool.words[1]))
            if not spool.count:
                continue  # `datasets` cannot load a config with no rows: it is reported, not written
            builder = PopAlign(
                config_name=name, rows_file=str(spool.path), test_size=test_size, cache_dir=str(Path(staging) / "cache")
            )
            prepared = Path(staging) / "prepared" / name
            builder.download_and_prepare(output_dir=str(prepared), file_format="parquet", max_shard_size=shard_size)
            (out / "data" / name).mkdir(parents=True)
            for split in ("train", "test"):
                shards = sorted(prepared.glob(f"*-{split}*.parquet"))
                for index, parquet in enumerate(shards):
                    shutil.move(parquet, out / "data" / name / f"{split}-{index:05d}-of-{len(shards):05d}.parquet")
            info = builder.info._to_yaml_dict()
            splits = {split.name: split.num_examples for split in builder.info.splits.values()}
            configs[name] |= {
                "rows": spool.count,
                **({"splits": splits} if test_size else {}),
                **spool.describe(),
                "dataset_info": {key: info[key] for key in ("features", "splits", "dataset_size") if key in info},
            }
    write_overview(lengths, configs, out)
    return configs
