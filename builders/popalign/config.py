"""The settings of `popalign build`, declared once (`popalign.declarations`): typed, frozen dataclasses whose
fields carry their help text and their check; the generation settings are `generation.GenerationParams`, the
styles `styles.Styles`, the other commands' `popalign.commands`. The `popalign` parser (`cli.add_settings`), the
recipe keys (`recipe_keys`) and the saved recipe (`saved_settings`) are generated from these declarations, and
`__post_init__` checks every value, so the command line, a recipe and the Python API accept and refuse the same
values with the same line.

Each setting has one flat key, used alike as the flag (`--max-new-tokens`), the recipe key (`max_new_tokens`, the
generation settings under `generation:`) and the Python API's keyword (`popalign.build(..., max_new_tokens=64)`).

>>> Endpoints(concurrency=8).retries
6
>>> Endpoints(concurrency="0")
Traceback (most recent call last):
...
popalign.errors.ConfigError: concurrency: expected a whole number >= 1, got 0
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from popalign.contrasts import check_role
from popalign.costs import Budget, Price, parse_budget, parse_prices
from popalign.declarations import (
    FLAG,
    NUMBER,
    PATH,
    POSITIVE,
    SECONDS,
    SHARD,
    SHARE,
    SIZE,
    SOURCES,
    TEXT,
    Check,
    check_fields,
    checked,
    checked_values,
    declared,
    key_of,
    one_of,
    setting,
    unknown_setting,
)
from popalign.errors import ConfigError
from popalign.generation import ENDPOINT_MAX_NEW_TOKENS, LOCAL_MAX_NEW_TOKENS, OFF_VALUES, GenerationParams
from popalign.roles import EMBEDDED, Spec, parse_spec
from popalign.styles import Styles

#: The largest Parquet file per config; a larger config is split into `train-0000K-of-0000N` files.
MAX_SHARD_SIZE = 500 * 1000 * 1000
#: The card's license unless one is given: the generated text follows the generating models' terms, which the
#: build's LICENSE.md names (the Hub's card asks a `license: other` for a `license_name` and a `license_link`).
DEFAULT_LICENSE = "other"
DEFAULT_LICENSE_NAME = "generating-models-terms"
LICENSE_FILE = "LICENSE.md"

SCORE_CONTRASTS = ("prefix", "demon")
#: How a served scoring model is asked for prompt log-probs (see `popalign.backends.endpoint_scorer`).
SCORE_PROTOCOLS = ("auto", "tgi", "vllm", "sglang")
SWAP_POLICIES = ("keep", "drop", "swap")
ORDERS = ("generated", "curriculum")
MIN_JUDGE = ("agree",)
EXECUTORS = ("local", "slurm", "ray")


def _prices(value: Any) -> dict[str, Price]:
    """Prices by role (`costs.parse_prices`), of roles a strategy names."""
    prices = parse_prices(value)
    for role in prices:
        check_role(role, "price")
    return prices


PRICES = Check(
    dict, "ROLE=IN,OUT: a role's price per million tokens in and out", convert=_prices, metavar="ROLE=IN,OUT"
)
BUDGET = Check(Budget, "a number of tokens, or an amount such as $5", convert=parse_budget, metavar="TOKENS|$AMOUNT")
LICENSE = Check(
    str,
    "a license identifier such as apache-2.0, mit or cc-by-4.0",
    lambda value: bool(re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", value)),
)
VERSION = Check(str, "a version X.Y.Z", lambda value: bool(re.fullmatch(r"\d+\.\d+\.\d+", value)))
LANGUAGES = Check(
    str,
    "language codes separated by commas, such as en or en,fr",
    lambda value: all(re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", code.strip()) for code in value.split(",")),
    metavar="CODES",
)


@dataclass(frozen=True)
class Endpoints:
    """How endpoint roles (and an endpoint judge or scorer) are called: requests in flight per replica,
    attempts per request, seconds per request, the longest `Retry-After` honoured, the requests and tokens per
    minute each endpoint model is sent at most, whether the requests in flight adapt to the server
    (`backends.pace`), and an API key (default: none; `$HF_TOKEN` or the saved login go to Hugging Face hosts
    only)."""

    concurrency: int = setting(64, check=POSITIVE, help="requests in flight per endpoint replica")
    retries: int = setting(6, check=POSITIVE, help="attempts per endpoint request")
    timeout: float = setting(300.0, check=SECONDS, help="deadline in seconds for each whole endpoint request")
    max_retry_wait: float = setting(
        120.0, check=SECONDS, help="longest wait a server's Retry-After can ask for; each wait uses up an attempt"
    )
    rpm: int | None = setting(
        None, check=POSITIVE, help="requests per minute each endpoint model is sent at most (a hosted API's limit)"
    )
    tpm: int | None = setting(
        None, check=POSITIVE, help="tokens per minute, prompt and answer, each endpoint model is sent at most"
    )
    adaptive_concurrency: bool = setting(
        False,
        check=FLAG,
        help="adapt the requests in flight to what each endpoint takes: halve on 429 or 503, grow while answers "
        "come clean, up to --concurrency per replica",
    )
    token: str | None = setting(
        None,
        check=TEXT,
        recipe=False,
        help="API key for endpoints (default: none; $HF_TOKEN or the saved login go to Hugging Face hosts only)",
    )

    def __repr__(self) -> str:  # the key never reaches a log or an error
        shown = ", ".join(f"{item.name}={getattr(self, item.name)!r}" for item in fields(self) if item.name != "token")
        return f"Endpoints({shown})"

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ScoreOptions:
    """DLMA self-reward scoring: the scoring model (a spec or a served model's URL; default: the build's `default`
    role), how a served one is asked for prompt log-probs, the local spec whose chat template renders its prompts,
    the contrastive prompt pair of the model and pipeline strategies, and the curation (`min_score`, `swap`,
    `order`)."""

    model: str | None = setting(
        None,
        key="score_model",
        check=TEXT,
        metavar="SPEC|URL",
        help="model that scores: a model spec (default: the build's default role) or a TGI, vLLM or SGLang URL",
    )
    protocol: str = setting(
        "auto",
        key="score_protocol",
        check=one_of(SCORE_PROTOCOLS),
        help="with a URL: how prompt log-probs are asked (auto: from the routes the server answers)",
    )
    tokenizer: str = setting(
        EMBEDDED,
        key="score_tokenizer",
        check=TEXT,
        metavar="SPEC",
        help="with a URL: the local model spec whose chat template renders prompts",
    )
    contrast: str = setting(
        "prefix",
        key="score_contrast",
        check=one_of(SCORE_CONTRASTS),
        help="prompt pair (x+, x-) for the model and pipeline strategies",
    )
    min_score: float | None = setting(None, check=NUMBER, help="drop pairs scoring below this (counted as low-score)")
    swap: str = setting(
        "keep",
        check=one_of(SWAP_POLICIES),
        help="pairs whose score favours the rejected side: keep, drop, or swap the sides and mark them",
    )
    order: str = setting(
        "generated", check=one_of(ORDERS), help="row order; curriculum = easiest (largest per-token score) first"
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class JudgeOptions:
    """A judge: an LLM (`model`, a spec or endpoint URLs, asked in both orders) or a reward model
    (`reward_model`, a sequence-classification model); `min_judge="agree"` keeps only the pairs it agrees with."""

    model: str | None = setting(
        None,
        key="judge_model",
        check=TEXT,
        metavar="SPEC|URL",
        help="an LLM judge: a local model spec or endpoint URLs (both orders)",
    )
    reward_model: str | None = setting(
        None,
        key="judge_reward_model",
        check=TEXT,
        metavar="SPEC",
        help="a model judge (folder or Hub id): a reward model (a transformers sequence-classification model with one "
        "label, scoring each side) or a PairRM pairwise ranker such as llm-blender/PairRM-hf (found by its "
        "architecture, reading both sides at once: the paper's second judge)",
    )
    max_new_tokens: int = setting(256, key="judge_max_new_tokens", check=POSITIVE, help="the LLM judge's reply")
    min_judge: str | None = setting(
        None,
        check=one_of(MIN_JUDGE),
        help="agree: keep only the pairs the judge agrees with (counted as dropped)",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if bool(self.model) == bool(self.reward_model):
            raise ConfigError("a judge is an LLM (judge_model) or a reward model (judge_reward_model): give one")


@dataclass(frozen=True)
class Card:
    """What the dataset card says of the data besides its rows: its license (with `other`, the license's id and
    where its text is), its languages and its title; recorded in the manifest, so a push writes the same card."""

    license: str = setting(
        DEFAULT_LICENSE,
        check=LICENSE,
        metavar="ID",
        help="the card's license (a Hub identifier such as apache-2.0 or cc-by-4.0); generated text also follows "
        "the generating models' terms",
    )
    license_name: str = setting(
        DEFAULT_LICENSE_NAME,
        check=LICENSE,
        metavar="ID",
        help="with --license other: the license's id on the card",
    )
    license_link: str = setting(
        LICENSE_FILE,
        check=TEXT,
        metavar="URL|FILE",
        help=f"with --license other: a URL of the license's text, or {LICENSE_FILE}, which the build writes "
        "(naming the generating models)",
    )
    language: str = setting("en", check=LANGUAGES, help="the language codes of the instructions and answers")
    pretty_name: str = setting(
        "PopAlign contrastive preference pairs", check=TEXT, metavar="TEXT", help="the card's title"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.license != DEFAULT_LICENSE and (self.license_name, self.license_link) != (
            DEFAULT_LICENSE_NAME,
            LICENSE_FILE,
        ):
            raise ConfigError(f"license_name and license_link are for license other, not {self.license}")

    def recorded(self) -> dict[str, str]:
        """What the manifest records (the license itself has its own key there)."""
        return {item.name: getattr(self, item.name) for item in fields(self) if item.name != "license"}

    @property
    def languages(self) -> list[str]:
        return [code.strip() for code in self.language.split(",")]


#: What publishing (and a training mixture) may do with readers' flags (`popalign review`).
FLAG_USES = ("ignore", "apply")


@dataclass(frozen=True)
class Push:
    """Publishing a finished build: the Hub dataset, the version (tagged `vX.Y.Z`), a private repository, and
    whether an already published version is replaced."""

    repo_id: str = setting(
        MISSING,
        key="push_to",
        check=TEXT,
        metavar="ORG/NAME",
        help="publish the result as a version of this Hub dataset",
    )
    release: str = setting(MISSING, check=VERSION, metavar="X.Y.Z", help="the version to publish, tagged vX.Y.Z")
    private: bool = setting(False, check=FLAG, help="create the repository private")
    force: bool = setting(False, check=FLAG, help="replace an already published version (the newest)")
    flags: str = setting(
        "ignore",
        check=one_of(FLAG_USES),
        help="readers' flags (popalign review): apply publishes without the pairs flagged bad and with the sides "
        "of those flagged swapped exchanged; the card says so",
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Executor:
    """How to run a build as `tasks` datatrove tasks (`kind`: local, slurm or ray; `workers` at once, default
    all), where datatrove logs (default: beside `out`), and the Slurm settings."""

    kind: str = setting(
        "local", key="executor", check=one_of(EXECUTORS), help="run the build as --tasks datatrove tasks"
    )
    tasks: int = setting(1, check=POSITIVE, help="shards, one per task")
    workers: int | None = setting(
        None, check=POSITIVE, help="tasks running at once (default: all; Slurm: the array's limit)"
    )
    logging_dir: str | None = setting(
        None, check=TEXT, help="datatrove's logs and completion marks (default: beside --out)"
    )
    slurm_partition: str | None = setting(None, check=TEXT, help="Slurm partition of the tasks")
    slurm_time: str = setting("24:00:00", check=TEXT, help="Slurm time limit per task")
    slurm_cpus: int = setting(4, check=POSITIVE, help="CPUs per Slurm task")

    def __post_init__(self) -> None:
        check_fields(self)


GROUPS: dict[str, type] = {
    "params": GenerationParams,
    "endpoints": Endpoints,
    "card": Card,
    "styles": Styles,
    "score": ScoreOptions,
    "judge": JudgeOptions,
    "push": Push,
    "executor": Executor,
}


def check_cache_outside(cache_dir: str | Path | None, out: Path) -> None:
    """Refuse a cache inside the build folder: each build, score or judge replaces that folder whole.

    >>> check_cache_outside("d/cache", Path("d"))
    Traceback (most recent call last):
    popalign.errors.ConfigError: cache_dir: d/cache is inside the output folder d, which every build, score and \
