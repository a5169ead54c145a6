"""DLMA's training objective (arXiv 2402.11907, step 3): DPO with each pair's self-reward score as a margin,

    loss = −log σ(β · (Δ − w · clamp(s, −m, m))),
    Δ = [log π(y+|x) − log π_ref(y+|x)] − [log π(y−|x) − log π_ref(y−|x)],

where s is the pair's DLMA `score` (`popalign score`), w the margin weight and m its range (DLMA's runs: w = 0.2,
m = 40, β = 0.1). TRL's `DPOTrainer` takes no per-pair margin, so `DLMATrainer` carries the `score` column through
TRL's preprocessing and collator and moves the reference log-prob of each chosen answer by w · clamp(s, −m, m)
before TRL's sigmoid loss, which is exactly the formula above. It trains with precomputed reference log-probs
(`precompute_ref_log_probs`, set for it), so the shift lands on numbers TRL reads from the batch; TRL's
`rewards/*` metrics are then measured against the shifted reference, and `dlma/margin` logs the mean shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from trl import DPOConfig, DPOTrainer

from popalign.errors import PopAlignError

SCORE = "score"


@dataclass
class DLMAConfig:
    """The DLMA options of `train/dpo.py` (off unless `dlma_margin_weight` is given)."""

    dlma_margin_weight: float | None = field(
        default=None,
        metadata={"help": "train with DLMA's loss: DPO minus this weight times each pair's clamped score (DLMA: 0.2)"},
    )
    dlma_margin_range: float = field(
        default=40.0, metadata={"help": "DLMA's m: scores are clamped to [-m, m] before the weight (DLMA: 40)"}
    )

    @property
    def enabled(self) -> bool:
        """Whether the run trains with DLMA's loss."""
        return self.dlma_margin_weight is not None


def check_dlma(config: DLMAConfig, training: DPOConfig, scores: list[float | None]) -> None:
    """Refuse, in one line, a DLMA run that cannot be one: an unscored build, another loss, a bad range.

    Raises:
        PopAlignError: naming the option or the rows at fault.
    """
    if config.dlma_margin_range <= 0:
        raise PopAlignError(f"--dlma_margin_range: expected a number > 0, got {config.dlma_margin_range:g}")
    if list(training.loss_type) != ["sigmoid"]:
        raise PopAlignError(f"--dlma_margin_weight shifts DPO's sigmoid loss; --loss_type is {training.loss_type}")
    unscored = sum(score is None for score in scores)
    if unscored:
        raise PopAlignError(
            f"--dlma_margin_weight trains on DLMA scores, and {unscored} of {len(scores)} rows have none: "
            "run `popalign score DIR` on the build first"
        )


class _WithScores:
    """A collator that passes each example's `score` on beside what TRL's preference collator returns."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        batch[SCORE] = torch.tensor([example[SCORE] for example in examples], dtype=torch.float64)
        return batch


class DLMATrainer(DPOTrainer):
    """TRL's `DPOTrainer` with DLMA's margin (see the module's doc).

    >>> trainer = DLMATrainer(model=..., args=DPOConfig(...), train_dataset=scored, margin_weight=0.2)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, margin_weight: float, margin_range: float = 40.0, **kwargs: Any) -> None:
        training: DPOConfig = kwargs["args"]
        training.precompute_ref_log_probs = True  # the margin moves the reference log-probs TRL reads from the batch
        self.margin_weight, self.margin_range = margin_weight, margin_range
        super().__init__(*args, **kwargs)
        self.data_collator = _WithScores(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if SCORE not in self._signature_columns:
            self._signature_columns.append(SCORE)

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        scores = inputs.pop(SCORE)
        shift = self.margin_weight * scores.clamp(-self.margin_range, self.margin_range)
        reference = inputs["ref_chosen_logps"]
        inputs = {**inputs, "ref_chosen_logps": reference + shift.to(reference.device, reference.dtype)}
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["dlma/margin"].append(self.accelerator.gather(shift).mean().item())
        return super()._compute_loss(model, inputs, return_outputs)
