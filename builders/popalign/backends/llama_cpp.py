"""In-process generation of GGUF models with llama.cpp (`llama-cpp-python`), continuously batched: every model
answers up to `LLAMA_SLOTS` requests at once, and an answer that ends frees its slot at once for the next request,
so no answer waits for the longest one. It reads the GGUF as it is (no de-quantizing). Each slot has its own KV
cache and each answer its own seeded generator, so an answer does not depend on which others shared its batch."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import os
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
from jinja2 import TemplateError
from llama_cpp import _internals, llama_grammar
from transformers.utils.chat_template_utils import render_jinja_template

from popalign.errors import BackendError, PromptTooLong, first_line
from popalign.generation import LENGTH, STOP, Generation, GenerationParams, OnDone, OnRetry, Request, before_stop
from popalign.model_identity import ModelIdentity
from popalign.resources import embedded_model_path
from popalign.roles import EMBEDDED, ModelSpec
from popalign.shapes import Shape

#: Requests each model answers at once (llama.cpp sequences, each with a KV cache of its own).
LLAMA_SLOTS = 16
#: KV-cache tokens of each slot (its prompt and `max_new_tokens` must fit), up to the model's training context. The
#: cache is 8-bit (q8_0): 16 slots of SmolLM2-135M take 400 MB.
SLOT_TOKENS = 2048
#: Tokens per llama.cpp decode call: one for each answer being written, the rest for prompts being read.
DECODE_TOKENS = 512
#: Candidates the sampler sorts first; the whole vocabulary is sorted only when these do not reach top-p.
TOP_CANDIDATES = 256


@llama_cpp.llama_log_callback
def _errors_only(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's log, errors only (its load and context notes are left out)."""
    if level == GGML_LOG_LEVEL_ERROR:
        print(text.decode("utf-8", errors="replace"), end="", file=sys.stderr)


GGML_LOG_LEVEL_ERROR = 4  # ggml.h: none, debug, info, warn, error, cont
llama_cpp.llama_log_set(_errors_only, ctypes.c_void_p(0))


def model_file(source: str) -> Path:
    """The GGUF file of a model source: the embedded SmolLM2 (`popalign[demo]`) or a `.gguf` path."""
    if source == EMBEDDED:
        return embedded_model_path()
    path = Path(source)
    if not path.is_file():
        raise BackendError(f"model {source!r}: no such GGUF file")
    return path


