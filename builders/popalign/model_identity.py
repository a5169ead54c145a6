"""What identifies a model: not its name or where it lies, but what it computes with.

A local folder or file is identified by a fingerprint of its files (`fingerprint`), a Hub id by the commit it runs
at (`hub_commit`), a served model by what its server says of its weights (`popalign.backends.server_kinds`). The
identity keys the cache, so a model changed under one name has its answers generated again, and it is recorded in
the manifest, the card, the recipe and the evaluation report.

A fingerprint reads, for each file at the top of a folder (or the one file): its name and size; the whole of any
file up to `WHOLE_FILE` bytes (config, tokenizer, chat template, generation config); of a larger safetensors or
GGUF file its whole header (every tensor's name, shape, type and place) and `BLOCK` bytes at the start, middle and
end of every tensor; of any other large file (`pytorch_model.bin`) `BLOCK` bytes every `SPAN` bytes. Training
rewrites every element of a tensor it trains, so a retrained model, a merged adapter or another quantization
changes it; an edit confined to a few elements of a tensor, between the blocks read, does not.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from popalign.errors import BackendError, first_line

#: Files up to this size are read whole.
WHOLE_FILE = 64 * 1024 * 1024
#: Bytes read at each place sampled in a large file.
BLOCK = 4096
#: In a large file of no known format, one block is read every this many bytes.
SPAN = 1024 * 1024
#: What identified a model (`ModelIdentity.evidence`).
FINGERPRINT, HUB_COMMIT, NAME_ONLY = "weights fingerprint", "Hub commit", "name only"
_COMMIT = re.compile(r"[0-9a-f]{40}")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def escaped(text: str) -> str:
    """`text` with every control character (an escape sequence that retitles a terminal, a newline that would break
    a card's table) written as a `\\xNN` escape, as a model's name is printed and published.

    >>> escaped("org/m\\x1b]0;owned\\x07\\nx")
    'org/m\\\\x1b]0;owned\\\\x07\\\\x0ax'
    """
    return _CONTROL.sub(lambda match: f"\\x{ord(match[0]):02x}", text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class ModelIdentity:
    """A role's model: `name`, as outputs show it (never where it lies on a machine); `weights`, what tells its
    weights apart (a fingerprint, a Hub commit, what a server reports), empty where nothing does; `evidence`,
    which of those it is; and `served`, the name a server knows it by (a path, for llama.cpp's server) or where a
    local model lies, which only requests, cache keys and the cache's record of models use.

    >>> ModelIdentity("tiny", "sha256:ab12", FINGERPRINT).note()
    'identified by its weights fingerprint sha256:ab12'
    """

    name: str
    weights: str = ""
    evidence: str = NAME_ONLY
    served: str = ""

    def __post_init__(self) -> None:
        # a server names its model as it likes: what is printed and published never holds a control character
        object.__setattr__(self, "name", escaped(self.name))
        object.__setattr__(self, "weights", escaped(self.weights))

    @property
    def key(self) -> str:
        """What a cache key holds of the model: its name and weights (one model in two folders shares its answers);
        where nothing tells its weights, the name it is served by."""
        return f"{self.name}@{self.weights}" if self.weights else self.served or self.name

    def note(self) -> str:
        """How the card says the model was identified."""
        if self.evidence == NAME_ONLY:
            return "identified by name only: nothing reports its weights, so new weights under this name go unseen"
        return f"identified by its {self.evidence} {self.weights}"

    def recorded(self) -> dict[str, str]:
        """The identity as the manifest, the recipe and reports hold it."""
        return {"identified_by": self.evidence, "weights": self.weights}


def fingerprint(path: Path) -> str:
    """`sha256:` and the digest of what the module's doc says a fingerprint reads, for a file or a folder.

    >>> fingerprint(Path("config.json"))  # doctest: +SKIP
    'sha256:9c1b…'
    """
    path = Path(path).resolve()
    listed = [path] if path.is_file() else sorted(path.iterdir())
    files = [file for file in listed if file.is_file() and not file.name.startswith(".")]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0".encode())
        digest.update(_file_digest(str(file), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return "sha256:" + digest.hexdigest()


@functools.cache
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> bytes:
    """A file's part of a fingerprint, worked out once per process for one state of the file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            if size <= WHOLE_FILE:
                digest.update(handle.read())
                return digest.digest()
            header, spans = _layout(handle, path, size)
            digest.update(header)
            for start, end in spans:
                for place in sorted({start, (start + end) // 2, max(start, end - BLOCK)}):
                    handle.seek(place)
                    digest.update(handle.read(min(BLOCK, end - place)))
    except OSError as err:
        raise BackendError(f"model file {Path(path).name}: cannot read it to identify the model ({err})") from err
    return digest.digest()


def _layout(handle: BinaryIO, path: str, size: int) -> tuple[bytes, list[tuple[int, int]]]:
    """A large file's header and the byte spans of its tensors (safetensors, GGUF), or `SPAN`-long spans of a file
    of another format."""
    if path.endswith(".safetensors"):
        (length,) = struct.unpack("<Q", handle.read(8))
        header = handle.read(length)
        tensors = json.loads(header)
        start = 8 + length
        offsets = [tensor["data_offsets"] for name, tensor in tensors.items() if name != "__metadata__"]
        return header, sorted((start + a, start + b) for a, b in offsets if b > a)
    if handle.read(4) == b"GGUF":
        return _gguf_layout(handle, size)
    return b"", [(start, min(size, start + BLOCK)) for start in range(0, size, SPAN)]


def _gguf_layout(handle: BinaryIO, size: int) -> tuple[bytes, list[tuple[int, int]]]:
    """A GGUF file's header (metadata and tensor table) and its tensors' spans (the format of ggml's `gguf.h`)."""
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def read(fmt: str) -> int:
        return struct.unpack("<" + fmt, handle.read(struct.calcsize(fmt)))[0]

    def text() -> str:
        return handle.read(read("Q")).decode("utf-8", "replace")

    def value(kind: int) -> object:
        if kind == 8:
            return text()
        if kind == 9:
            item, count = read("I"), read("Q")
            if item in scalar:  # skipped whole: never needed
                handle.seek(count * struct.calcsize(scalar[item]), 1)
                return None
            return [value(item) for _ in range(count)]
        return read(scalar[kind])

    read("I")  # version
    tensors, entries = read("Q"), read("Q")
    metadata = {}
    for _ in range(entries):
        key = text()
        metadata[key] = value(read("I"))
    offsets = []
    for _ in range(tensors):
        text()
        handle.seek(8 * read("I"), 1)  # the dimensions
        read("I")  # the type
        offsets.append(read("Q"))
    alignment = int(metadata.get("general.alignment") or 32)  # type: ignore[call-overload]
    data = -(-handle.tell() // alignment) * alignment
    handle.seek(0)
    header = handle.read(data)
    bounds = sorted({*offsets, size - data})
    return header, [(data + a, data + b) for a, b in itertools.pairwise(bounds)]


def hub_commit(repo: str, revision: str | None) -> str:
    """The commit a Hub model runs at: `revision` itself where it is a commit; else what the Hub says the branch or
    tag points at; offline, the commit the local Hugging Face cache holds for it.

    >>> hub_commit("org/model", "0123456789abcdef0123456789abcdef01234567")
    '0123456789abcdef0123456789abcdef01234567'
    """
    if revision and _COMMIT.fullmatch(revision):
        return revision
    return _resolved(repo, revision or "main")


@functools.cache
def _resolved(repo: str, revision: str) -> str:
    """`hub_commit` for a branch or tag, asked once per process, so every part of a run loads one commit."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    reason = "HF_HUB_OFFLINE is set"
    if not constants.HF_HUB_OFFLINE:
        try:
            sha = HfApi().model_info(repo, revision=revision).sha
            if sha:
                return sha
        except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as err:
            reason = first_line(err)
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / revision
    if ref.is_file() and _COMMIT.fullmatch(commit := ref.read_text().strip()):
        return commit
    raise BackendError(
        f"model {repo}: no such file or folder here; as a Hub id, cannot tell which commit its {revision} is "
        f"({reason}; nor does the local Hugging Face cache hold it): pin one as {repo}@COMMIT"
    )


def is_hub_id(source: str) -> bool:
    """Whether a model source names a Hub repository (`ORG/NAME`) rather than a file or folder on this machine."""
    return bool(HUB_ID.fullmatch(source)) and not Path(source).exists()
