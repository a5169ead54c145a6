"""The manifest's records, typed, each read from and written to the manifest's JSON here and nowhere else.

`ConfigRecord` is what one config holds (its counts, answer lengths and edits, `dataset_info`, the models of its
sides, what its pairs cost); `ScoreRecord` and `QualityRecord` are what scoring added, `JudgeRecord` and its
`JudgeSummary` per config what judging added, `ReviewRecord` and its `StrategyReview` per config what readers
found. Each writes its keys in the order the file has always had them and leaves out what a build did not set; each
reads back the same (`from_dict(record.to_dict()) == record`). Keys a later popalign adds are kept (`extra`).

Records also answer as read-only mappings of their JSON (`manifest.configs["prefix"]["rows"]`), as the manifest's
plain dicts did before they were typed.

>>> record = ConfigRecord.from_dict({"rows": 3, "dropped": {"duplicate": 1}, "requests": 8, "cost": None}, "prefix")
>>> record.rows, record["dropped"], record.get("chosen_model"), record.to_dict()["cost"], "cost_per_pair" in record
(3, {'duplicate': 1}, None, None, True)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import UnionType
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

R = TypeVar("R", bound="Record")

#: A field left out of the JSON while it is None (a build that did not set it).
_OPTIONAL = {"optional": True}


def optional(**metadata: Any) -> Any:
    """A record field that a build may leave unset: None, and then not in the JSON."""
    return field(default=None, metadata=_OPTIONAL | metadata)


class Record(Mapping[str, Any]):
    """A typed manifest record: `to_dict` / `from_dict` for its JSON, and read access by JSON key."""

    #: What an error about this record starts with (`config 'prefix'`), set by `from_dict`.
    _where: ClassVar[str] = "record"
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The record as the manifest holds it: every field in order, but unset optional ones, then `extra`."""
        data = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (f.metadata.get("optional") and value is None and not self._written(f)):
                continue
            places = f.metadata.get("places")
            data[f.name] = [round(item, places) for item in value] if places else plain(value)
        return data | self.extra

    def _written(self, f: Any) -> bool:
        """Whether an unset field is written all the same (as null): where the field it goes `with` is set."""
        companion = f.metadata.get("with")
        return companion is not None and getattr(self, companion) is not None

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any], where: str = "") -> R:
        """The record of its JSON.

        Raises:
            ValueError: a field of the wrong type, or a required one missing (naming the record and field).
        """
        where = where or cls._where
        if not isinstance(data, dict):
            raise ValueError(f"{where} is {kind(data)}, not an object")
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            if f.name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ValueError(f"{where} has no {f.name!r}")
                continue
            if wrong := mismatch(data[f.name], hints[f.name], f"{where}: field {f.name!r}"):
                raise ValueError(wrong)
            values[f.name] = _typed(data[f.name], hints[f.name], where)
        names = {f.name for f in fields(cls)}
        return cls(**values, extra={key: value for key, value in data.items() if key not in names})

    def __getitem__(self, key: str) -> Any:
        data = self.to_dict()
        return data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def _typed(value: Any, hint: Any, where: str) -> Any:
    """A checked JSON value as its field holds it: records by config read as their records (errors naming the
    config), a list as a tuple where the field is one."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is dict and isinstance(args[1], type) and issubclass(args[1], Record):
        return {name: args[1].from_dict(item, f"{where}: config {name!r}") for name, item in value.items()}
    return tuple(value) if origin is tuple else value


def plain(value: Any) -> Any:
    """A field's value as JSON holds it (a record as its JSON, a tuple as a list, records within a dict as theirs)."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {key: item.to_dict() if isinstance(item, Record) else item for key, item in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class ConfigRecord(Record):
    """One config of a build: its rows and drops by reason, how many pairs had a side cut (`truncation`), its split
    counts (with a test split), answer lengths and edits and the first row (`RowSpool.describe`), its features
    (`dataset_info`), the models of its sides, what its pairs cost (`costs.usage_record`: the cost keys are written,
    null where unpriced, wherever `requests` is), the answer tokens a server said were thinking, answers asked in
    a shape, preambles removed, and the version it last changed in on the Hub (`changed_in`)."""

    _where: ClassVar[str] = "config"
    rows: int
    dropped: dict[str, int]
    truncation: dict[str, Any] | None = optional()
    splits: dict[str, int] | None = optional()
    chosen_chars: int | None = optional()
    rejected_chars: int | None = optional()
    edits: dict[str, float] | None = optional()
    example: dict[str, str] | None = optional()
    turns: dict[str, int] | None = optional()
    system_turns: int | None = optional()
    dataset_info: dict[str, Any] | None = optional()
    chosen_model: str | None = optional()
    rejected_model: str | None = optional()
    requests: int | None = optional()
    tokens: int | None = optional()
    prompt_tokens: int | None = optional()
    usage: dict[str, Any] | None = optional()
    tokens_per_pair: float | None = optional(**{"with": "requests"})
    cost: float | None = optional(**{"with": "requests"})
    cost_per_pair: float | None = optional(**{"with": "requests"})
    reasoning_tokens: int | None = optional()
    shapes: dict[str, int] | None = optional()
    preambles_removed: int | None = optional()
    changed_in: str | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)

    #: What making the pairs recorded (the models of the sides, their cost, thinking, shapes, preambles): kept when
    #: a later step (score, judge, merge) writes the config's rows again.
    GENERATION: ClassVar[tuple[str, ...]] = (
        "chosen_model", "rejected_model", "requests", "tokens", "prompt_tokens", "usage", "tokens_per_pair", "cost",
        "cost_per_pair", "reasoning_tokens", "shapes", "preambles_removed",
    )  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> ConfigRecord:  # type: ignore[override]
        """A config's record; `where` is its name.

        Raises:
            ValueError: no row count or drop counts, a count below 0, or a field of the wrong type.
        """
        name = f"config {where!r}"
        if not isinstance(data, dict):
            raise ValueError(f"{name} is {kind(data)}, not an object")
        if not is_count(data.get("rows")):
            raise ValueError(f"{name} has no row count")
        if not isinstance(data.get("dropped"), dict):
            raise ValueError(f"{name} has no drop counts")
        for reason, count in data["dropped"].items():
            if not is_count(count):
                raise ValueError(f"{name}: its {reason!r} drop count {count!r} is not a count")
        return super().from_dict(data, name)

    def cut_kept(self) -> int:
        """Pairs kept with a cut side (`--keep-truncated`)."""
        return (self.truncation or {}).get("cut", 0) - self.dropped.get("truncated", 0)

    def generation(self) -> dict[str, Any]:
        """The fields `GENERATION` names that are set, to carry over to a rewrite of this config."""
        return {key: getattr(self, key) for key in self.GENERATION if getattr(self, key) is not None}