class LlamaCppBackend:
    """Answers requests for GGUF models on llama.cpp, in a worker thread that steps every model's running
    answers together; the engine's event loop stays free while it works.

    >>> backend = LlamaCppBackend()
    >>> backend.generate(ModelSpec("smollm2"), [request], GenerationParams())  # doctest: +SKIP
    """

    name = "llama.cpp"
    #: A chat may end in an assistant turn the model continues.
    prefills = True

    def __init__(self, *, slots: int = LLAMA_SLOTS, threads: int | None = None) -> None:
        self.slots_per_model = slots
        self.threads = threads or len(os.sched_getaffinity(0))
        self._models: dict[ModelSpec, _Model] = {}
        self._inbox: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    async def identity(self, spec: ModelSpec) -> ModelIdentity:
        """What the spec runs: its GGUF file's fingerprint (its engine is this backend's name in a cache key)."""
        return spec.identify()

    def slots(self, specs: Sequence[ModelSpec]) -> int:
        """Requests answered at once: `LLAMA_SLOTS` for each model."""
        return self.slots_per_model * max(1, len({ModelSpec(s.source, s.layers) for s in specs}))

    def submit(
        self, spec: ModelSpec, request: Request, params: GenerationParams, on_done: OnDone, on_retry: OnRetry
    ) -> asyncio.Future[Generation]:
        """Queue `request` for the worker; the future resolves (and `on_done` runs, on the loop) as it ends."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()

        def deliver(result: Generation | BaseException) -> None:
            if future.cancelled():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                on_done(result)
                future.set_result(result)

        def hand_back(result: Generation | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the run ended without this answer
                loop.call_soon_threadsafe(deliver, result)

        self._post(_Job(spec, request.chat(), params, request.sample, hand_back, future.cancelled, shape=request.shape))
        return future

    def flush(self) -> None:
        """Nothing to do: the worker answers as requests arrive."""

    def generate(self, spec: ModelSpec, requests: list[Request], params: GenerationParams) -> list[Generation]:
        """Answer `requests` with `spec`, in their order (blocking)."""

        async def answer_all() -> list[Generation]:
            waits = [self.submit(spec, r, params, lambda _: None, lambda *_: None) for r in requests]
            return list(await asyncio.gather(*waits))

        return asyncio.run(answer_all())

    def choice_logprobs(
        self, spec: ModelSpec, chats: Sequence[list[dict[str, str]]], choices: Sequence[str]
    ) -> list[dict[str, float] | None]:
        """For each chat, log p(choice | chat) of each choice as the whole answer, teacher-forced (blocking)."""
        done = threading.Event()
        found: list[Any] = []

        def hand_back(result: Any) -> None:
            found.append(result)
            done.set()

        self._post(_Job(spec, [], GenerationParams(), 0, hand_back, lambda: False, scoring=(list(chats), choices)))
        done.wait()
        if isinstance(found[0], BaseException):
            raise found[0]
        return found[0]

    def _post(self, job: _Job) -> None:
        with self._lock:
            self._inbox.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="popalign-llama.cpp", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        """Step every model with work until none is left, then end (the next job starts a new worker). Whatever
        goes wrong fails the requests it touches, never the worker silently: every waiting request hears of it."""
        try:
            while True:
                with self._lock:
                    jobs = list(self._inbox)
                    self._inbox.clear()
                    if not jobs and not any(model.busy for model in self._models.values()):
                        self._worker = None
                        return
                for job in jobs:
                    try:
                        self.load(job.spec).take(job)
                    except BackendError as err:
                        job.hand_back(err)
                for model in list(self._models.values()):
                    if model.busy:
                        model.step()
        except BaseException as err:
            failure = BackendError(f"llama.cpp backend: {type(err).__name__}: {first_line(err)}")
            with self._lock:
                jobs, self._worker = list(self._inbox), None
                self._inbox.clear()
            for job in [*jobs, *(job for model in self._models.values() for job in model.drop_all())]:
                job.hand_back(failure)
            raise

    def load(self, spec: ModelSpec) -> _Model:
        """The loaded model of `spec` (its weaker copy written first), loaded once."""
        key = ModelSpec(spec.source, spec.layers)
        if key not in self._models:
            self._models[key] = _Model.load(key, self.slots_per_model, self.threads)
        return self._models[key]


@dataclass
class _Job:
    """A generation request (or, with `scoring`, a batch of choice log-probs) for the worker."""

    spec: ModelSpec
    chat: list[dict[str, str]]
    params: GenerationParams
    sample: int
    hand_back: Callable[[Any], None]
    cancelled: Callable[[], bool]
    scoring: tuple[list[list[dict[str, str]]], Sequence[str]] | None = None
    shape: Shape | None = None


@dataclass
class _Answer:
    """One answer being written in a slot."""

    job: _Job
    prompt: list[int]
    rng: np.random.Generator
    fed: int = 0
    tokens: list[int] = field(default_factory=list)
    pieces: list[bytes] = field(default_factory=list)
    grammar: Grammar | None = None  # keeps the answer to the shape the request asks for

    @property
    def reading(self) -> bool:
        return self.fed < len(self.prompt)


class _Model:
    """One loaded GGUF model, its context of `slots` sequences (each with a KV cache of its own of `limit` tokens),
    and the answers waiting for a slot and running in one."""

    def __init__(self, spec: ModelSpec, model: Any, context: Any, slots: int) -> None:
        self.spec, self.model, self.context, self.slots = spec, model, context, slots
        self.vocab = model.vocab
        self.n_vocab = model.n_vocab()
        self.limit = llama_cpp.llama_n_ctx_seq(context.ctx)
        self.memory = llama_cpp.llama_get_memory(context.ctx)
        self.batch = _internals.LlamaBatch(n_tokens=DECODE_TOKENS, embd=0, n_seq_max=1, verbose=False)
        metadata = model.metadata()
        self.template = metadata.get("tokenizer.chat_template")
        self.special = {
            f"{name}_token": model.token_get_text(token)
            for name, token in (("bos", model.token_bos()), ("eos", model.token_eos()))
            if token >= 0
        }
        self.pieces: dict[int, bytes] = {}
        self.waiting: deque[_Job] = deque()
        self.running: dict[int, _Answer] = {}

    @classmethod
    def load(cls, spec: ModelSpec, slots: int, threads: int) -> _Model:
        path = model_file(spec.source)
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = False  # the AMX weight repacking crashes on some CPUs that report AMX
        with tempfile.TemporaryDirectory(prefix="popalign-gguf-", ignore_cleanup_errors=True) as folder:
            if spec.layers is not None:
                path = fewer_layers(path, spec, Path(folder) / "weaker.gguf")
            try:
                model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
            except ValueError as err:
                raise BackendError(f"model {spec.source!r}: cannot load ({first_line(err)})") from err
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = slots * min(SLOT_TOKENS, model.n_ctx_train())
        context_params.n_batch = context_params.n_ubatch = DECODE_TOKENS
        context_params.n_seq_max = slots
        context_params.kv_unified = False  # a cache of its own per slot: one shared cache made answers depend on others
        context_params.type_k = context_params.type_v = llama_cpp.GGML_TYPE_Q8_0
        context_params.n_threads = context_params.n_threads_batch = threads
        try:
            context = _internals.LlamaContext(model=model, params=context_params, verbose=False)
        except ValueError as err:
            raise BackendError(f"model {spec.source!r}: cannot make a llama.cpp context ({first_line(err)})") from err
        return cls(spec, model, context, slots)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def take(self, job: _Job) -> None:
        self.waiting.append(job)

    def step(self) -> None:
        """Admit waiting requests into free slots, run one decode (one token for each answer being written, and
        prompt tokens for those being read), then sample, and hand back every answer that ended."""
        self._admit()
        if not self.running:
            return
        wanted = self._fill_batch()
        if self.context.ctx is None or llama_cpp.llama_decode(self.context.ctx, self.batch.batch) != 0:
            self._fail_all("llama.cpp could not decode the batch")
            return
        for slot, index in wanted:
            self._advance(slot, index)

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.slots:
            job = self.waiting[0]
            if job.scoring is not None:
                if self.running:
                    return  # scored once the running answers are done: it decodes in slot 0
                self.waiting.popleft()
                job.hand_back(self._choice_logprobs(*job.scoring))
                continue
            if job.cancelled():
                self.waiting.popleft()
                continue
            try:
                prompt = self.tokenize(self.render(job.chat))
            except (BackendError, ValueError, TemplateError) as err:
                self.waiting.popleft()
                job.hand_back(err if isinstance(err, BackendError) else BackendError(f"model {self.spec}: {err}"))
                continue
            need = len(prompt) + job.params.max_new_tokens
            if need > self.limit:
                self.waiting.popleft()
                job.hand_back(
                    PromptTooLong(
                        f"a prompt of {len(prompt)} tokens and {job.params.max_new_tokens} new tokens do not fit "
                        f"{self.spec}'s context of {self.limit} per answer (shorten the prompt or --max-new-tokens)"
                    )
                )
                continue
            self.waiting.popleft()
            slot = next(i for i in range(self.slots) if i not in self.running)
            seed = _answer_seed(job.params.seed, prompt, job.sample)
            grammar = Grammar(self.vocab, job.shape, self.n_vocab) if job.shape else None
            self.running[slot] = _Answer(job, prompt, np.random.default_rng(seed), grammar=grammar)

    def _fill_batch(self) -> list[tuple[int, int]]:
        """Put each writing answer's last token in the batch, then prompt tokens up to `DECODE_TOKENS`; return the
        (slot, batch index) pairs whose logits are read after the decode."""
        batch, n, wanted = self.batch.batch, 0, []
        for slot, answer in self.running.items():
            if not answer.reading:
                n = self._put(n, answer.tokens[-1], len(answer.prompt) + len(answer.tokens) - 1, slot, True)
                wanted.append((slot, n - 1))
        for slot, answer in self.running.items():
            while answer.reading and n < DECODE_TOKENS:
                last = answer.fed == len(answer.prompt) - 1
                n = self._put(n, answer.prompt[answer.fed], answer.fed, slot, last)
                answer.fed += 1
                if last:
                    wanted.append((slot, n - 1))
        batch.n_tokens = n
        return wanted

    def _put(self, n: int, token: int, position: int, slot: int, logits: bool) -> int:
        batch = self.batch.batch
        batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, position, 1, logits
        batch.seq_id[n][0] = slot
        return n + 1

    def _advance(self, slot: int, index: int) -> None:
        answer = self.running[slot]
        if answer.job.cancelled():
            self._free(slot)
            return
        params = answer.job.params
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.context.ctx, index), shape=(self.n_vocab,))
        if answer.grammar:
            logits = answer.grammar.allowed(logits)
        token = sample(logits, answer.prompt, answer.tokens, params, answer.rng)
        if answer.grammar:
            answer.grammar.accept(token)
        answer.tokens.append(token)
        ended = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        if not ended:
            answer.pieces.append(self.piece(token))
        text, stopped = before_stop(b"".join(answer.pieces).decode("utf-8", errors="ignore"), params.stop)
        if ended or stopped or len(answer.tokens) >= params.max_new_tokens:
            self._free(slot)
            finish = STOP if ended or stopped else LENGTH
            answer.job.hand_back(Generation(text.strip(), len(answer.tokens), finish, len(answer.prompt)))

    def _free(self, slot: int) -> None:
        answer = self.running.pop(slot)
        if answer.grammar:
            answer.grammar.close()
        llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)

    def _fail_all(self, reason: str) -> None:
        for slot in list(self.running):
            answer = self.running[slot]
            self._free(slot)
            answer.job.hand_back(BackendError(f"model {self.spec}: {reason}"))

    def drop_all(self) -> list[_Job]:
        """Every job this model holds, running or waiting, taken off it (the worker failed)."""
        jobs = [answer.job for answer in self.running.values()] + list(self.waiting)
        for slot in list(self.running):
            self._free(slot)
        self.waiting.clear()
        return jobs

    def _choice_logprobs(
        self, chats: list[list[dict[str, str]]], choices: Sequence[str]
    ) -> list[dict[str, float] | None] | BaseException:
        """Teacher-forced log p(choice | chat): the tokens `prompt + choice` has beyond the prompt's own."""
        try:
            found: list[dict[str, float] | None] = []
            for chat in chats:
                prompt_text = self.render(chat)
                prompt = self.tokenize(prompt_text)
                found.append({choice: self._continuation_logprob(prompt, prompt_text + choice) for choice in choices})
            return found
        except BackendError as err:
            return err

    def _continuation_logprob(self, prompt: list[int], text: str) -> float:
        tokens = self.tokenize(text)
        shared = next((i for i, (a, b) in enumerate(zip(prompt, tokens, strict=False)) if a != b), len(prompt))
        shared = min(shared, len(tokens) - 1)
        if len(tokens) > min(self.limit, DECODE_TOKENS * 64):
            raise BackendError(f"model {self.spec}: a judge prompt of {len(tokens)} tokens is too long")
        llama_cpp.llama_memory_seq_rm(self.memory, 0, -1, -1)
        total, start = 0.0, 0
        while start < len(tokens) - 1:
            end = min(start + DECODE_TOKENS, len(tokens) - 1)
            wanted = []
            n = 0
            for position in range(start, end):
                keep = position >= shared - 1
                n = self._put(n, tokens[position], position, 0, keep)
                if keep:
                    wanted.append((n - 1, tokens[position + 1]))
            self.batch.batch.n_tokens = n
            if llama_cpp.llama_decode(self.context.ctx, self.batch.batch) != 0:
                raise BackendError(f"model {self.spec}: llama.cpp could not decode a judge prompt")
            for index, target in wanted:
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(self.context.ctx, index), shape=(self.n_vocab,)
                ).astype(np.float64)
                top = logits.max()
                total += float(logits[target] - top - np.log(np.exp(logits - top).sum()))
            start = end
        llama_cpp.llama_memory_seq_rm(self.memory, 0, -1, -1)
        return total

    def render(self, chat: list[dict[str, str]]) -> str:
        """A chat as the model reads it, through its GGUF chat template rendered as transformers renders chat
        templates: the generation prompt after the last turn, or a final assistant turn left open (a prefill)."""
        if not self.template:
            raise BackendError(f"model {self.spec}: its GGUF file has no chat template")
        prefilled = bool(chat) and chat[-1]["role"] == "assistant"
        rendered, _ = render_jinja_template(
            [chat],
            chat_template=self.template,
            add_generation_prompt=not prefilled,
            continue_final_message=prefilled,
            **self.special,
        )
        return rendered[0]

    def piece(self, token: int) -> bytes:
        """The bytes a token reads as (none for a control token), looked up once per token."""
        if token not in self.pieces:
            size = 64
            while True:
                buffer = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, size, 0, False)
                if n >= 0:
                    break
                size = -n
            self.pieces[token] = buffer.raw[:n]
        return self.pieces[token]

    def tokenize(self, text: str) -> list[int]:
        return list(self.model.tokenize(text.encode("utf-8"), add_bos=False, special=True))