judge replaces whole; give a folder outside it
    """
    if cache_dir is not None and Path(cache_dir).resolve().is_relative_to(out.resolve()):
        raise ConfigError(
            f"cache_dir: {cache_dir} is inside the output folder {out}, which every build, score and judge replaces "
            "whole; give a folder outside it"
        )


@dataclass(frozen=True)
class BuildConfig:
    """Everything `popalign build` is told, checked: where the instructions come from, which strategies and
    roles, the output, and the settings groups (generation, endpoints, scoring, judging, publishing, executor).

    Build one from flat keys as a user gives them with `BuildConfig.of(**settings)`.

    >>> BuildConfig.of(strategies="prefix", temperature=0, concurrency=8).endpoints.concurrency
    8
    >>> BuildConfig.of(roles={"defualt": "http://localhost:8080"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    popalign.errors.ConfigError: roles: unknown role 'defualt' (known: default, large, small, ..., teacher)
    """

    prompts: str | Path | None = setting(
        None,
        check=Check(str, "a file or a Hub dataset ORG/NAME", lambda value: bool(str(value).strip())),
        metavar="FILE|ORG/NAME",
        saved=False,  # recorded by name and digest, or at the commit read
        help=".jsonl, .csv or .parquet of instructions, or a Hub dataset ORG/NAME[:CONFIG][:SPLIT] "
        "(default: the bundled demo set)",
    )
    prompts_revision: str | None = setting(
        None, check=TEXT, metavar="REV", saved=False, help="with a Hub dataset: its revision (default: newest)"
    )
    prompt_column: str | None = setting(
        None,
        check=TEXT,
        help="column holding the instruction: text, an HH-RLHF transcript, a messages list or ShareGPT's conversations "
        "(default: the first of prompt, instruction, messages, conversations, chosen)",
    )
    system: str | None = setting(
        None,
        check=TEXT,
        metavar="TEXT",
        help="a system prompt every instruction is given (before a conversation's own system turn)",
    )
    strategies: str | tuple[str, ...] = setting(
        "paper",
        help="comma-separated strategies; paper: the paper's six (prefix, demon, elicitive, nparam, leaderboard, "
        "refine); all: every installed strategy (also bestofn, temperature, teacher and any plugin's)",
    )
    limit: int | None = setting(None, check=POSITIVE, metavar="N", help="use at most N distinct instructions")
    out: Path = setting(Path("popalign-data"), check=PATH, metavar="DIR", saved=False, help="output folder")
    roles: Mapping[str, str | Spec] = setting(
        None,
        key="model",
        recipe=False,
        metavar="ROLE=SPEC",
        help="model of a role (default, large, small, first, second, planner, reviser, teacher, ranker, or a "
        "plugin strategy's); repeatable. With none, the "
        "embedded SmolLM2 and weaker copies of it fill every role",
    )
    role_params: Mapping[str, Mapping[str, Any]] = setting(
        None, cli=False, recipe=False, help="per role, generation settings that override the run's"
    )
    templates: Path | None = setting(
        None,
        check=PATH,
        metavar="DIR",
        saved=False,  # the templates the build used are saved beside its recipe
        help="folder of templates overriding the shipped ones by name",
    )
    keep_truncated: bool = setting(False, check=FLAG, help="keep pairs with a side cut at the token limit (counted)")
    batch_size: int = setting(16, check=POSITIVE, saved=False, help="local generation batch size")
    cache_dir: Path | None = setting(
        None, check=PATH, metavar="DIR", saved=False, help="generation cache folder (default: ~/.cache/popalign)"
    )
    cache: bool = setting(
        True, check=FLAG, recipe=False, negated="no_cache", help="generate everything anew and store nothing"
    )
    progress: bool = setting(True, check=FLAG, recipe=False, negated="no_progress", help="hide progress bars")
    max_shard_size: int = setting(
        MAX_SHARD_SIZE,
        check=SIZE,
        metavar="SIZE",
        help="largest Parquet file per config; a larger config is split into train-0000K-of-0000N files "
        "(default: 500MB)",
    )
    test_size: float = setting(
        0.0,
        check=SHARE,
        metavar="F",
        help="put this share of the instructions (all their rows) in a test split beside train",
    )
    shard: str | None = setting(
        None, check=SHARD, metavar="K/N", help="build only part K of N of the instructions (see popalign merge)"
    )
    decontaminate: tuple[str, ...] = setting(
        (),
        check=SOURCES,
        repeat=True,
        recipe=False,
        metavar="FILE|ORG/NAME[:SPLIT]",
        help="drop the instructions close to a prompt of this benchmark (a file in a format --prompts reads, or a Hub "
        "dataset) before any request, as contaminated (datatrove's MinHash); repeatable",
    )
    near_duplicates: bool = setting(
        False,
        check=FLAG,
        help="drop the instructions close to an earlier one of the input (datatrove's MinHash), as near-duplicate",
    )
    prices: Mapping[str, Price] | None = setting(
        None,
        key="price",
        check=PRICES,
        repeat=True,
        help="a role's price per million tokens in (prompt) and out (answer), such as default=0.15,0.6; repeatable. "
        "The summary, manifest and card then give each strategy's cost per kept pair",
    )
    dry_run: bool = setting(
        False,
        check=FLAG,
        recipe=False,
        help="write nothing: build a sample of the instructions (--dry-run-sample) and estimate the requests, tokens, "
        "kept pairs and cost of the whole build from it (its answers are cached, for the build that follows)",
    )
    dry_run_sample: int = setting(
        8, check=POSITIVE, recipe=False, help="instructions a --dry-run builds, evenly spaced through the input"
    )
    budget: Budget | None = setting(
        None,
        check=BUDGET,
        saved=False,
        help="stop generating once this run has spent this many tokens, or this amount at the --price of each role "
        "(answers from the cache are free); what was answered stays cached, and a rerun with a larger budget resumes",
    )
    params: Mapping[str, Any] = field(default_factory=dict)
    endpoints: Endpoints = field(default_factory=Endpoints)
    card: Card = field(default_factory=Card)
    styles: Styles = field(default_factory=Styles)
    score: ScoreOptions | None = setting(
        None, switch=True, help="score every pair (DLMA self-reward) before writing (see the scoring settings)"
    )
    judge: JudgeOptions | None = None
    push: Push | None = None
    executor: Executor | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if not isinstance(self.strategies, str):
            if not isinstance(self.strategies, list | tuple):
                raise ConfigError(f"strategies: expected names or a comma-separated text, got {self.strategies!r}")
            object.__setattr__(self, "strategies", ",".join(map(str, self.strategies)))
        if not isinstance(self.roles or {}, Mapping) or not isinstance(self.role_params or {}, Mapping):
            raise ConfigError("roles: expected a mapping of role to model spec or endpoint URLs")
        roles = dict(self.roles or {})
        for role in [*roles, *(self.role_params or {})]:
            check_role(role)
        object.__setattr__(self, "roles", {role: _spec(spec) for role, spec in roles.items()})
        object.__setattr__(self, "params", _generation(self.params, ""))
        object.__setattr__(
            self,
            "role_params",
            {role: _generation(values, f"role {role}: ") for role, values in (self.role_params or {}).items()},
        )
        check_cache_outside(self.cache_dir, Path(self.out))
        if self.executor and self.shard is not None:
            raise ConfigError("shard and executor do not go together: the executor gives each task its shard")
        if self.executor and (self.score or self.judge):
            raise ConfigError("executor builds the data; score or judge the merged folder after")
        if self.executor and self.budget:
            raise ConfigError("budget and executor do not go together: every task would spend a budget of its own")
        if self.dry_run and (self.executor or self.push):
            raise ConfigError("dry_run writes nothing and runs here: leave out executor and push_to")

    @classmethod
    def of(cls, **settings: Any) -> BuildConfig:
        """A build's config from flat keys (`temperature=0`, `concurrency=8`, `judge_model=URL`) and/or whole
        groups (`params={...}`, `endpoints=Endpoints(...)`, `score=True` or `ScoreOptions(...)`); every value is
        checked, and a key nobody declared is refused with the nearest known one."""
        index = settings_index()
        top: dict[str, Any] = {}
        flat: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        for key, value in settings.items():
            if key in GROUPS and not (key == "executor" and isinstance(value, str)):
                top[key] = value
            elif key in index:
                group, name = index[key]
                (top if group is None else flat[group])[name] = value
            else:
                raise ConfigError(unknown_setting(key, [*index, *GROUPS]))
        top["params"] = {**_generation(top.get("params") or {}, ""), **flat.pop("params")}
        for group, values in flat.items():
            top[group] = _group(group, top.get(group), values)
        groups = {key for key in GROUPS if top.get(key) is None}  # a group not given takes its default
        return cls(**{key: value for key, value in top.items() if key not in groups})


def _generation(values: Mapping[str, Any] | GenerationParams, where: str) -> dict[str, Any]:
    """Generation settings as a checked partial override (a whole `GenerationParams` gives every one)."""
    if isinstance(values, GenerationParams):
        return {item.name: getattr(values, item.name) for item in fields(values)}
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{where}generation: expected a mapping of {', '.join(f.name for f in fields(GenerationParams))}"
        )
    return checked_values(GenerationParams, values, where)


#: Of a group given by flat keys alone, the setting that must be among them (the others only refine it).
_NAMED_BY = {"executor": "kind", "push": "repo_id", "judge": None, "endpoints": None, "card": None, "styles": None}
#: The groups that are always there, with their defaults where none of their settings is given.
_ALWAYS = ("endpoints", "card", "styles")


def _group(group: str, whole: Any, values: dict[str, Any]) -> Any:
    """One settings group from a whole object (or `True`: the defaults) and the flat keys given beside it."""
    cls = GROUPS[group]
    if whole is None or whole is False:
        needed = _NAMED_BY.get(group, "")
        if values and needed is not None and needed not in values:
            named = "score" if group == "score" else _key(cls, needed)
            raise ConfigError(f"{_key(cls, next(iter(values)))}: given without {named}")
        if not values:
            return cls() if group in _ALWAYS else None
        whole = {}
    if whole is True:
        whole = {}
    if isinstance(whole, cls):
        return replace(whole, **values) if values else whole
    if not isinstance(whole, Mapping):
        raise ConfigError(f"{group}: expected {cls.__name__}, got {type(whole).__name__}")
    given = {**whole, **values}
    missing = [_key(cls, item.name) for item in declared(cls) if item.default is MISSING and item.name not in given]
    if missing:
        raise ConfigError(f"{_key(cls, next(iter(given)))} needs {' and '.join(missing)}")
    return cls(**given)


def _field(cls: type, name: str) -> Field[Any]:
    return next(item for item in fields(cls) if item.name == name)


def _key(cls: type, name: str) -> str:
    return key_of(_field(cls, name))


def _spec(spec: str | Spec) -> Spec:
    return parse_spec(spec) if isinstance(spec, str) else spec


def settings_index() -> dict[str, tuple[str | None, str]]:
    """Every flat key, with the `BuildConfig` group that holds it (None: `BuildConfig` itself) and its field."""
    index: dict[str, tuple[str | None, str]] = {item.name: (None, item.name) for item in declared(BuildConfig)}
    index |= {key_of(item): (None, item.name) for item in declared(BuildConfig)}
    for group, cls in GROUPS.items():
        index |= {key_of(item): (group, item.name) for item in declared(cls)}
    return index


def check_setting(key: str, value: Any) -> Any:
    """One flat setting's value, typed and checked as its declaration says (a recipe's values, one by one)."""
    index = settings_index()
    if key not in index:
        raise ConfigError(unknown_setting(key, index))
    group, name = index[key]
    return checked(_field(GROUPS[group] if group else BuildConfig, name), value)


#: The groups a saved recipe leaves out: where a build publishes and how it runs are not what it made.
_NOT_SAVED = ("push", "executor", "endpoints")


def saved_settings(config: BuildConfig) -> dict[str, Any]:
    """The settings a build's saved recipe records, by recipe key, as YAML holds them: every recipe setting not at
    its default, but those declared `saved=False` and the publishing, executor and endpoint groups; the generation
    settings and roles are recorded apart (`generation:`, `roles:`), and scoring or judging by a model given as a
    URL is left out whole, as a role's URL is (a rebuild scores or judges only as it is told again).

    >>> saved_settings(BuildConfig.of(near_duplicates=True, price={"default": "1,2"}, out="elsewhere"))
    {'near_duplicates': True, 'price': {'default': '1,2'}}
    """
    served = {group for group in ("score", "judge") if "://" in str(getattr(getattr(config, group), "model", ""))}
    saved: dict[str, Any] = {}
    for key, (group, name) in settings_index().items():
        if group in ("params", *_NOT_SAVED, *served) or (group is None and name in served):
            continue
        item = _field(GROUPS[group] if group else BuildConfig, name)
        holder = config if group is None else getattr(config, group)
        if key != key_of(item) or holder is None or not item.metadata["recipe"] or not item.metadata["saved"]:
            continue
        value = getattr(holder, name)
        if value != item.default and value is not None:
            saved[key] = _as_recorded(value)
    return saved


def _as_recorded(value: Any) -> Any:
    """A setting's value as a recipe holds it: text for a path or a price, a list for a tuple, `true` for a
    group that is switched on."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return {key: str(one) if isinstance(one, Price) else one for key, one in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return True
    return value


def recipe_keys() -> list[str]:
    """The keys a recipe may hold at its top level (generation settings go under `generation:`)."""
    keys = [
        key
        for key, (group, name) in settings_index().items()
        if group != "params" and _field(GROUPS[group] if group else BuildConfig, name).metadata["recipe"]
    ]
    return [*keys, "generation", "roles", "prompts_sha256"]


#: The embedded demo model's own defaults against the repetition loops a 135M model falls into (an answer caught in
#: one runs to the token limit and drops its pair as truncated); measured in docs/strategies.md. Not a repetition
#: penalty: it counts the prompt, whose chat template holds the end-of-turn token, so answers stop ending.
DEMO_DEFAULTS: dict[str, float] = {"frequency_penalty": 0.3}


def role_defaults(spec: Spec) -> dict[str, int | float]:
    """The generation settings a role gets where the run gives none: long answers on endpoints and short ones on
    local models, and `DEMO_DEFAULTS` for the embedded model (off for every other model).

    >>> from popalign.roles import parse_spec
    >>> role_defaults(parse_spec("smollm2")), role_defaults(parse_spec("http://a:1"))
    ({'max_new_tokens': 384, 'frequency_penalty': 0.3}, {'max_new_tokens': 1024, 'frequency_penalty': 0.0})
    """
    tokens = ENDPOINT_MAX_NEW_TOKENS if spec.served else LOCAL_MAX_NEW_TOKENS
    demo = {name: value if spec.embedded else OFF_VALUES[name] for name, value in DEMO_DEFAULTS.items()}
    return {"max_new_tokens": tokens} | demo
