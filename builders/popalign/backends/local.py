"""In-process batched generation with `transformers`; the embedded default is SmolLM2-135M-Instruct (GGUF)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from popalign.errors import BackendError, PromptTooLong, first_line
from popalign.generation import (
    LENGTH,
    STOP,
    Generation,
    GenerationParams,
    OnDone,
    OnRetry,
    Request,
    before_stop,
    chat_prompt,
)
from popalign.model_identity import ModelIdentity, hub_commit, is_hub_id
from popalign.resources import embedded_model_path
from popalign.roles import EMBEDDED, ModelSpec

#: The local backend batches from the requests of this many batches' worth of runs (sorted by prompt length).
LOCAL_BATCHES_IN_FLIGHT = 8
T = TypeVar("T")
#: What `from_pretrained` raises for a model or tokenizer that is missing, unreadable or corrupt.
LOAD_ERRORS = (OSError, ValueError, SafetensorError)
_Waiter = tuple["asyncio.Future[Generation]", OnDone]


class LocalBackend:
    """Loads each model once and answers requests in padded batches of `batch_size`.

    The engine `submit`s requests and calls `flush` once every run waits: the queued requests are then generated
    in batches formed by prompt length, each answer handed back as its batch finishes.

    >>> backend = LocalBackend(batch_size=8)
    >>> backend.generate(ModelSpec("smollm2"), [request], GenerationParams())  # doctest: +SKIP
    """

    name = "local"
    #: A chat may end in an assistant turn the model continues (`generation.chat_prompt`).
    prefills = True

    def __init__(self, *, batch_size: int = 8, device: str | None = None) -> None:
        if batch_size < 1:
            raise BackendError("batch size must be at least 1")
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._models: dict[ModelSpec, PreTrainedModel] = {}
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._queue: dict[tuple[ModelSpec, GenerationParams], list[tuple[_Waiter, Request]]] = defaultdict(list)
        self.on_load: Callable[[ModelSpec, float | None], None] | None = None

    async def identity(self, spec: ModelSpec) -> ModelIdentity:
        """What the spec runs: its files' fingerprint or Hub commit (its engine is this backend's name in a cache
        key)."""
        return spec.identify()

    def slots(self, specs: Sequence[ModelSpec]) -> int:
        """Requests waiting at once: batches' worth of `LOCAL_BATCHES_IN_FLIGHT`, sorted by length into batches."""
        return self.batch_size * LOCAL_BATCHES_IN_FLIGHT

    def submit(
        self, spec: ModelSpec, request: Request, params: GenerationParams, on_done: OnDone, on_retry: OnRetry
    ) -> asyncio.Future[Generation]:
        """Queue `request` for the next `flush`; the future resolves once its batch is generated."""
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._queue[spec, params].append(((future, on_done), request))
        return future

    def flush(self) -> None:
        """Generate every queued request, in batches, handing each answer over as its batch finishes."""
        queue, self._queue = self._queue, defaultdict(list)
        for (spec, params), pending in queue.items():
            for waiters, generations in self.iter_batches(spec, pending, params, refuse=_refuse):
                for (future, on_done), generation in zip(waiters, generations, strict=True):
                    on_done(generation)
                    future.set_result(generation)

    def generate(self, spec: ModelSpec, requests: list[Request], params: GenerationParams) -> list[Generation]:
        """Answer `requests` with `spec`, in their order."""
        answers: dict[int, Generation] = {}
        for batch, generations in self.iter_batches(spec, list(enumerate(requests)), params):
            answers.update(zip(batch, generations, strict=True))
        return [answers[i] for i in range(len(requests))]

    def iter_batches(
        self,
        spec: ModelSpec,
        requests: list[tuple[T, Request]],
        params: GenerationParams,
        refuse: Callable[[T, PromptTooLong], None] | None = None,
    ) -> Iterator[tuple[list[T], list[Generation]]]:
        """Answer `(tag, request)` pairs in batches formed by prompt length; yield `(tags, generations)`
        as each batch finishes, so a caller can store it before the next one starts. With `refuse`, a request whose
        prompt and `max_new_tokens` do not fit the model's positions is handed to it instead (its pair is dropped as
        `too-long`)."""
        model, tokenizer = self.load(spec)
        chats = [chat_prompt(tokenizer, r.chat()) for _, r in requests]
        refused = set()
        for i, chat in enumerate(chats):
            if refuse is not None and (error := _too_long(spec, model, tokenizer, chat, params)):
                refuse(requests[i][0], error)
                refused.add(i)
        order = sorted((i for i in range(len(requests)) if i not in refused), key=lambda i: len(chats[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            samples = [requests[i][1].sample for i in batch]
            generations = self._generate_batch(model, tokenizer, [chats[i] for i in batch], params, samples)
            yield [requests[i][0] for i in batch], generations

    def sequence_logprobs(self, spec: ModelSpec, texts: list[str]) -> Iterator[tuple[list[int], list[float]]]:
        """Teacher-forced log-probability of each text (the sum over its tokens after the first), in batches
        formed by length; yield `(indices, logprobs)` as each batch finishes."""
        model, tokenizer = self.load(spec)
        encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            yield batch, self._logprob_batch(model, [encoded[i] for i in batch])

    def choice_logprobs(
        self, spec: ModelSpec, chats: Sequence[list[dict[str, str]]], choices: Sequence[str]
    ) -> list[dict[str, float] | None]:
        """For each chat, log p(choice | chat) of each choice as the whole answer, teacher-forced in one pass (as
        LP(prompt + choice): the prompt's own log-prob is the same for every choice)."""
        tokenizer = self.tokenizer(spec.location)
        prompts = [chat_prompt(tokenizer, list(chat)) for chat in chats]
        texts = [prompt + choice for prompt in prompts for choice in choices]
        found: dict[int, float] = {}
        for indices, values in self.sequence_logprobs(spec, texts):
            found.update(zip(indices, values, strict=True))
        width = len(choices)
        return [{choice: found[width * i + k] for k, choice in enumerate(choices)} for i in range(len(chats))]

    def load(self, spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The model and tokenizer of `spec`, loading each at most once; `on_load` hears of a load as it starts
        (seconds None) and as it ends."""
        base = ModelSpec(spec.source, revision=spec.revision)
        started = time.monotonic()
        if base not in self._models and self.on_load:
            self.on_load(base, None)
        tokenizer = self.tokenizer(spec.location)
        if spec not in self._models:
            if base not in self._models:
                self._models[base] = self._load_model(spec.location)
                if self.on_load:
                    self.on_load(base, time.monotonic() - started)
            self._models[spec] = (
                self._models[base] if spec.layers is None else _drop_middle_layers(self._models[base], spec)
            )
        return self._models[spec], tokenizer

    def tokenizer(self, source: str) -> PreTrainedTokenizerBase:
        """The tokenizer (and chat template) of a model source, loaded once."""
        if source not in self._tokenizers:
            try:
                tokenizer = AutoTokenizer.from_pretrained(**model_location(source))
            except LOAD_ERRORS as err:
                raise BackendError(f"model {source!r}: cannot load tokenizer ({first_line(err)})") from err
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizers[source] = tokenizer
        return self._tokenizers[source]

    def _load_model(self, source: str) -> PreTrainedModel:
        try:
            model = AutoModelForCausalLM.from_pretrained(**model_location(source))
        except LOAD_ERRORS as err:
            raise BackendError(f"model {source!r}: cannot load ({first_line(err)})") from err
        return model.to(self.device).eval()

    @torch.inference_mode()
    def _generate_batch(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        chats: list[str],
        params: GenerationParams,
        samples: Sequence[int] = (),
    ) -> list[Generation]:
        encoded = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(_batch_seed(params.seed, chats, samples))
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
        if params.min_p:
            sampling["min_p"] = params.min_p
        penalties = LogitsProcessorList()
        if params.frequency_penalty or params.presence_penalty:
            width = encoded["input_ids"].shape[1]
            penalties.append(AnswerPenalty(width, params.frequency_penalty, params.presence_penalty))
        stops = {"stop_strings": list(params.stop), "tokenizer": tokenizer} if params.stop else {}
        output = model.generate(
            **encoded,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            repetition_penalty=params.repetition_penalty,
            logits_processor=penalties,
            **stops,
            **(sampling if params.temperature > 0 else {"do_sample": False}),
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        ends = torch.tensor(sorted(_end_tokens(model, tokenizer)), device=new_tokens.device)
        generations = []
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()  # each prompt's own tokens, not its padding
        for row, prompt_tokens in zip(new_tokens, prompt_lengths, strict=True):
            kept = row[row != tokenizer.pad_token_id]
            stopped = bool(torch.isin(row, ends).any()) or len(row) < params.max_new_tokens
            text, cut = before_stop(tokenizer.decode(kept, skip_special_tokens=True), params.stop)
            finish = STOP if stopped or cut else LENGTH
            generations.append(Generation(text.strip(), len(kept), finish, int(prompt_tokens)))
        return generations

    @torch.inference_mode()
    def _logprob_batch(self, model: PreTrainedModel, sequences: list[list[int]]) -> list[float]:
        width = max(len(ids) for ids in sequences)
        ids = torch.zeros((len(sequences), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
        sums = []
        for row, sequence in enumerate(sequences):
            targets = ids[row, 1 : len(sequence)].to(self.device)
            logprobs = torch.log_softmax(logits[row, : len(sequence) - 1], dim=-1)
            sums.append(logprobs.gather(1, targets[:, None]).sum().item())
        return sums


class AnswerPenalty(LogitsProcessor):
    """OpenAI's frequency and presence penalties, which transformers lacks: each token's logit is lowered by
    `frequency` times its count in the answer so far, and by `presence` once it is there at all. The answer is
    what follows the batch's `width` prompt columns (left-padded, so every row's answer starts there)."""

    def __init__(self, width: int, frequency: float, presence: float) -> None:
        self.width, self.frequency, self.presence = width, frequency, presence

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answer = input_ids[:, self.width :]
        counts = torch.zeros_like(scores).scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def _refuse(waiter: _Waiter, error: PromptTooLong) -> None:
    """Refuse a queued request: its future raises `error`."""
    waiter[0].set_exception(error)


def _too_long(
    spec: ModelSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, chat: str, params: GenerationParams
) -> PromptTooLong | None:
    """Why a rendered chat and its `max_new_tokens` do not fit the model's positions, or None where they do (or the
    model names no limit)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    tokens = len(tokenizer(chat, add_special_tokens=False)["input_ids"]) if limit else 0
    if not limit or tokens + params.max_new_tokens <= limit:
        return None
    return PromptTooLong(
        f"a prompt of {tokens} tokens and {params.max_new_tokens} new tokens do not fit {spec}'s "
        f"{limit} positions (shorten the prompt or --max-new-tokens)"
    )


def _end_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The token ids that end an answer: the generation config's end-of-sequence ids and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    return {i for i in (*ids, tokenizer.eos_token_id) if i is not None}


def model_location(source: str) -> dict[str, str]:
    """`from_pretrained` arguments for a model source: the embedded GGUF, a `.gguf` file, a folder, or a Hub id
    (`ORG/NAME[@REVISION]`) at the commit it resolves to, the one its identity records."""
    if source == EMBEDDED:
        path = embedded_model_path()
        return {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    path = Path(source)
    if path.suffix == ".gguf":
        return {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    repo, _, revision = source.partition("@")
    if is_hub_id(repo):
        return {"pretrained_model_name_or_path": repo, "revision": hub_commit(repo, revision or None)}
    return {"pretrained_model_name_or_path": source}


def _drop_middle_layers(model: PreTrainedModel, spec: ModelSpec) -> PreTrainedModel:
    """A copy of `model` keeping `spec.layers` decoder layers: a block is removed from 2/5 of the depth on.

    Removing middle layers degrades a model gracefully; removing the last ones leaves it incoherent. The copy
    shares every weight tensor with `model`: only the module objects along the changed path are new (the model,
    its decoder, and each kept layer and its attention, which hold their own layer index), so a copy costs no
    memory and no load time.
    """
    total = len(model.model.layers)
    removed = spec.removed_layers(total)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = spec.layers
    if getattr(config, "layer_types", None):
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in removed]
    layers = []
    for index, layer in enumerate(layer for i, layer in enumerate(model.model.layers) if i not in removed):
        kept = _shallow_copy(layer)
        kept.self_attn = _shallow_copy(layer.self_attn)
        kept.self_attn.layer_idx = index
        layers.append(kept)
    weaker, decoder = _shallow_copy(model), _shallow_copy(model.model)
    decoder.layers, decoder.config, weaker.config = torch.nn.ModuleList(layers), config, config
    weaker.model = decoder
    return weaker


def _shallow_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A new module object over the same parameters, buffers and submodules, whose own attributes and children
    can be replaced without touching `module`."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


def _batch_seed(seed: int, chats: list[str], samples: Sequence[int] = ()) -> int:
    """A sampling seed fixed by the run's seed, the batch's prompts and their draws (`Request.sample`, where not
    the first), so a rerun draws the same and a second draw of one prompt is another draw."""
    draws = list(samples) or [0] * len(chats)
    drawn = [f"{chat}\0draw {draw}" if draw else chat for chat, draw in zip(chats, draws, strict=True)]
    digest = hashlib.sha256("\0".join([str(seed), *drawn]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)