class Grammar:
    """llama.cpp's grammar sampler over one answer: the JSON schema of a `Shape` as GBNF, which masks every token
    that would leave the shape (an end-of-generation token only once the shape is complete)."""

    def __init__(self, vocab: Any, shape: Shape, n_vocab: int) -> None:
        self.sampler = llama_cpp.llama_sampler_init_grammar(vocab, _gbnf(shape.schema_text), b"root")
        if not self.sampler:
            raise BackendError(f"llama.cpp cannot make a grammar of the {shape.name} shape")
        self.data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.data["id"] = np.arange(n_vocab, dtype=np.int32)
        pointer = self.data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        self.array = llama_cpp.llama_token_data_array(pointer, n_vocab, -1, False)

    def allowed(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token outside the grammar at -inf."""
        self.data["logit"] = logits
        self.array.size, self.array.selected, self.array.sorted = len(logits), -1, False
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(self.array))
        return self.data["logit"].copy()

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        if self.sampler:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None


@functools.cache
def _gbnf(schema_text: str) -> bytes:
    """A JSON schema as llama.cpp's GBNF grammar, converted once per shape."""
    return llama_grammar.json_schema_to_gbnf(schema_text).encode("utf-8")


#: `llama_token_data` as numpy lays it out: a token's id, logit and probability.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def sample(
    logits: np.ndarray, prompt: Sequence[int], answer: Sequence[int], params: GenerationParams, rng: np.random.Generator
) -> int:
    """The next token: the likeliest under greedy decoding, else a draw from `rng` over `candidates`."""
    if params.temperature == 0:
        return int(penalized(logits, prompt, answer, params).argmax())
    ids, probs = candidates(logits, prompt, answer, params)
    return int(rng.choice(ids, p=probs))


