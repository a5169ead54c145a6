"""What popalign knows of each kind of server it sends chat requests to: how to tell which kind a replica is
(`kind_of`), what the kind says of its model's weights (`served_identity`), and how each generation setting
reaches its sampler (`SAMPLING`): the request field it reads, whether its "off" value must be sent because the
server would otherwise apply a default of its own, or that the kind cannot honour it at all. Sources: each
server's own code, as `SERVERS.md` (beside the design notes) and docs/models-and-endpoints.md cite them.

| setting | vLLM | SGLang | llama.cpp | TGI | OpenAI |
|---|---|---|---|---|---|
| `top_k` | `top_k`, off 0 sent | `top_k`, off -1 sent | `top_k`, off 0 sent | cannot | cannot |
| `min_p` | `min_p`, off sent | `min_p`, off sent | `min_p`, off sent | cannot | cannot |
| `repetition_penalty` | as named, off sent | as named, off sent | `repeat_penalty`, off sent | cannot | cannot |
| `presence_penalty` | as named, off sent | as named, off sent | as named, off sent | cannot (1) | as named |
| `frequency_penalty` | as named, off sent | as named, off sent | as named, off sent | as named | as named |
| `top_p` | always sent | always sent | always sent | left out at 1 (2) | always sent |
| `reasoning_effort` | as named | as named | as named | cannot | as named |
| `thinking_budget` | `thinking_token_budget` | cannot | cannot | cannot | cannot |

(1) TGI turns it into a repetition penalty of it + 2. (2) TGI refuses 1, which leaving it out means.

vLLM and SGLang fill a missing field from the model's `generation_config.json`, and llama.cpp's server from its
own defaults (top-k 40, min-p 0.05), so "off" is sent to them. Any other server (an unknown kind) is sent a
setting only where it is set, under its OpenAI or vLLM name; whether it honours it is not known, and is said.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from popalign.generation import GenerationParams
from popalign.model_identity import NAME_ONLY, ModelIdentity

VLLM, SGLANG, LLAMACPP, TGI, OPENAI, TRTLLM, UNKNOWN = "vllm", "sglang", "llama.cpp", "tgi", "openai", "trtllm", ""
#: How each server fills `owned_by` in its `/v1/models` (TGI writes the model id there, and is told by `/info`).
OWNED_BY = {"vllm": VLLM, "sglang": SGLANG, "llamacpp": LLAMACPP, "tensorrt_llm": TRTLLM,
            "openai": OPENAI, "system": OPENAI, "openai-internal": OPENAI}  # fmt: skip
LABELS = {VLLM: "vLLM", SGLANG: "SGLang", LLAMACPP: "llama.cpp's server", TGI: "TGI", OPENAI: "OpenAI",
          TRTLLM: "TensorRT-LLM", UNKNOWN: "an unknown server"}  # fmt: skip
#: The settings `SAMPLING` maps (the basics and extras a chat request carries, beside tokens and the seed).
SETTINGS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
            "reasoning_effort", "thinking_budget")  # fmt: skip


@dataclass(frozen=True)
class Field:
    """How one setting reaches one kind of server's sampler: the request field it reads (None: it cannot honour
    the setting), the value that means off there, whether off must be sent (the server has a default of its own),
    and values it refuses that leaving the field out means alike (TGI's `top_p` 1)."""

    name: str | None
    off: Any = None
    send_off: bool = False
    left_out_at: tuple[Any, ...] = ()
    why: str = "it has no such field"


def _table() -> dict[str, dict[str, Field]]:
    always = {"temperature": Field("temperature"), "top_p": Field("top_p")}
    served = {  # vLLM, SGLang and llama.cpp read every setting, each applying a default where it is missing
        "min_p": Field("min_p", 0.0, True),
        "repetition_penalty": Field("repetition_penalty", 1.0, True),
        "presence_penalty": Field("presence_penalty", 0.0, True),
        "frequency_penalty": Field("frequency_penalty", 0.0, True),
        "reasoning_effort": Field("reasoning_effort"),
        "thinking_budget": Field(None, why="only vLLM reads a per-request thinking budget"),
    }
    cannot = Field(None)
    vllm = {"top_k": Field("top_k", 0, True), "thinking_budget": Field("thinking_token_budget")}
    llama = {"top_k": Field("top_k", 0, True), "repetition_penalty": Field("repeat_penalty", 1.0, True)}
    openai = {
        "top_k": cannot,
        "min_p": cannot,
        "repetition_penalty": cannot,
        "presence_penalty": Field("presence_penalty"),
        "frequency_penalty": Field("frequency_penalty"),
        "reasoning_effort": Field("reasoning_effort"),
        "thinking_budget": cannot,
    }
    return {
        VLLM: always | served | vllm,
        SGLANG: always | served | {"top_k": Field("top_k", -1, True)},
        LLAMACPP: always | served | llama,
        TGI: {
            "temperature": Field("temperature"),
            "top_p": Field("top_p", left_out_at=(1.0,)),
            "top_k": cannot,
            "min_p": cannot,
            "repetition_penalty": cannot,
            "presence_penalty": Field(None, why="it turns presence_penalty into a repetition penalty of it + 2"),
            "frequency_penalty": Field("frequency_penalty"),
            "reasoning_effort": cannot,
            "thinking_budget": cannot,
        },
        OPENAI: always | openai,
    }


#: By server kind and setting, how the setting reaches the sampler (kinds not here: `UNKNOWN`'s rule).
SAMPLING: dict[str, dict[str, Field]] = _table()
#: Each setting's off value in popalign's own terms (`top_k` 0 is off, as in transformers); the temperature and
#: top-p have none, and are always sent.
OFF = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
       "reasoning_effort": "", "thinking_budget": 0}  # fmt: skip
