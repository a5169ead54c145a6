"""The `popalign` command: build, score, judge, push, versions, merge, show, templates. Each is a thin layer over
the Python API (`popalign.api`): parse, call, print. Errors end as one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import popalign
from popalign.build_folder import MAX_SHARD_SIZE
from popalign.errors import ConfigError, PopAlignError
from popalign.generation import ENDPOINT_MAX_NEW_TOKENS, LOCAL_MAX_NEW_TOKENS, check_setting
from popalign.scale_out import EXECUTORS
from popalign.strategies import ELICITIVE_STYLES

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other popalign error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return seconds


def _share(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = math.nan
    if not 0 <= share < 1:
        raise argparse.ArgumentTypeError(f"expected a share 0 <= F < 1, got {text!r}")
    return share


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _size(text: str) -> int:
    """A byte count such as `500MB`, `64KiB` or `1000000`."""
    match = _SIZE.match(text.strip())
    size = int(float(match[1]) * _UNITS[(match[2] or "b").lower()]) if match and text.isascii() else 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 500MB or 64KiB, got {text!r}")
    return size


def _setting(name: str) -> Callable[[str], int | float]:
    """An argparse type for a generation setting, checked against its range (`generation.check_setting`)."""

    def parse(text: str) -> int | float:
        try:
            return check_setting(name, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).partition(": ")[2]) from None

    return parse


def _parser(recipe_defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="popalign", description="Contrastive DPO preference data (PopAlign).")
    parser.add_argument("--version", action="version", version=f"popalign {popalign.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    build = commands.add_parser("build", help="generate pairs and write a dataset folder (Hub layout)")
    build.add_argument(
        "--prompts",
        help=".jsonl, .csv or .parquet of instructions, or a Hub dataset ORG/NAME[:CONFIG][:SPLIT] "
        "(default: bundled demo set)",
    )
    build.add_argument("--prompts-revision", metavar="REV", help="with a Hub dataset: its revision (default: newest)")
    build.add_argument("--prompt-column", help="column holding the instruction (default: prompt or instruction)")
    build.add_argument("--strategies", default="all", help="comma-separated strategies, or all (default: all)")
    build.add_argument("--limit", type=_positive_int, help="use at most N distinct instructions")
    build.add_argument("--out", type=Path, default=Path("popalign-data"), help="output folder (default: popalign-data)")
    build.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ROLE=SPEC",
        help="model of a role (default, large, small, first, second, planner); repeatable. "
        "With none, the embedded SmolLM2 and weaker copies of it fill every role",
    )
    build.add_argument("--templates", type=Path, help="folder of templates overriding the shipped ones by name")
    build.add_argument(
        "--seed", type=_setting("seed"), default=0, help="sampling and principle-choice seed (default: 0)"
    )
    build.add_argument(
        "--max-new-tokens",
        type=_setting("max_new_tokens"),
        help=f"tokens per answer (default: {LOCAL_MAX_NEW_TOKENS} for local models, {ENDPOINT_MAX_NEW_TOKENS} for "
        "endpoints); an answer cut at the limit drops its pair as truncated",
    )
    build.add_argument(
        "--keep-truncated", action="store_true", help="keep pairs with a side cut at the token limit (counted)"
    )
    build.add_argument(
        "--elicitive-style",
        choices=ELICITIVE_STYLES,
        default="guided",
        help="guided: plan, then an answer guided by the plan in a fresh context (works on small models); "
        "paper: the paper's single-turn Thought:/Response: template, for capable models (default: guided)",
    )
    build.add_argument(
        "--temperature",
        type=_setting("temperature"),
        default=0.7,
        help="sampling temperature; 0 is greedy (default: 0.7)",
    )
    build.add_argument("--top-p", type=_setting("top_p"), default=0.9, help="nucleus sampling mass (default: 0.9)")
    build.add_argument("--batch-size", type=_positive_int, default=16, help="local generation batch size (default: 16)")
    build.add_argument("--cache-dir", type=Path, help="generation cache folder (default: ~/.cache/popalign)")
    build.add_argument("--no-cache", action="store_true", help="generate everything anew and store nothing")
    build.add_argument("--no-progress", action="store_true", help="hide progress bars")
    build.add_argument("--recipe", type=Path, help="YAML recipe of roles, strategies, generation, prompts and output")
    build.add_argument(
        "--max-shard-size",
        type=_size,
        default=MAX_SHARD_SIZE,
        metavar="SIZE",
        help="largest Parquet file per config; a larger config is split into train-0000K-of-0000N files "
        "(default: 500MB)",
    )
    build.add_argument(
        "--license",
        default="other",
        metavar="ID",
        help="the card's license (a Hub identifier such as apache-2.0 or cc-by-4.0; default: other); generated text "
        "also follows the generating models' terms",
    )
    build.add_argument(
        "--test-size",
        type=_share,
        default=0.0,
        metavar="F",
        help="put this share of the instructions (all their rows) in a test split beside train (default: 0)",
    )
    build.add_argument("--shard", metavar="K/N", help="build only part K of N of the instructions (see popalign merge)")
    endpoints = build.add_argument_group("endpoints (a role given as http(s) URLs, comma-separated replicas)")
    endpoints.add_argument(
        "--concurrency", type=_positive_int, default=64, help="requests in flight per replica (default: 64)"
    )
    endpoints.add_argument("--retries", type=_positive_int, default=6, help="attempts per request (default: 6)")
    endpoints.add_argument(
        "--max-retry-wait",
        type=_positive_seconds,
        default=120.0,
        help="longest wait a server's Retry-After can ask for; each wait uses up an attempt (default: 120)",
    )
    endpoints.add_argument(
        "--timeout", type=_positive_seconds, default=300.0, help="seconds per request (default: 300)"
    )
    tasks = build.add_argument_group("scale-out (datatrove: one --shard per task, then one merge)")
    tasks.add_argument("--executor", choices=EXECUTORS, help="run the build as --tasks datatrove tasks")
    tasks.add_argument("--tasks", type=_positive_int, default=1, help="shards, one per task (default: 1)")
    tasks.add_argument(
        "--workers", type=_positive_int, help="tasks running at once (default: all; Slurm: the array's limit)"
    )
    tasks.add_argument("--logging-dir", help="datatrove's logs and completion marks (default: beside --out)")
    tasks.add_argument("--slurm-partition", help="Slurm partition of the tasks")
    tasks.add_argument("--slurm-time", default="24:00:00", help="Slurm time limit per task (default: 24:00:00)")
    tasks.add_argument("--slurm-cpus", type=_positive_int, default=4, help="CPUs per Slurm task (default: 4)")
    build.add_argument("--push-to", metavar="ORG/NAME", help="publish the result as a version of this Hub dataset")
    build.add_argument("--version", metavar="X.Y.Z", help="the version to publish with --push-to")
    build.add_argument("--private", action="store_true", help="with --push-to: create the repository private")
    build.add_argument("--force", action="store_true", help="with --push-to: replace an already published version")
    build.add_argument("--score", action="store_true", help="score every pair (DLMA self-reward) before writing")
    _add_score_options(build)
    _add_judge_options(build, required=False)
    build.set_defaults(func=_build, **(recipe_defaults or {}))

    score = commands.add_parser("score", help="add DLMA self-reward scores, curation and a quality report to a build")
    score.add_argument("dir", type=Path, help="a folder written by `popalign build`")
    score.add_argument("--templates", type=Path, help="the templates folder the build used, if any")
    score.add_argument("--batch-size", type=_positive_int, default=8, help="local scoring batch size (default: 8)")
    score.add_argument("--cache-dir", type=Path, help="cache folder (default: ~/.cache/popalign)")
    score.add_argument("--no-cache", action="store_true", help="compute everything anew and store nothing")
    _add_score_options(score)
    score.set_defaults(func=_score)

    push = commands.add_parser("push", help="publish a built folder as a tagged version of a Hub dataset")
    push.add_argument("dir", type=Path, help="a folder written by `popalign build`")
    push.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub dataset repository")
    push.add_argument("--version", required=True, metavar="X.Y.Z", help="the version; tagged vX.Y.Z")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--token", help="Hub token (default: $HF_TOKEN or the saved login)")
    push.add_argument("--force", action="store_true", help="replace an already published version (the newest)")
    push.set_defaults(func=_push)

    versions = commands.add_parser("versions", help="list the published versions of a Hub dataset")
    versions.add_argument("repo", metavar="ORG/NAME", help="the Hub dataset repository")
    versions.add_argument("--token", help="Hub token (default: $HF_TOKEN or the saved login)")
    versions.set_defaults(func=_versions)

    judge = commands.add_parser("judge", help="judge every pair of a build: the paper's accuracy per strategy")
    judge.add_argument("dir", type=Path, help="a folder written by `popalign build`")
    judge.add_argument("--templates", type=Path, help="folder of templates overriding judge_pairwise.jinja")
    judge.add_argument("--batch-size", type=_positive_int, default=16, help="local judging batch size (default: 16)")
    judge.add_argument("--concurrency", type=_positive_int, default=64, help="requests in flight per replica")
    judge.add_argument("--retries", type=_positive_int, default=6, help="attempts per request (default: 6)")
    judge.add_argument("--timeout", type=_positive_seconds, default=300.0, help="seconds per request")
    judge.add_argument("--max-retry-wait", type=_positive_seconds, default=120.0, help="cap on Retry-After")
    judge.add_argument("--token", help="API key for the judge endpoint")
    judge.add_argument("--cache-dir", type=Path, help="generation cache folder (default: ~/.cache/popalign)")
    judge.add_argument("--no-cache", action="store_true", help="judge everything anew and store nothing")
    judge.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_judge_options(judge, required=True)
    judge.set_defaults(func=_judge)

    merge = commands.add_parser("merge", help="join the shard folders of a `build --shard K/N` into one dataset")
    merge.add_argument("dirs", nargs="+", type=Path, help="the part folders, one per shard")
    merge.add_argument("--out", type=Path, required=True, help="folder of the merged dataset")
    merge.set_defaults(func=_merge)

    show = commands.add_parser("show", help="read a build's pairs in the terminal")
    show.add_argument("dir", type=Path, help="a folder written by `popalign build`")
    show.add_argument("config", nargs="?", default="all", help="a strategy's config, or all (default: all)")
    show.add_argument("-n", type=_positive_int, default=5, help="pairs to show (default: 5)")
    show.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COND",
        help="show only pairs meeting FIELD OP VALUE (OP: = != < > <= >=, or ~ for contains), e.g. score<0, "
        "judge_verdict=rejected, chosen~tide; repeatable (all must hold)",
    )
    show.add_argument("--side-by-side", action="store_true", help="chosen and rejected in two columns")
    show.add_argument("--width", type=_positive_int, help="line width (default: the terminal's)")
    show.set_defaults(func=_show)

    templates = commands.add_parser("templates", help="list or show the prompt templates")
    verbs = templates.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    listing = verbs.add_parser("list", help="every template and data file with its sha256")
    listing.add_argument("--templates", type=Path, help="folder of overriding templates")
    listing.set_defaults(func=_templates_list)
    show = verbs.add_parser("show", help="print one template")
    show.add_argument("name", help="template file name, as `templates list` prints it")
    show.add_argument("--templates", type=Path, help="folder of overriding templates")
    show.set_defaults(func=_templates_show)
    return parser


def _add_score_options(parser: argparse.ArgumentParser) -> None:
    from popalign.scoring import ORDERS, SCORE_CONTRASTS, SWAP_POLICIES

    group = parser.add_argument_group("scoring (DLMA self-reward, curation, curriculum)")
    group.add_argument(
        "--score-model",
        metavar="SPEC|URL",
        help="model that scores: a model spec (default: the build's default role) or a TGI endpoint URL",
    )
    group.add_argument(
        "--score-tokenizer",
        default="smollm2",
        metavar="SPEC",
        help="with a TGI URL: the local model spec whose chat template renders prompts (default: smollm2)",
    )
    group.add_argument(
        "--token",
        help="API key for endpoints (default: none; $HF_TOKEN or the saved login go to Hugging Face hosts only)",
    )
    group.add_argument(
        "--score-contrast",
        choices=SCORE_CONTRASTS,
        default="prefix",
        help="prompt pair (x+, x-) for the model and pipeline strategies (default: prefix)",
    )
    group.add_argument("--min-score", type=float, help="drop pairs scoring below this (counted as low-score)")
    group.add_argument(
        "--swap",
        choices=SWAP_POLICIES,
        default="keep",
        help="pairs whose score favours the rejected side: keep, drop, or swap the sides and mark them",
    )
    group.add_argument(
        "--order",
        choices=ORDERS,
        default="generated",
        help="row order; curriculum = easiest (largest per-token score) first",
    )


def _add_judge_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    from popalign.judging import MIN_JUDGE

    group = parser.add_argument_group("judging (the paper's pairwise accuracy per strategy)")
    who = group.add_mutually_exclusive_group(required=required)
    who.add_argument(
        "--judge-model", metavar="SPEC|URL", help="an LLM judge: a local model spec or endpoint URLs (both orders)"
    )
    who.add_argument(
        "--judge-reward-model",
        metavar="SPEC",
        help="a reward-model judge: a transformers sequence-classification model (folder or Hub id)",
    )
    group.add_argument(
        "--judge-max-new-tokens", type=_setting("max_new_tokens"), default=256, help="LLM judge's reply (default: 256)"
    )
    group.add_argument(
        "--min-judge", choices=MIN_JUDGE, help="agree: keep only the pairs the judge agrees with (counted as dropped)"
    )


def _score_options(args: argparse.Namespace) -> Any:
    from popalign.api import ScoreOptions

    return ScoreOptions(
        model=args.score_model, tokenizer=args.score_tokenizer, contrast=args.score_contrast,
        min_score=args.min_score, swap=args.swap, order=args.order,
    )  # fmt: skip


def _judge_options(args: argparse.Namespace) -> Any:
    """The judge the flags name, or None."""
    from popalign.api import JudgeOptions

    if not (args.judge_model or args.judge_reward_model):
        return None
    return JudgeOptions(
        model=args.judge_model, reward_model=args.judge_reward_model, max_new_tokens=args.judge_max_new_tokens,
        min_judge=args.min_judge,
    )  # fmt: skip


def _print_judge(summary: Any) -> None:
    from popalign.judging import PAPER_ACCURACY

    print(f"\n{'strategy':<12} {'judged':>6}  {'accuracy':>8}  {'95% interval':>13}  ties  unparsed  paper (GPT-4)")
    for name, result in summary.judge["configs"].items():
        counts, low_high = result["counts"], result["interval"]
        judged = counts["chosen"] + counts["rejected"] + counts["tie"]
        accuracy = "-" if result["accuracy"] is None else f"{result['accuracy']:.0%}"
        paper = PAPER_ACCURACY["GPT-4"].get(name)
        print(
            f"{name:<12} {judged:>6}  {accuracy:>8}  {low_high[0]:>6.0%}–{low_high[1]:<6.0%}  {counts['tie']:>4}  "
            f"{counts['unparsed']:>8}  {'' if paper is None else f'{paper:.1%}'}"
        )
    failed = sum(result["counts"]["failed"] for result in summary.judge["configs"].values())
    if failed:
        print(f"{failed} pairs not judged: the judge's requests failed (rerun to judge them)")
    if summary.judge["min_judge"]:
        kept = sum(outcome.count for outcome in summary.outcomes.values())
        print(f"--min-judge {summary.judge['min_judge']}: kept {kept} pairs the judge agrees with")
    print(f"judged by {summary.judge['model']} ({summary.judge['kind']})")


def _print_quality(summary: Any) -> None:
    print(f"\n{'strategy':<12} {'rows':>5}  {'agreement':>9}  {'mean score':>10}  curation")
    for name, report in summary.quality.items():
        if not report["rows"]:
            continue
        actions = ", ".join(f"{n} {action}" for action, n in sorted(report["curation"].items())) or "none"
        written = summary.outcomes[name].count
        print(f"{name:<12} {written:>5}  {report['agreement']:>9.0%}  {report['score_mean']:>10.2f}  {actions}")
    stats = summary.score_stats
    print(f"scored {stats.pairs} pairs from {stats.sequences} sequence log-probs: ", end="")
    print(f"{stats.cached} cached, {stats.computed} computed")


def _score(args: argparse.Namespace) -> int:
    from popalign.api import score

    _quiet_libraries()
    built = score(
        args.dir, _score_options(args), templates=args.templates, batch_size=args.batch_size, token=args.token,
        cache_dir=args.cache_dir, cache=not args.no_cache,
    )  # fmt: skip
    _print_quality(built.summary)
    print(f"rewrote {built.path} in {built.summary.seconds:.0f} s (scores, quality/*.png, README.md)")
    return 0


def _build(args: argparse.Namespace) -> int:
    from popalign.api import Endpoints, build
    from popalign.models import parse_model_args
    from popalign.recipe import Recipe
    from popalign.scale_out import Executor
    from popalign.strategies import STRATEGIES

    recipe: Recipe = args.recipe_data
    if bool(args.push_to) != bool(args.version):
        raise ConfigError("--push-to and --version go together")
    if args.push_to:  # checked before generating; the Hub token comes from $HF_TOKEN or the saved login
        from popalign.publish import check_repo_id, parse_version

        check_repo_id(args.push_to)
        parse_version(args.version)
    if args.min_judge and not (args.judge_model or args.judge_reward_model):
        raise ConfigError("--min-judge needs a judge: --judge-model or --judge-reward-model")
    given = parse_model_args(args.model)
    recipe.check_endpoints(given)
    executor = None
    if args.executor:
        executor = Executor(
            kind=args.executor, tasks=args.tasks, workers=args.workers, logging_dir=args.logging_dir,
            slurm_partition=args.slurm_partition, slurm_time=args.slurm_time, slurm_cpus=args.slurm_cpus,
            push_to=args.push_to, version=args.version, private=args.private, force=args.force,
        )  # fmt: skip
    _quiet_libraries()
    generation = ("max_new_tokens", "temperature", "top_p", "seed")
    summary_build = build(
        args.prompts,
        strategies=args.strategies,
        roles=recipe.roles | given,
        out=args.out,
        params={name: getattr(args, name) for name in generation},
        role_params=recipe.role_generation,
        cache_dir=args.cache_dir,
        cache=not args.no_cache,
        templates=args.templates,
        prompt_column=args.prompt_column,
        limit=args.limit,
        prompts_revision=args.prompts_revision,
        shard=args.shard,
        elicitive_style=args.elicitive_style,
        keep_truncated=args.keep_truncated,
        max_shard_size=args.max_shard_size,
        license=args.license,
        test_size=args.test_size,
        batch_size=args.batch_size,
        endpoints=Endpoints(args.concurrency, args.retries, args.timeout, args.max_retry_wait, args.token),
        score=_score_options(args) if args.score else None,
        judge=_judge_options(args),
        executor=executor,
        progress=not args.no_progress,
    )
    if executor:
        if summary_build is None:
            print(f"submitted {args.tasks} Slurm tasks and a merge job that writes {args.out} once they finish")
        else:
            pushed = f"; published to {args.push_to}" if args.push_to else ""
            print(f"merged {args.tasks} parts into {args.out}{pushed}")
        return 0
    assert summary_build is not None and summary_build.summary is not None
    summary = summary_build.summary
    requests = "requests: made cached shared retried failed"
    print(f"\n{'strategy':<12} {'rows':>5}  {'cut':>7}  {'dropped':<34} {requests}")
    for name, outcome in summary.outcomes.items():
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(outcome.dropped.items())) or "0"
        cut = outcome.truncation()
        c = summary.stats.by_strategy[name]
        counts = f"{c.generated:>14} {c.cached:>6} {c.shared:>6} {c.retried:>7} {c.failed:>6}"
        print(f"{name:<12} {outcome.count:>5}  {cut['rate']:>7.0%}  {dropped:<34} {counts}")
    print()
    for name in summary.outcomes:
        strategy = STRATEGIES[name]
        print(f"  {name:<12} {summary.roles[strategy.chosen_role]} → {summary.roles[strategy.rejected_role]}")
    stats = summary.stats
    total = sum(outcome.count for outcome in summary.outcomes.values())
    if summary.score_stats:
        _print_quality(summary)
    if summary.judge:
        _print_judge(summary)
    configs = sum(1 for outcome in summary.outcomes.values() if outcome.count)
    print(
        f"\nwrote {summary.out} ({configs} configs, {total} rows) in {summary.seconds:.0f} s; "
        f"{stats.distinct} distinct requests: {stats.cached} cached, {stats.generated} generated "
        f"({stats.tokens} tokens), {stats.retried} retries; {summary.duplicates} duplicate instructions skipped"
    )
    kept = "kept (--keep-truncated)" if args.keep_truncated else "dropped as truncated"
    print(f"cut: share of pairs with a side stopped at the token limit ({kept})")
    written = [name for name, outcome in summary.outcomes.items() if outcome.count]
    example = "elicitive" if "elicitive" in written else written[0]
    print(f'load with: datasets.load_dataset("{summary.out}")  # every strategy; or one config: "{example}"')
    if args.push_to:
        from popalign.api import push

        _print_push(push(args.out, repo_id=args.push_to, version=args.version, private=args.private, force=args.force))
    return 0


def _push(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from popalign.api import push

    result = push(args.dir, repo_id=args.repo, version=args.version, token=args.token, private=args.private,
                  force=args.force)  # fmt: skip
    _print_push(result)
    return 0


def _print_push(result: Any) -> None:
    kept = f"; kept from earlier versions: {', '.join(result.kept)}" if result.kept else ""
    print(
        f"published {result.repo_id} v{result.version} (commit {result.commit[:12]}): {', '.join(result.rebuilt)}{kept}"
    )
    print(f'load with: datasets.load_dataset("{result.repo_id}", "{result.rebuilt[0]}", revision="v{result.version}")')


def _versions(args: argparse.Namespace) -> int:
    from popalign.api import versions as list_versions

    versions = list_versions(args.repo, token=args.token)
    if not versions:
        print(f"{args.repo}: no published versions")
    for entry in versions:
        configs = ", ".join(
            f"{name} {rows}{'*' if name in entry['changed'] else ''}" for name, rows in entry["configs"].items()
        )
        untagged = "  (untagged: its push stopped before the tag; rerun that push)" if entry.get("untagged") else ""
        print(f"v{entry['version']:<10} {entry['commit'][:12]}  {configs}{untagged}")
    if versions:
        print("(* rebuilt in that version; the others were kept from an earlier one)")
    return 0


def _judge(args: argparse.Namespace) -> int:
    from popalign.api import Endpoints, judge

    _quiet_libraries()
    built = judge(
        args.dir, _judge_options(args), templates=args.templates, batch_size=args.batch_size,
        endpoints=Endpoints(args.concurrency, args.retries, args.timeout, args.max_retry_wait, args.token),
        cache_dir=args.cache_dir, cache=not args.no_cache, progress=not args.no_progress,
    )  # fmt: skip
    _print_judge(built.summary)
    seconds = built.summary.seconds
    print(f"rewrote {built.path} in {seconds:.0f} s (judge_verdict, quality/judge_accuracy.png, README.md)")
    return 0


def _merge(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from popalign.api import merge

    summary = merge(args.dirs, out=args.out).summary
    for name, outcome in summary.outcomes.items():
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(outcome.dropped.items())) or "0"
        print(f"{name:<12} {outcome.count:>6} rows  dropped {dropped}")
    total = sum(outcome.count for outcome in summary.outcomes.values())
    print(f"merged {len(args.dirs)} parts into {summary.out} ({total} rows) in {summary.seconds:.0f} s")
    return 0


def _print_log() -> None:
    """What the library reports while it runs (the `popalign` logger) goes to stdout as plain lines."""
    logger = logging.getLogger("popalign")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _quiet_libraries() -> None:
    """Keep the output to popalign's own progress bar and summary. `datasets` and `transformers` read these
    settings when they are first imported, which an endpoint build puts off until it writes (or never does)."""
    import huggingface_hub

    huggingface_hub.utils.disable_progress_bars()  # transformers follows the Hub's setting
    for name, value in (
        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
        ("DATASETS_VERBOSITY", "error"),
        ("TRANSFORMERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(name, value)


def _show(args: argparse.Namespace) -> int:
    import shutil

    from popalign.show import format_pair, parse_condition, read_pairs

    conditions = [parse_condition(text) for text in args.where]
    width = args.width or shutil.get_terminal_size((100, 24)).columns
    shown = 0
    for row in read_pairs(args.dir, args.config, conditions, args.n):
        print(format_pair(row, width=width, side_by_side=args.side_by_side), end="\n\n")
        shown += 1
    where = f" meeting {' and '.join(args.where)}" if args.where else ""
    print(f"{shown} pair{'' if shown == 1 else 's'} of {args.config}{where}")
    return 0


def _templates_list(args: argparse.Namespace) -> int:
    from popalign.templates import TemplateSet

    for entry in TemplateSet(args.templates).entries():
        origin = f"override {entry.path}" if entry.overridden else "shipped"
        print(f"{entry.name:<24} {entry.sha256[:16]}  {origin:<10} {entry.description}")
    return 0


def _templates_show(args: argparse.Namespace) -> int:
    from popalign.templates import TemplateSet

    print(TemplateSet(args.templates).source(args.name), end="")
    return 0


def _with_recipe(args: argparse.Namespace, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse again with the recipe's values as defaults, so flags given on the command line win."""
    from popalign.recipe import Recipe, load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else Recipe()
    defaults = {key: value if isinstance(value, Path | bool) else str(value) for key, value in recipe.defaults.items()}
    args = _parser(defaults).parse_args(argv)
    args.recipe_data = recipe
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `popalign` console script."""
    args = _parser().parse_args(argv)
    _print_log()
    try:
        if args.command == "build":
            args = _with_recipe(args, argv)
        return args.func(args)
    except PopAlignError as err:
        print(f"popalign: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("popalign: interrupted; finished answers are cached: rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
