"""Read instructions from `.jsonl`, `.csv` or `.parquet`, a Hub dataset, or the bundled demo set: plain text or
conversations (`popalign.conversations`); validate and deduplicate."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from popalign.conversations import (
    ANSWERED_COLUMNS,
    ConversationError,
    Message,
    as_chat,
    from_chat,
    parse,
    with_system,
)
from popalign.errors import PromptsError

BUNDLED_PROMPTS = Path(__file__).with_name("instructions.jsonl")
BUNDLED_LABEL = "popalign's bundled demo instructions"
#: The columns looked for, in order, where no `--prompt-column` is given.
DEFAULT_COLUMNS = ("prompt", "instruction", "messages", "conversations", "chosen")
SUFFIXES = (".jsonl", ".csv", ".parquet")
_SHARD = re.compile(r"([0-9]+)/([0-9]+)")
_HUB_DATASET = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*(:[A-Za-z0-9_.-]+){0,2}$")


def is_hub_dataset(text: str) -> bool:
    """Whether `--prompts` names a Hub dataset (`ORG/NAME`, `ORG/NAME:SPLIT` or `ORG/NAME:CONFIG:SPLIT`, with a
    folder of the repository after the name, `ORG/NAME/FOLDER:SPLIT`) rather than a local file: it matches that form,
    is no file here, and has no prompts file suffix."""
    return bool(_HUB_DATASET.match(text)) and not Path(text).exists() and Path(text).suffix not in SUFFIXES


@dataclass(frozen=True)
class Instruction:
    """One instruction: the user turn to answer (`text`), the conversation before it (`context`: a system turn,
    earlier user and assistant turns; none for a plain instruction), and a stable id: the sha256 of the text alone,
    or of the whole conversation where there is one.

    >>> Instruction.from_messages([("system", "Be brief."), ("user", "Hi")]).messages
    (('system', 'Be brief.'), ('user', 'Hi'))
    """

    text: str
    prompt_id: str
    context: tuple[Message, ...] = ()

    @classmethod
    def from_text(cls, text: str) -> Instruction:
        return cls(text=text, prompt_id=hashlib.sha256(text.encode("utf-8")).hexdigest())

    @classmethod
    def from_messages(cls, messages: Sequence[Message]) -> Instruction:
        """The instruction of a checked conversation (`popalign.conversations.check`)."""
        turns = tuple((role, content) for role, content in messages)
        if len(turns) == 1:
            return cls.from_text(turns[0][1])
        payload = json.dumps([list(turn) for turn in turns], ensure_ascii=False)
        return cls(turns[-1][1], hashlib.sha256(payload.encode("utf-8")).hexdigest(), turns[:-1])

    @classmethod
    def from_chat(cls, chat: Sequence[dict[str, str]]) -> Instruction:
        """The instruction of a row's `prompt` (`[{role, content}]`)."""
        return cls.from_messages(from_chat(chat))

    @property
    def messages(self) -> tuple[Message, ...]:
        """The whole conversation, ending in the user turn to answer."""
        return (*self.context, ("user", self.text))

    def asking(self, text: str) -> tuple[Message, ...]:
        """The conversation with `text` (what a template made of the last user turn) in place of its last turn."""
        return (*self.context, ("user", text))

    def chat(self) -> list[dict[str, str]]:
        """The conversation as a row's `prompt` holds it."""
        return as_chat(self.messages)