@dataclass(frozen=True, kw_only=True)
class ScoreRecord(Record):
    """How a build was scored (`scoring.ScoreSettings.describe`): the scorer, the contrast, and the curation."""

    _where: ClassVar[str] = "score"
    scorer: str
    contrast: str
    min_score: float | None
    swap: str
    order: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class QualityRecord(Record):
    """One config's scored rows (`quality.quality_report`): counts before curation, the score's spread and how
    often it is positive (`agreement`), answer lengths, the histogram's path, and what curation did."""

    _where: ClassVar[str] = "quality"
    rows: int
    dropped: dict[str, int]
    score_mean: float | None = optional()
    score_median: float | None = optional()
    score_min: float | None = optional()
    score_max: float | None = optional()
    agreement: float | None = optional()
    chosen_chars_mean: float | None = optional()
    rejected_chars_mean: float | None = optional()
    chosen_longer: float | None = optional()
    histogram: str | None = optional()
    curation: dict[str, int] | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class JudgeSummary(Record):
    """One strategy's verdicts: counts, accuracy over the judged pairs (chosen + rejected + tie), its interval,
    how often the judge's winner is also the longer answer, and agreement with the DLMA score where scored."""

    _where: ClassVar[str] = "judge summary"
    counts: dict[str, int]
    accuracy: float | None
    interval: tuple[float, float] = field(metadata={"places": 4})  # written to four places
    longer_wins: float | None
    dlma_agreement: float | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class JudgeRecord(Record):
    """What judged a build and what it found: the judge, its identity and kind, for an LLM judge its template and
    how many verdicts were read from log-probabilities, the judgements asked, replies in the verdict shape, the
    `--min-judge` curation, a `JudgeSummary` per config, the chart's path, and the judges this one replaced."""

    _where: ClassVar[str] = "judge"
    model: str
    identity: dict[str, Any] | None = optional()
    kind: str
    template_sha256: str | None = optional()
    from_logprobs: int | None = optional()
    judgements: int | None = optional()
    shapes: dict[str, int] | None = optional()
    min_judge: str | None = None
    configs: dict[str, JudgeSummary] = field(default_factory=dict)
    chart: str | None = optional()
    replaced: list[str] | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class StrategyReview(Record):
    """What readers found in one strategy (`popalign review`): pairs read, the marks given, the share read as
    chosen-better (good against swapped and bad) with its Wilson interval, and how often two readers of one pair
    agree and a reader agrees with the judge (agreeing, compared)."""

    _where: ClassVar[str] = "review summary"
    read: int
    marks: dict[str, int]
    chosen_better: float | None
    interval: tuple[float, float] = field(metadata={"places": 4})  # written to four places
    readers_agree: tuple[int, int]
    judge_agrees: tuple[int, int]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ReviewRecord(Record):
    """Readers' flags on a build (`review_flags.json`), summed up for the card: the readers, a `StrategyReview` per
    strategy read, the flags left stale by a rebuild that changed their pair, and, in a copy with the flags applied
    (`push --flags apply`), the pairs left out and swapped."""

    _where: ClassVar[str] = "review"
    readers: list[str]
    configs: dict[str, StrategyReview] = field(default_factory=dict)
    stale: int = 0
    applied: dict[str, int] | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)


