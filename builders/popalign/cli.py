"""The `popalign` command: `build`, `score`, `templates list`, `templates show`. Errors end as one line, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from popalign.errors import PopAlignError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other popalign error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="popalign", description="Contrastive DPO preference data (PopAlign).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    build = commands.add_parser("build", help="generate pairs and write a dataset folder (Hub layout)")
    build.add_argument(
        "--prompts", type=Path, help=".jsonl, .csv or .parquet of instructions (default: bundled demo set)"
    )
    build.add_argument("--prompt-column", help="column holding the instruction (default: prompt or instruction)")
    build.add_argument("--strategies", default="all", help="comma-separated strategies, or all (default: all)")
    build.add_argument("--limit", type=_positive_int, help="use at most N distinct instructions")
    build.add_argument("--out", type=Path, default=Path("popalign-data"), help="output folder (default: popalign-data)")
    build.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ROLE=SPEC",
        help="model of a role (default, large, small, first, second); repeatable. "
        "With none, the embedded SmolLM2 and weaker copies of it fill every role",
    )
    build.add_argument("--templates", type=Path, help="folder of templates overriding the shipped ones by name")
    build.add_argument("--seed", type=int, default=0, help="sampling and principle-choice seed (default: 0)")
    build.add_argument("--max-new-tokens", type=_positive_int, default=128, help="tokens per answer (default: 128)")
    build.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature; 0 is greedy (default: 0.7)"
    )
    build.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default: 0.9)")
    build.add_argument("--batch-size", type=_positive_int, default=8, help="local generation batch size (default: 8)")
    build.add_argument("--cache-dir", type=Path, help="generation cache folder (default: ~/.cache/popalign)")
    build.add_argument("--no-cache", action="store_true", help="generate everything anew and store nothing")
    build.add_argument("--no-progress", action="store_true", help="hide progress bars")
    build.add_argument("--score", action="store_true", help="score every pair (DLMA self-reward) before writing")
    _add_score_options(build)
    build.set_defaults(func=_build)

    score = commands.add_parser("score", help="add DLMA self-reward scores, curation and a quality report to a build")
    score.add_argument("dir", type=Path, help="a folder written by `popalign build`")
    score.add_argument("--templates", type=Path, help="the templates folder the build used, if any")
    score.add_argument("--batch-size", type=_positive_int, default=8, help="local scoring batch size (default: 8)")
    score.add_argument("--cache-dir", type=Path, help="cache folder (default: ~/.cache/popalign)")
    score.add_argument("--no-cache", action="store_true", help="compute everything anew and store nothing")
    _add_score_options(score)
    score.set_defaults(func=_score)

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
    from popalign.score import ORDERS, PROMPT_CONTRASTS, SWAP_POLICIES

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
    group.add_argument("--token", help="token for the TGI endpoint (default: $HF_TOKEN or the saved login)")
    group.add_argument(
        "--score-contrast",
        choices=PROMPT_CONTRASTS,
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
        "--order", choices=ORDERS, default="generated", help="row order; curriculum = easiest (largest score) first"
    )


def _score_settings(args: argparse.Namespace, backend: Any, default_model: str) -> Any:
    """The scorer, prompt renderer and curation options the flags ask for."""
    from popalign.models import ModelSpec
    from popalign.pipeline import ScoreSettings
    from popalign.score import LocalScorer, TGIScorer

    model = args.score_model or default_model
    if model.startswith(("http://", "https://")):
        scorer = TGIScorer(model, token=args.token or os.environ.get("HF_TOKEN"))
        template_source = ModelSpec.parse(args.score_tokenizer).source
    else:
        spec = ModelSpec.parse(model)
        scorer, template_source = LocalScorer(backend, spec), spec.source
    tokenizer = backend.tokenizer(template_source)

    def render(chat: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

    return ScoreSettings(
        scorer=scorer, render=render, contrast=args.score_contrast, min_score=args.min_score, swap=args.swap,
        order=args.order,
    )  # fmt: skip


def _print_quality(summary: Any) -> None:
    print(f"\n{'strategy':<12} {'rows':>5}  {'agreement':>9}  {'mean score':>10}  curation")
    for name, report in summary.quality.items():
        if not report["rows"]:
            continue
        actions = ", ".join(f"{n} {action}" for action, n in sorted(report["curation"].items())) or "none"
        written = len(summary.outcomes[name].rows)
        print(f"{name:<12} {written:>5}  {report['agreement']:>9.0%}  {report['score_mean']:>10.2f}  {actions}")
    stats = summary.score_stats
    print(f"scored {stats.pairs} pairs from {stats.sequences} sequence log-probs: ", end="")
    print(f"{stats.cached} cached, {stats.computed} computed")


def _score(args: argparse.Namespace) -> int:
    from popalign.cache import GenerationCache, default_cache_dir
    from popalign.pipeline import read_manifest, score_dataset
    from popalign.templates import TemplateSet

    default_model = read_manifest(args.dir)["roles"].get("default", "smollm2")
    templates = TemplateSet(args.templates)
    _quiet_libraries()
    from popalign.local_backend import LocalBackend

    settings = _score_settings(args, LocalBackend(batch_size=args.batch_size), default_model)
    cache = None if args.no_cache else GenerationCache(args.cache_dir or default_cache_dir())
    summary = score_dataset(args.dir, templates=templates, scoring=settings, cache=cache)
    _print_quality(summary)
    print(f"rewrote {summary.out} in {summary.seconds:.0f} s (scores, quality/*.png, README.md)")
    return 0


def _build(args: argparse.Namespace) -> int:
    from popalign.cache import GenerationCache, default_cache_dir
    from popalign.generation import GenerationParams
    from popalign.models import describe_spec, parse_model_args, resolve_roles
    from popalign.prompts import load_prompts
    from popalign.strategies import STRATEGIES, parse_strategies, roles_used
    from popalign.templates import TemplateSet

    strategies = parse_strategies(args.strategies)
    roles = resolve_roles(parse_model_args(args.model), {name: STRATEGIES[name].roles for name in strategies})
    templates = TemplateSet(args.templates)
    prompts = load_prompts(args.prompts, column=args.prompt_column, limit=args.limit)
    params = GenerationParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    print(f"{len(prompts.instructions)} instructions from {prompts.source}; strategies: {', '.join(strategies)}")
    for role in roles_used(strategies):
        print(f"  role {role:<8} {roles[role]}  ({describe_spec(roles[role])})")

    _quiet_libraries()
    from popalign.local_backend import LocalBackend
    from popalign.pipeline import build_dataset

    cache = None if args.no_cache else GenerationCache(args.cache_dir or default_cache_dir())
    backend = LocalBackend(batch_size=args.batch_size)
    summary = build_dataset(
        prompts,
        strategies=strategies,
        roles=roles,
        out=args.out,
        templates=templates,
        params=params,
        backend=backend,
        cache=cache,
        progress=not args.no_progress,
        scoring=_score_settings(args, backend, str(roles["default"])) if args.score else None,
    )
    print(f"\n{'strategy':<12} {'rows':>5}  {'dropped':<28} chosen model → rejected model")
    for name, outcome in summary.outcomes.items():
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(outcome.dropped.items())) or "0"
        strategy = STRATEGIES[name]
        sides = f"{summary.roles[strategy.chosen_role]} → {summary.roles[strategy.rejected_role]}"
        print(f"{name:<12} {len(outcome.rows):>5}  {dropped:<28} {sides}")
    stats = summary.stats
    total = sum(len(outcome.rows) for outcome in summary.outcomes.values())
    if summary.score_stats:
        _print_quality(summary)
    configs = sum(1 for outcome in summary.outcomes.values() if outcome.rows)
    print(
        f"\nwrote {summary.out} ({configs} configs, {total} rows) in {summary.seconds:.0f} s; "
        f"{stats.distinct} distinct requests: {stats.cached} cached, {stats.generated} generated "
        f"({stats.tokens} tokens); {summary.duplicates} duplicate instructions skipped"
    )
    print(f'load with: datasets.load_dataset("{summary.out}", "{next(iter(summary.outcomes))}")')
    return 0


def _quiet_libraries() -> None:
    """Keep the output to popalign's own progress bar and summary."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `popalign` console script."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except PopAlignError as err:
        print(f"popalign: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("popalign: interrupted; finished answers are cached: rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