#: How an unknown kind is sent a setting: by its OpenAI or vLLM name.
UNKNOWN_NAMES = {"thinking_budget": "thinking_token_budget"}


def field_name(kind: str, setting: str) -> str | None:
    """The request field a server of `kind` reads `setting` from (None where it cannot honour it)."""
    table = SAMPLING.get(kind)
    return table[setting].name if table else UNKNOWN_NAMES.get(setting, setting)


def kind_of(entry: Mapping[str, Any], info: Mapping[str, Any] | None) -> str:
    """The kind of server a replica is: by `owned_by` in its `/v1/models` entry, else TGI where its `/info` has
    `model_id` and `router`.

    >>> kind_of({"id": "m", "owned_by": "vllm"}, None), kind_of({"id": "m"}, {"model_id": "m", "router": "tgi"})
    ('vllm', 'tgi')
    """
    owned = OWNED_BY.get(str(entry.get("owned_by") or ""))
    if owned:
        return owned
    if info and info.get("model_id") and "router" in info:
        return TGI
    return UNKNOWN


def sampling_fields(kind: str, params: GenerationParams) -> tuple[dict[str, Any], list[str]]:
    """The request fields that carry `params`' sampling settings to a server of `kind` (`SAMPLING`), and the
    settings it cannot honour that `params` set (each as `name (why)`), which a run refuses before any request.

    >>> sorted(sampling_fields("llama.cpp", GenerationParams(temperature=0.0, repetition_penalty=1.2))[0].items())
    ... # doctest: +NORMALIZE_WHITESPACE
    [('frequency_penalty', 0.0), ('min_p', 0.0), ('presence_penalty', 0.0), ('repeat_penalty', 1.2),
     ('temperature', 0.0), ('top_k', 0), ('top_p', 0.9)]
    >>> sampling_fields("tgi", GenerationParams(top_k=40))[1]
    ['top_k (it has no such field)']
    """
    fields, refused = {}, []
    table = SAMPLING.get(kind)
    for setting in SETTINGS:
        value = getattr(params, setting)
        off = setting in OFF and value == OFF[setting]
        rule = table[setting] if table else Field(UNKNOWN_NAMES.get(setting, setting))
        if rule.name is None:
            refused += [] if off else [f"{setting} ({rule.why})"]
        elif value in rule.left_out_at or (off and not rule.send_off):
            continue
        else:
            fields[rule.name] = rule.off if off else value
    return fields, refused


def served_identity(
    kind: str, name: str, entry: Mapping[str, Any], info: Mapping[str, Any] | None, model_info: Mapping[str, Any] | None
) -> ModelIdentity:
    """What a server says of the weights behind the model it serves as `name`: TGI's `model_sha` (`/info`), vLLM's
    `root` (and `parent`, for an adapter) in `/v1/models`, SGLang's `weight_version` (`/get_model_info`) with its
    model path, llama.cpp's file size and parameter count (it reports no digest); name only where it says none.
    A name that is a file path is published by its file name."""
    weights, evidence = "", NAME_ONLY
    if kind == TGI and (info or {}).get("model_sha"):
        weights, evidence = str(info["model_sha"]), "TGI model_sha"  # type: ignore[index]
    elif kind == VLLM and entry.get("root"):
        weights, evidence = "<".join(str(entry[key]) for key in ("root", "parent") if entry.get(key)), "vLLM root"
    elif kind == SGLANG and model_info:
        weights = f"{model_info.get('model_path', '')}#{model_info.get('weight_version', '')}"
        evidence = "SGLang model path and weight_version"
    elif kind == LLAMACPP and isinstance(entry.get("meta"), Mapping):
        meta = entry["meta"]
        weights = f"size={meta.get('size')},n_params={meta.get('n_params')}"
        evidence = "llama.cpp file size and parameter count"
    return ModelIdentity(published_name(name), weights, evidence, served=name)


def published_name(served: str) -> str:
    """A served model's name as outputs show it: a file path (llama.cpp's server names its model by the path it was
    started with; vLLM by the folder it loads) by its file or folder name, never where it lies.

    >>> published_name("/home/me/models/qwen3-8b-q4.gguf"), published_name("Qwen/Qwen3-8B")
    ('qwen3-8b-q4.gguf', 'Qwen/Qwen3-8B')
    """
    path = served.replace("\\", "/")
    if path.startswith(("/", "~", "./", "../")) or path.lower().endswith(".gguf") or ":/" in path[:3]:
        return posixpath.basename(path.rstrip("/")) or served
    return served