def is_count(value: Any) -> bool:
    """Whether a JSON value is a count: a whole number of at least 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def mismatch(value: Any, hint: Any, where: str) -> str | None:
    """Where a JSON value is not of a field's declared type, and how (`Any` takes anything; a float field takes a
    whole number; a record or a list is checked as an object or a list); None where it is."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return None
    if isinstance(hint, type) and issubclass(hint, Record):  # read, and checked, by its record
        return None if isinstance(value, dict) else f"{where} is {kind(value)}, not an object"
    if origin in (Union, UnionType):
        if any(mismatch(value, arg, where) is None for arg in args):
            return None
        return f"{where} is {kind(value)}, not {' or '.join(_kind_of(arg) for arg in args if arg is not type(None))}"
    if origin is dict:
        if not isinstance(value, dict):
            return f"{where} is {kind(value)}, not an object"
        wrong = (mismatch(item, args[1], f"{where}[{key!r}]") for key, item in value.items())
        return next((message for message in wrong if message), None)
    if origin in (list, tuple):
        return None if isinstance(value, list) else f"{where} is {kind(value)}, not a list"
    accepted = (int, float) if hint is float else hint
    if isinstance(value, accepted) and (hint is bool or not isinstance(value, bool)):
        return None
    return f"{where} is {kind(value)}, not {_kind_of(hint)}"


def kind(value: Any) -> str:
    """A JSON value's kind, as an error names it."""
    kinds = {dict: "an object", list: "a list", str: "text", bool: "true or false", type(None): "null"}
    return kinds.get(type(value), "a number")


def _kind_of(hint: Any) -> str:
    """A field's declared type, as an error names it."""
    if get_origin(hint) is dict or (isinstance(hint, type) and issubclass(hint, Record)):
        return "an object"
    if get_origin(hint) in (list, tuple):
        return "a list"
    return {str: "text", bool: "true or false", int: "a whole number", float: "a number"}.get(hint, "a value")
