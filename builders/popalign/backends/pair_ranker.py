"""A pairwise ranker judge: a PairRM-architecture model (the PopAlign paper's second judge, `llm-blender/PairRM-hf`),
a DeBERTa-v2 encoder that reads an instruction and two answers in one sequence,

    <|source|> instruction  <|candidate1|> answer A  <|candidate2|> answer B

(each segment tokenized with the tokenizer's own special tokens, cut to its length budget), and scores each answer
by a small head over the encodings of the source's and the answer's prefix tokens: Linear(2h → h), tanh,
Linear(h → tasks). Its logit is the first answer's head score minus the second's, averaged over tasks; positive
means A is the better one. The layout of the weights is the one PairRM's checkpoints use (`pretrained_model`,
`head_layer`), so they load as they are; this module is popalign's own, with no dependency on `llm-blender`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoConfig, DebertaV2Config, PreTrainedTokenizerBase
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

from popalign.backends.local import LOAD_ERRORS, model_location
from popalign.backends.reward_model import load_judge_model
from popalign.errors import BackendError
from popalign.roles import ModelSpec

#: How a checkpoint names the architecture in its `config.json`.
ARCHITECTURE = "DebertaV2PairRM"
#: The names a checkpoint of this architecture may carry: PairRM's own, and this module's class once saved by it.
ARCHITECTURES = (ARCHITECTURE, "PairRankerModel")
#: The config's id of each prefix token, and the token.
PREFIXES = {"source_prefix_id": "<|source|>", "cand1_prefix_id": "<|candidate1|>", "cand2_prefix_id": "<|candidate2|>"}
#: PairRM's token budgets: the instruction, then the rest of 2,048 tokens shared by the two answers.
SOURCE_TOKENS, CANDIDATE_TOKENS = 1224, 412
Triple = tuple[str, str, str]


class PairRankerModel(DebertaV2PreTrainedModel):
    """The PairRM network: a DeBERTa-v2 encoder and one head scoring (source, candidate) encodings."""

    config_class = DebertaV2Config

    def __init__(self, config: DebertaV2Config) -> None:
        super().__init__(config)
        self.pretrained_model = DebertaV2Model(config)
        width = config.hidden_size
        self.head_layer = nn.Sequential(
            nn.Dropout(config.drop_out),
            nn.Linear(2 * width, width),
            nn.Tanh(),
            nn.Dropout(config.drop_out),
            nn.Linear(width, config.n_tasks),
        )
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The logit of each sequence: head(source, candidate 1) − head(source, candidate 2), mean over tasks."""
        states = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        source, first, second = (self._at(states, input_ids, getattr(self.config, name)) for name in PREFIXES)
        left = self.head_layer(torch.cat([source, first], dim=-1))
        right = self.head_layer(torch.cat([source, second], dim=-1))
        return (left - right).mean(dim=-1)

    @staticmethod
    def _at(states: torch.Tensor, input_ids: torch.Tensor, token: int) -> torch.Tensor:
        """Each sequence's encoding at its one `token`."""
        rows, columns = torch.where(input_ids == token)
        if rows.tolist() != list(range(input_ids.shape[0])):
            raise ValueError(f"every sequence must hold prefix token {token} exactly once")
        return states[rows, columns]


def is_pair_ranker(spec: ModelSpec) -> bool:
    """Whether a model's `config.json` names PairRM's architecture (False where it cannot be read: the reward-model
    loader then says why)."""
    try:
        config = AutoConfig.from_pretrained(**model_location(spec.location))
    except LOAD_ERRORS:
        return False
    return bool(set(ARCHITECTURES) & set(getattr(config, "architectures", None) or []))


def encode(tokenizer: PreTrainedTokenizerBase, triple: Triple) -> list[int]:
    """One (instruction, answer A, answer B) as PairRM reads it: three prefixed segments within their budgets."""
    source, first, second = triple
    prefix, first_prefix, second_prefix = PREFIXES.values()
    ids = tokenizer(prefix + source, max_length=SOURCE_TOKENS, truncation=True)["input_ids"]
    budget = (SOURCE_TOKENS + 2 * CANDIDATE_TOKENS - len(ids)) // 2
    for prefix, text in ((first_prefix, first), (second_prefix, second)):
        ids += tokenizer(prefix + text, max_length=budget, truncation=True)["input_ids"]
    return ids


class PairRanker:
    """Loads a PairRM-architecture model once and gives the logit of (instruction, A, B) triples, in right-padded
    batches formed by length.

    >>> ranker = PairRanker(ModelSpec("llm-blender/PairRM-hf"), batch_size=16)  # doctest: +SKIP
    >>> ranker.logits([("Say hi.", "Hi!", "No.")])  # doctest: +SKIP
    [4.1]
    """

    kind = "pairwise"

    def __init__(self, spec: ModelSpec, *, batch_size: int, device: str | None = None) -> None:
        self.spec, self.batch_size = spec, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer, self.model, untrained = load_judge_model(spec, PairRankerModel, "pairwise judge")
        unread = [f"its tokenizer's {token} is not its config's {name}" for name, token in PREFIXES.items()
                  if self.tokenizer.convert_tokens_to_ids(token) != getattr(self.model.config, name, None)]  # fmt: skip
        if untrained or unread:
            what = f"{untrained[0]} is newly initialised" if untrained else unread[0]
            raise BackendError(f"pairwise judge {spec.source!r}: not a trained PairRM checkpoint ({what})")
        self.tokenizer.padding_side = "right"
        self.model.to(self.device).eval()

    @property
    def name(self) -> str:
        """The model as outputs name it."""
        return self.spec.published()

    def logits(self, triples: Sequence[Triple]) -> list[float]:
        """The logit of each (instruction, answer A, answer B): positive when A is the better answer."""
        encoded = [encode(self.tokenizer, triple) for triple in triples]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        found: dict[int, float] = {}
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            with torch.inference_mode():
                values = self.model(padded["input_ids"].to(self.device), padded["attention_mask"].to(self.device))
            found.update(zip(batch, values.float().cpu().tolist(), strict=True))
        return [found[i] for i in range(len(triples))]
