"""A reward-model judge: a `transformers` sequence-classification model (the Skywork-Reward, ArmoRM kind)
scores each side of a pair as TRL's reward modelling does, by the first logit over the chat template of the
prompt followed by the answer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from popalign.backends.local import LOAD_ERRORS, model_location
from popalign.errors import BackendError, first_line
from popalign.roles import ModelSpec

Chat = list[dict[str, str]]


class RewardModel:
    """Loads a sequence-classification model once and scores chats in right-padded batches formed by length.

    >>> RewardModel(ModelSpec("Skywork/Skywork-Reward-V2-Qwen3-0.6B"), batch_size=16).scores([chat])  # doctest: +SKIP
    [3.25]
    """

    kind = "reward-model"

    def __init__(self, spec: ModelSpec, *, batch_size: int, device: str | None = None) -> None:
        self.spec, self.batch_size = spec, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer, self.model, untrained = load_judge_model(
            spec, AutoModelForSequenceClassification, "reward model", labels=1
        )
        if untrained:
            raise BackendError(
                f"reward model {spec.source!r}: its weights have no trained score head ({untrained[0]} is newly "
                "initialised), so its verdicts would be random; give a sequence-classification reward model"
            )
        if self.tokenizer.chat_template is None:
            raise BackendError(f"reward model {spec.source!r}: its tokenizer has no chat template")
        self.tokenizer.padding_side = "right"  # positions stay those of an unpadded text
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # the model finds each text's last token by it
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()

    @property
    def name(self) -> str:
        """The model as outputs name it."""
        return self.spec.published()

    def scores(self, chats: Sequence[Chat]) -> list[float]:
        """The reward of each chat (its last turn the answer), in order."""
        found: dict[int, float] = {}
        for indices, values in self.iter_scores(chats):
            found.update(zip(indices, values, strict=True))
        return [found[i] for i in range(len(chats))]

    def iter_scores(self, chats: Sequence[Chat]) -> Iterator[tuple[list[int], list[float]]]:
        """Yield `(indices into chats, their rewards)` as each batch finishes."""
        texts = [self.tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
        encoded = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            yield batch, self._score_batch([encoded[i] for i in batch])

    def _score_batch(self, sequences: list[list[int]]) -> list[float]:
        padded: Any = self.tokenizer.pad({"input_ids": sequences}, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**padded).logits
        return [float(value) for value in logits[:, 0].float().cpu()]


def load_judge_model(
    spec: ModelSpec, model_class: Any, what: str, *, labels: int | None = None
) -> tuple[Any, Any, list[str]]:
    """A model judge's tokenizer and model (`model_class.from_pretrained`), and the weights its checkpoint lacks
    (transformers gave them new random weights), sorted; `what` names the judge in the one-line errors: a spec
    with `layers=N`, a head of other than `labels` outputs (read from its config, before any weight loads), or a
    model that cannot load."""
    if spec.layers is not None:
        raise BackendError(f"{what} {spec}: layers=N is for generating models, not {what}s")
    try:
        tokenizer = AutoTokenizer.from_pretrained(**model_location(spec.location))
        found = AutoConfig.from_pretrained(**model_location(spec.location)).num_labels
        if labels is not None and found != labels:
            raise BackendError(
                f"{what} {spec.source!r}: its head has {found} labels; a {what} gives each answer one score "
                "(num_labels 1), and a classifier's labels rank no answers"
            )
        model, loading = model_class.from_pretrained(**model_location(spec.location), output_loading_info=True)
    except LOAD_ERRORS as err:
        raise BackendError(f"{what} {spec.source!r}: cannot load ({first_line(err, type(err).__name__)})") from None
    return tokenizer, model, sorted(loading.get("missing_keys", ()))