def penalized(logits: np.ndarray, prompt: Sequence[int], answer: Sequence[int], params: GenerationParams) -> np.ndarray:
    """The logits after the repetition penalty (over the prompt and the answer, as transformers and vLLM) and the
    frequency and presence penalties (over the answer, as OpenAI)."""
    scores = logits.astype(np.float64)
    if params.repetition_penalty != 1.0:
        seen = np.unique(np.fromiter((*prompt, *answer), dtype=np.int64))
        values = scores[seen]
        scores[seen] = np.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    if answer and (params.frequency_penalty or params.presence_penalty):
        ids, counts = np.unique(np.asarray(answer, dtype=np.int64), return_counts=True)
        scores[ids] -= params.frequency_penalty * counts + params.presence_penalty
    return scores


def candidates(
    logits: np.ndarray, prompt: Sequence[int], answer: Sequence[int], params: GenerationParams
) -> tuple[np.ndarray, np.ndarray]:
    """The tokens a draw may pick and their probabilities, in transformers' order of steps: penalties, temperature,
    top-k, top-p (the likeliest tokens whose mass reaches it), min-p (relative to the likeliest token)."""
    scores = penalized(logits, prompt, answer, params) / params.temperature
    if params.top_k and params.top_k < len(scores):
        scores[scores < np.partition(scores, -params.top_k)[-params.top_k]] = -np.inf
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    ids = np.argpartition(probs, -TOP_CANDIDATES)[-TOP_CANDIDATES:] if len(probs) > TOP_CANDIDATES else None
    if ids is None or probs[ids].sum() < params.top_p:
        ids = np.arange(len(probs))
    ids = ids[np.argsort(-probs[ids], kind="stable")]
    kept = probs[ids]
    if params.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(kept), params.top_p)) + 1
        ids, kept = ids[:keep], kept[:keep]
    if params.min_p:
        above = kept >= params.min_p * kept[0]
        ids, kept = ids[above], kept[above]
    return ids, kept / kept.sum()