@dataclass(frozen=True)
class PromptSet:
    """The distinct instructions of a source, in first-seen order, and how many duplicates were skipped.

    A shard (`shard=(K, N)`) holds the instructions whose id falls in part K of N; `total` counts them all.
    `source` is the file's name (never its local folder) and `sha256` its content's digest.
    """

    instructions: list[Instruction]
    duplicates: int
    source: str
    total: int = 0
    shard: tuple[int, int] | None = None
    sha256: str = ""
    revision: str = ""  # a Hub dataset's commit
    limit: int | None = None
    #: what screening dropped of this set (`popalign.decontamination`): by benchmark source, its prompts and the
    #: instructions close to one; and the near-duplicates of an earlier instruction. None: not screened.
    screening: dict[str, Any] | None = None
    system: str | None = None  # `--system`: the system turn every instruction is given
    column: str | None = None  # `--prompt-column`, where given

    def describe(self) -> dict[str, Any]:
        """The prompt source as the manifest records it."""
        shard = {"shard": f"{self.shard[0]}/{self.shard[1]}", "total": self.total} if self.shard else {}
        digest = {"sha256": self.sha256} if self.sha256 else {}
        revision = {"revision": self.revision} if self.revision else {}
        limit = {"limit": self.limit} if self.limit is not None else {}
        return {
            "source": self.source,
            **digest,
            **revision,
            **limit,
            "count": len(self.instructions),
            "duplicates": self.duplicates,
            **({"system": self.system} if self.system else {}),
            **shard,
            **({"screening": self.screening} if self.screening is not None else {}),
        }


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1 ≤ K ≤ N, ASCII digits) as a pair."""
    match = _SHARD.fullmatch(text.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise PromptsError(f"--shard {text!r}: expected K/N with 1 <= K <= N, for example 1/4")
    return int(match[1]), int(match[2])


def in_test_split(prompt_id: str, test_size: float) -> bool:
    """Whether an instruction's rows go to the `test` split: fixed by its id (other digits than the shard's), so
    every strategy, shard and rewrite puts it on the same side, and no instruction is in both splits.

    >>> in_test_split("0" * 64, 0.1), in_test_split("f" * 64, 0.1), in_test_split("0" * 64, 0.0)
    (True, False, False)
    """
    return int(prompt_id[16:32], 16) < test_size * 16**16


def in_shard(instruction: Instruction, shard: tuple[int, int]) -> bool:
    """Whether an instruction belongs to part K of N: fixed by its id, so every machine splits alike."""
    return int(instruction.prompt_id[:16], 16) % shard[1] == shard[0] - 1


def load_prompts(
    path: Path | None = None,
    *,
    column: str | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    system: str | None = None,
) -> PromptSet:
    """Load, validate and deduplicate instructions (texts or conversations, each under a system turn of `system`
    where given); `path=None` reads the bundled demo set.

    >>> load_prompts(limit=2).instructions[0].prompt_id[:8]  # doctest: +SKIP
    'c6b7d1f0'
    """
    source = BUNDLED_PROMPTS if path is None else Path(path)
    if not source.is_file():
        raise PromptsError(f"{source}: prompts file not found")
    if source.suffix not in SUFFIXES:
        raise PromptsError(f"{source}: unsupported prompts format {source.suffix!r} (use {', '.join(SUFFIXES)})")
    rows = list(_read_rows(source))
    if not rows:
        raise PromptsError(f"{source}: no rows")
    field = _pick_column(source, rows[0], column)
    seen: set[str] = set()
    instructions: list[Instruction] = []
    for number, row in enumerate(rows, start=1):
        instruction = _instruction(source, number, row, field, system)
        if instruction.prompt_id in seen:
            continue
        seen.add(instruction.prompt_id)
        instructions.append(instruction)
    duplicates = len(rows) - len(instructions)
    if limit is not None:
        instructions = instructions[:limit]
    label = BUNDLED_LABEL if path is None else source.name
    total = len(instructions)
    if shard:
        instructions = [instruction for instruction in instructions if in_shard(instruction, shard)]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return PromptSet(
        instructions,
        duplicates,
        label,
        total=total,
        shard=shard,
        sha256=digest,
        limit=limit,
        system=system,
        column=column,
    )


def load_hub_prompts(
    spec: str,
    *,
    column: str | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    revision: str | None = None,
    system: str | None = None,
) -> PromptSet:
    """Instructions from a Hub dataset, `ORG/NAME[/FOLDER][:CONFIG][:SPLIT]` (split `train` unless given; a FOLDER
    is the repository's folder to read, `datasets`' `data_dir`, as HH-RLHF's `harmless-base`), at `revision`
    (default: the newest commit, which is recorded); streamed when `limit` is given, so only the rows needed are
    read. Deduplicated and validated as a file's are.

    >>> load_hub_prompts("HuggingFaceH4/ultrafeedback_binarized:train_prefs", limit=100)  # doctest: +SKIP
    >>> load_hub_prompts("Anthropic/hh-rlhf/harmless-base:train", limit=100)  # doctest: +SKIP

    Raises:
        PromptsError: the dataset, config, split or revision is not there, or a row or column is bad.
    """
    import datasets
    import pyarrow

    path, *parts = spec.split(":")
    repo, folder = "/".join(path.split("/")[:2]), "/".join(path.split("/")[2:]) or None
    config, split = (None, "train") if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    field: str | None = None
    seen: set[str] = set()
    instructions: list[Instruction] = []
    read = 0
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a bad file is said once, in the error below
    try:
        commit = HfApi().dataset_info(repo, revision=revision or "main").sha or revision or ""
        rows = datasets.load_dataset(
            repo, config, split=split, revision=commit, data_dir=folder, streaming=limit is not None
        )
        for read, row in enumerate(rows, start=1):  # a streamed file's bad line is met here, not at the load
            field = field or _pick_column(spec, row, column)
            instruction = _instruction(spec, read, row, field, system)
            if instruction.prompt_id not in seen:
                seen.add(instruction.prompt_id)
                instructions.append(instruction)
            if limit is not None and len(instructions) >= limit:
                break
    except OfflineModeIsEnabled as err:
        raise PromptsError(f"{spec}: HF_HUB_OFFLINE=1 is set; unset it to read prompts from the Hub") from err
    except (
        HfHubHTTPError,
        datasets.exceptions.DatasetNotFoundError,
        datasets.exceptions.DatasetGenerationError,
        pyarrow.ArrowException,
        FileNotFoundError,
        ValueError,
    ) as err:
        generic = isinstance(err, datasets.exceptions.DatasetGenerationError) and err.__cause__ is not None
        cause = err.__cause__ if generic else err  # `datasets` wraps what is wrong with a file in a generic error
        reason = " ".join(str(cause).split())[:200]
        raise PromptsError(f"{spec}: cannot read this Hub dataset ({type(cause).__name__}: {reason})") from err
    except (httpx2.TransportError, OSError) as err:
        reason = " ".join(str(err).split())[:200]
        raise PromptsError(f"{spec}: cannot reach the Hub ({type(err).__name__}: {reason}); give a local file") from err
    finally:
        datasets.logging.set_verbosity(verbosity)
    if not read:
        raise PromptsError(f"{spec}: no rows")
    total = len(instructions)
    digest = hashlib.sha256("".join(i.prompt_id for i in instructions).encode()).hexdigest()  # every shard's alike
    if shard:
        instructions = [instruction for instruction in instructions if in_shard(instruction, shard)]
    return PromptSet(
        instructions,
        read - total,
        spec,
        total=total,
        shard=shard,
        sha256=digest,
        revision=commit,
        limit=limit,
        system=system,
        column=column,
    )


def _read_rows(source: Path) -> Iterator[dict[str, Any]]:
    try:
        if source.suffix == ".jsonl":
            yield from _read_jsonl(source)
        elif source.suffix == ".csv":
            with source.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
                yield from csv.DictReader(handle)
        else:
            import pyarrow
            import pyarrow.parquet as pq

            try:
                yield from pq.read_table(source).to_pylist()
            except pyarrow.ArrowException as err:
                raise PromptsError(f"{source}: not a readable Parquet file ({' '.join(str(err).split())})") from err
    except UnicodeDecodeError as err:
        raise PromptsError(f"{source}: not UTF-8 text ({err.reason})") from err
    except OSError as err:
        raise PromptsError(f"{source}: cannot read ({err})") from err


def _read_jsonl(source: Path) -> Iterator[dict[str, Any]]:
    with source.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise PromptsError(f"{source}: line {number}: not UTF-8 text ({err.reason})") from err
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptsError(f"{source}: line {number}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise PromptsError(f"{source}: line {number}: expected a JSON object")
            yield row


def _pick_column(source: Path | str, first_row: dict[str, Any], column: str | None) -> str:
    candidates = (column,) if column else DEFAULT_COLUMNS
    for name in candidates:
        if name in first_row:
            return name
    named = f"{', '.join(map(repr, DEFAULT_COLUMNS[:-1]))} or {DEFAULT_COLUMNS[-1]!r}"
    wanted = f"column {column!r}" if column else f"column {named}"
    hint = "" if column else "; pass --prompt-column"
    raise PromptsError(f"{source}: no {wanted} (columns: {', '.join(map(str, first_row))}){hint}")


def _instruction(source: Path | str, number: int, row: dict[str, Any], field: str, system: str | None) -> Instruction:
    """The instruction of one row's prompt field (text or a conversation), under `--system` where given."""
    if field not in row:
        raise PromptsError(f"{source}: row {number}: field {field!r} is missing")
    value = row[field]
    if isinstance(value, str) and not value.strip():
        raise PromptsError(f"{source}: row {number}: field {field!r} is empty")
    try:
        turns = parse(value, answered=field in ANSWERED_COLUMNS)
    except ConversationError as err:
        raise PromptsError(f"{source}: row {number}: field {field!r} {err}") from err
    return Instruction.from_messages(with_system(turns, system) if system else turns)
