"""LP, the teacher-forced log-probability of a whole text (the sum over its tokens after the first), from a
served model, in the protocol of the server that serves it (for DLMA scores, `popalign.scoring`):

| server | request | LP read from |
|---|---|---|
| TGI | `POST /generate`, `details` + `decoder_input_details` | `details.prefill[].logprob` |
| vLLM | `POST /v1/completions`, `prompt_logprobs: 0`, `max_tokens: 1` | `choices[0].prompt_logprobs` |
| SGLang | `POST /generate`, `return_logprob` + `logprob_start_len: 0` | `meta_info.input_token_logprobs` |

`auto` tells them apart by a route only that server has, asked in this order: TGI's `/info` (with `model_id`),
SGLang's `/get_model_info` (`model_path`), vLLM's `/version` (`version`, and `owned_by: vllm` in `/v1/models`:
TensorRT-LLM's `trtllm-serve` answers `/version` alike). A server with none of them (llama.cpp's, OpenAI's API)
has no prompt log-probs to give, and is refused in one line. Requests go through `huggingface_hub`'s HTTP client,
as generation's do, with the same `Authorization` rules.

The scored text is the rendered chat, which already holds any BOS token its template writes. vLLM is told not to
add special tokens; TGI always adds them, so a leading BOS is taken off the text for it; SGLang is sent the token
ids (tokenized without special tokens), which it takes verbatim. So a served LP counts each token once, as the
local scorer's does. The scorer's name, which keys its cached LP, holds what the server says of its weights.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import get_async_session

from popalign.backends.endpoint import (
    ENVELOPE_BYTES,
    Failure,
    HTTPStatus,
    Oversized,
    RetryPolicy,
    choose_model,
    classify,
    openai_url,
    read_capped,
)
from popalign.config import SCORE_PROTOCOLS, Endpoints
from popalign.credentials import authorization
from popalign.errors import BackendError, ConfigError, first_line
from popalign.model_identity import escaped
from popalign.roles import EndpointSpec

#: The largest log-prob taken as read: 0 (a certainty), with room for a server's rounding.
MAX_LOGPROB = 1e-4


class _Unreadable(ValueError):
    """An answer without the log-probs its protocol promises."""


def _tgi_body(text: str, model: str | None, tokenizer: Any) -> dict[str, Any]:
    # TGI adds the tokenizer's special tokens to every input and cannot be told not to: a BOS the text holds goes
    bos = tokenizer.bos_token if adds_bos(tokenizer) else None
    inputs = text.removeprefix(bos) if bos else text
    return {"inputs": inputs, "parameters": {"max_new_tokens": 1, "details": True, "decoder_input_details": True}}


def adds_bos(tokenizer: Any) -> bool:
    """Whether a tokenizer puts a BOS token before every text it encodes with special tokens (Llama 3, Gemma,
    Mistral, DeepSeek do; SmolLM2 and Qwen do not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def checked_total(values: list[Any]) -> float:
    """The sum of a prompt's log-probs, one per token, where only the first position may have none (nothing comes
    before it) and every other is a finite number no greater than 0; anything else is `_Unreadable` (never a sum
    that silently leaves tokens out, never NaN).

    >>> checked_total([None, -1.5, -0.5])
    -2.0
    >>> checked_total([None, None, -0.5])
    Traceback (most recent call last):
    popalign.backends.endpoint_scorer._Unreadable: prompt position 1 has no log-prob (only the first may have none)
    """
    total = 0.0
    for index, value in enumerate(values):
        if value is None and index == 0:
            continue
        if value is None:
            raise _Unreadable(f"prompt position {index} has no log-prob (only the first may have none)")
        if isinstance(value, bool) or not isinstance(value, int | float) or not -math.inf < value <= MAX_LOGPROB:
            raise _Unreadable(f"prompt position {index} has log-prob {value!r}, not a finite number <= 0")
        total += value
    if not math.isfinite(total):
        raise _Unreadable(f"its log-probs add up to {total}")
    return total


def _tgi_tokens(body: dict[str, Any], tokenizer: Any) -> int:
    return len(tokenizer(body["inputs"])["input_ids"])  # with the special tokens TGI adds


def _tgi_values(answer: dict[str, Any]) -> list[Any]:
    prefill = (answer.get("details") or {}).get("prefill") or []
    if not prefill:
        raise _Unreadable("no prefill log-probs in the answer")
    return [token.get("logprob") for token in prefill]


def _vllm_body(text: str, model: str | None, tokenizer: Any) -> dict[str, Any]:
    # the rendered chat template already holds any BOS token: the server must not add another
    return {"model": model, "prompt": text, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0,
            "add_special_tokens": False}  # fmt: skip


def _vllm_tokens(body: dict[str, Any], tokenizer: Any) -> int:
    return len(tokenizer(body["prompt"], add_special_tokens=False)["input_ids"])  # as it is told to tokenize


def _vllm_values(answer: dict[str, Any]) -> list[Any]:
    """`prompt_logprobs`: per position after the first, a map from token id to its log-prob, which with
    `prompt_logprobs: 0` holds the prompt's own token only (else `prompt_token_ids` says which it is)."""
    choice = answer["choices"][0]
    positions, ids = choice.get("prompt_logprobs"), choice.get("prompt_token_ids")
    if not positions:
        raise _Unreadable("no prompt_logprobs in the answer")
    values: list[Any] = []
    for index, entry in enumerate(positions):
        if entry is None:
            values.append(None)
            continue
        if ids:
            entry = {str(ids[index]): entry[str(ids[index])]}
        if len(entry) != 1:
            raise _Unreadable(f"prompt position {index} lists {len(entry)} tokens and the answer no prompt_token_ids")
        values.append(next(iter(entry.values()))["logprob"])
    return values


def _sglang_body(text: str, model: str | None, tokenizer: Any) -> dict[str, Any]:
    # SGLang tokenizes a text with special tokens and has no field to say otherwise; token ids it takes verbatim
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}, "return_logprob": True,
            "logprob_start_len": 0}  # fmt: skip