def fewer_layers(path: Path, spec: ModelSpec, out: Path) -> Path:
    """A copy of a GGUF file keeping `spec.layers` blocks: the ones from 2/5 of the depth on are removed, as
    transformers' weaker copies remove them (`local._drop_middle_layers`), and the rest renumbered."""
    reader = gguf.GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())
    total = int(reader.fields[f"{arch}.block_count"].contents())
    removed = set(spec.removed_layers(total))
    renumber = {old: new for new, old in enumerate(i for i in range(total) if i not in removed)}
    writer = gguf.GGUFWriter(out, arch, endianess=reader.endianess)
    for item in reader.fields.values():
        if item.name == "general.architecture" or item.name.startswith("GGUF."):
            continue
        value = spec.layers if item.name == f"{arch}.block_count" else item.contents()
        kind = item.types[0]
        sub = item.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(item.name, value, kind, sub_type=sub)
    kept = []
    for tensor in reader.tensors:
        name = tensor.name
        if name.startswith("blk."):
            index, rest = name[4:].split(".", 1)
            if int(index) in removed:
                continue
            name = f"blk.{renumber[int(index)]}.{rest}"
        kept.append(tensor)
        writer.add_tensor_info(name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in kept:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return out


def _answer_seed(seed: int, prompt: Sequence[int], sample: int) -> int:
    """An answer's own sampling seed: the run's seed, its prompt and its draw, so a rerun draws the same."""
    digest = hashlib.sha256(f"{seed}\0{sample}\0{','.join(map(str, prompt))}".encode()).digest()
    return int.from_bytes(digest[:8], "big")