def _sglang_tokens(body: dict[str, Any], tokenizer: Any) -> int:
    return len(body["input_ids"])  # taken verbatim


def _sglang_values(answer: dict[str, Any]) -> list[Any]:
    """`input_token_logprobs`, `[logprob, token_id, text]` per prompt token (the first has none)."""
    entries = (answer.get("meta_info") or {}).get("input_token_logprobs")
    if not entries:
        raise _Unreadable("no input_token_logprobs in the answer")
    return [entry[0] for entry in entries]


@dataclass(frozen=True)
class Protocol:
    """How one kind of server is asked for LP: the route only it has and a key its JSON answer holds, where LP is
    asked and how, how many tokens it reads a request's text as (one log-prob each), and where its answer holds
    them."""

    label: str
    probe: str
    key: str
    route: Callable[[str], str]
    body: Callable[[str, str | None, Any], dict[str, Any]]
    tokens: Callable[[dict[str, Any], Any], int]
    read: Callable[[dict[str, Any]], list[Any]]


PROTOCOLS = {
    "tgi": Protocol(
        "TGI", "/info", "model_id", lambda url: native_url(url, "generate"), _tgi_body, _tgi_tokens, _tgi_values
    ),
    "sglang": Protocol(
        "SGLang",
        "/get_model_info",
        "model_path",
        lambda url: native_url(url, "generate"),
        _sglang_body,
        _sglang_tokens,
        _sglang_values,
    ),
    "vllm": Protocol(
        "vLLM",
        "/version",
        "version",
        lambda url: openai_url(url, "completions"),
        _vllm_body,
        _vllm_tokens,
        _vllm_values,
    ),
}
assert set(PROTOCOLS) == set(SCORE_PROTOCOLS) - {"auto"}


def native_url(url: str, route: str) -> str:
    """A server's own route (not under `/v1`), from a base URL that may end in `/v1`.

    >>> native_url("http://h:30000/v1/", "generate")
    'http://h:30000/generate'
    """
    return f"{url.rstrip('/').removesuffix('/v1')}/{route}"


class EndpointScorer:
    """LP from a served model: TGI, vLLM or SGLang (`protocol`, or `auto` to ask the server which it is). A model
    named in the URL (`URL#MODEL`) must be the one the server serves; vLLM is asked for it by name. `tokenizer` is
    the served model's (it rendered the texts): it says whether texts begin with a BOS token, and tokenizes them
    for SGLang.

    >>> scorer = EndpointScorer("http://localhost:8000#Qwen/Qwen3-8B", token=None, tokenizer=t)  # doctest: +SKIP
    >>> scorer.name  # doctest: +SKIP
    'vllm:Qwen/Qwen3-8B@Qwen/Qwen3-8B'
    """

    def __init__(
        self, url: str, *, tokenizer: Any, endpoints: Endpoints | None = None, protocol: str = "auto", chunk: int = 256
    ) -> None:
        spec = EndpointSpec.parse(url)
        if len(spec.urls) > 1:
            raise ConfigError(f"score_model: scoring asks one endpoint URL, got {len(spec.urls)} replicas")
        if protocol not in SCORE_PROTOCOLS:
            raise ConfigError(f"score_protocol: expected one of {', '.join(SCORE_PROTOCOLS)}, got {protocol!r}")
        self.url, self.model, self.tokenizer = spec.urls[0], spec.model, tokenizer
        endpoints = endpoints or Endpoints()
        credential = spec.credentials[0] if spec.credentials else None
        header = authorization(self.url, url_credential=credential, token=endpoints.token)
        self.headers = {"Authorization": header} if header else {}
        self.concurrency, self.timeout, self.chunk = endpoints.concurrency, endpoints.timeout, chunk
        self.retry = RetryPolicy(attempts=endpoints.retries, max_wait=endpoints.max_retry_wait)
        protocol, self.model, served, weights = asyncio.run(self._resolve(protocol))
        self.protocol = PROTOCOLS[protocol]
        #: What keys its cached LP: the server kind and what it says of its weights (else where it is).
        name = f"{protocol}:{served}@{weights}" if weights else f"{protocol}:{self.url}#{served}"
        self.name = escaped(name)  # as the server says it, but never a control character

    def logprobs(self, texts: list[str]) -> Iterator[tuple[list[int], list[float]]]:
        """Yield `(indices into texts, their LP)` for each chunk of `chunk` texts, asked `concurrency` at a time."""
        for start in range(0, len(texts), self.chunk):
            indices = list(range(start, min(start + self.chunk, len(texts))))
            yield indices, asyncio.run(self._sums([texts[i] for i in indices]))

    def _failed(self, what: str, label: str = "") -> BackendError:
        """One line naming the endpoint (and its kind, once known) and what went wrong."""
        return BackendError(f"{label} endpoint {self.url}: {what}".lstrip())

    async def _get(self, http: httpx2.AsyncClient, address: str) -> Any:
        """The JSON answer to a GET of `address`; None for any other status or an answer not in JSON."""
        response = await http.get(address, headers=self.headers, timeout=30)
        if response.status_code in (401, 403):
            refusal = "unauthorized" if response.status_code == 401 else "forbidden"
            raise self._failed(f"{refusal} (HTTP {response.status_code})")
        try:
            return response.json() if response.status_code == 200 else None
        except ValueError:
            return None

    async def _resolve(self, protocol: str) -> tuple[str, str | None, str, str]:
        """The protocol (asked of the server when `auto`), the model to ask for (the named one, checked against
        what the server serves, or for vLLM the one it lists), the served model's name, and what the server says
        of its weights (TGI's `model_sha`, vLLM's `root`, SGLang's model path and `weight_version`)."""
        try:
            async with get_async_session() as http:
                listing = await self._get(http, openai_url(self.url, "models"))
                entries = [e for e in (listing or {}).get("data") or [] if isinstance(e, dict) and e.get("id")]
                owners = {str(entry.get("owned_by")) for entry in entries if entry.get("owned_by")}
                if protocol == "auto":
                    protocol = await self._detect(http, owners)
                label = PROTOCOLS[protocol].label
                if protocol == "tgi":  # one model, named on /info
                    info = await self._get(http, native_url(self.url, "info")) or {}
                    served = info.get("model_id")
                    if self.model and served != self.model:
                        raise self._failed(f"serves {served!r}, not {self.model!r}", label)
                    return protocol, self.model, str(served or ""), str(info.get("model_sha") or "")
                listed = tuple(str(entry["id"]) for entry in entries)
                if protocol == "sglang":
                    info = await self._get(http, native_url(self.url, "get_model_info")) or {}
                    model = self.model and choose_model(self.url, self.model, listed)
                    weights = f"{info.get('model_path', '')}#{info.get('weight_version', '')}" if info else ""
                    return protocol, model, model or str(info.get("model_path") or ""), weights
                model = choose_model(self.url, self.model, listed)
                entry = next(entry for entry in entries if entry["id"] == model) if listed else {}
                root = "<".join(str(entry[key]) for key in ("root", "parent") if entry.get(key))
                return protocol, model, model, root
        except OfflineModeIsEnabled:
            raise self._failed("HF_HUB_OFFLINE=1 blocks huggingface_hub's HTTP client; unset it") from None
        except (httpx2.HTTPError, OSError) as err:
            raise self._failed(f"unreachable ({type(err).__name__}: {first_line(err)})") from None

    async def _detect(self, http: httpx2.AsyncClient, owners: set[str]) -> str:
        """Which protocol the server speaks, by a route only it has; vLLM's `/version` only where `/v1/models` says
        `owned_by: vllm` or says no owner (TensorRT-LLM's `trtllm-serve` answers `/version` alike)."""
        for name, candidate in PROTOCOLS.items():
            answer = await self._get(http, native_url(self.url, candidate.probe.lstrip("/")))
            if isinstance(answer, dict) and candidate.key in answer:
                if name == "vllm" and owners and "vllm" not in owners:
                    raise self._failed(
                        f"answers /version as vLLM does, but its /v1/models says owned_by {', '.join(sorted(owners))}, "
                        "not vllm (TensorRT-LLM's trtllm-serve, say): popalign reads prompt log-probs from TGI, vLLM "
                        "and SGLang only"
                    )  # fmt: skip
                return name
        raise self._failed(
            "answers none of TGI's /info, SGLang's /get_model_info and vLLM's /version, "
            "so it has no prompt log-probs to give (name its protocol with --score-protocol)"
        )  # fmt: skip

    async def _sums(self, texts: list[str]) -> list[float]:
        """LP of each text, `concurrency` at a time; the first failure cancels the others and is raised alone."""
        limit = asyncio.Semaphore(self.concurrency)
        async with get_async_session() as http:

            async def one(text: str) -> float:
                async with limit:
                    return await self._sum(http, text)

            tasks = [asyncio.ensure_future(one(text)) for text in texts]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            failed = next((task.exception() for task in tasks if task in done and task.exception()), None)
            if failed:
                raise failed
            return [task.result() for task in tasks]

    async def _sum(self, http: httpx2.AsyncClient, text: str) -> float:
        """LP of one text, asked as generation asks: each try within `timeout` seconds whole and `answer_bytes`
        long, a failed try retried with backoff; a reading that is not one finite log-prob per token is refused."""
        protocol = self.protocol
        address, body = protocol.route(self.url), protocol.body(text, self.model, self.tokenizer)
        tokens = protocol.tokens(body, self.tokenizer)
        for attempt in range(self.retry.attempts):
            started = time.monotonic()
            try:
                answer = await asyncio.wait_for(self._post(http, address, body, tokens), timeout=self.timeout)
                failure = None
            except TimeoutError:
                failure = Failure(f"no whole answer within {self.timeout:g} s (--timeout)")
            except (HTTPStatus, Oversized, httpx2.HTTPError) as err:
                failure = classify(err)
            except OSError as err:
                failure = Failure(f"connection failed ({type(err).__name__}: {err})")
            if failure is None:
                return self._read(answer, tokens)
            if failure.fatal or failure.refused:
                raise self._failed(f"{failure.reason} on {address}", protocol.label)
            if attempt + 1 == self.retry.attempts:
                raise self._failed(
                    f"still failing after {attempt + 1} attempts ({failure.reason}); scores already read are "
                    "cached: rerun to resume",
                    protocol.label,
                )
            await asyncio.sleep(self.retry.delay(attempt, failure.retry_after, time.monotonic() - started))
        raise AssertionError("unreachable: RetryPolicy.attempts is positive")

    async def _post(self, http: httpx2.AsyncClient, address: str, body: dict[str, Any], tokens: int) -> Any:
        """One try: the answer's JSON, read no further than `answer_bytes(tokens)`."""
        async with http.stream("POST", address, json=body, headers=self.headers, timeout=self.timeout) as response:
            content = await read_capped(response, answer_bytes(tokens), f"a text of {tokens} tokens")
        if response.status_code >= 400:
            raise HTTPStatus(
                response.status_code, response.headers.get("Retry-After"), content.decode("utf-8", "replace")
            )
        return json.loads(content)

    def _read(self, answer: Any, tokens: int) -> float:
        """LP from an answer: one finite log-prob per token of the text (the first alone may have none)."""
        try:
            values = self.protocol.read(answer)
            if len(values) != tokens:
                raise _Unreadable(
                    f"{len(values)} prompt log-probs for a text of {tokens} tokens (is --score-tokenizer the served "
                    "model's?)"
                )
            return checked_total(values)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise self._failed(
                f"unreadable answer ({first_line(err)}); nothing of it is cached", self.protocol.label
            ) from None


def answer_bytes(tokens: int) -> int:
    """The most bytes a log-prob answer for a text of `tokens` tokens may take: each token's entry (its log-prob,
    id and text, escaped as JSON) is rarely over 200 bytes.

    >>> answer_bytes(1000)
    1089536
    """
    return ENVELOPE_BYTES + SCORE_BYTES_PER_TOKEN * tokens


#: Bytes a log-prob answer may take per token of the scored text (vLLM's top entries and decoded text included).
SCORE_BYTES_PER_TOKEN = 1024
