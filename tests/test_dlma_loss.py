"""DLMA's loss (`popalign.dlma_loss`): a batch's loss equals DLMA's formula computed directly from the policy's
and the reference's log-probs, and `train/dpo.py` refuses a DLMA run it cannot honour in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, RewardConfig, RewardTrainer

from helpers import load, run_offline, write_folder
from popalign.dlma_loss import DLMAConfig, DLMATrainer, check_dlma
from popalign.errors import PopAlignError

DPO_SCRIPT = Path(__file__).parents[1] / "train" / "dpo.py"
CPU = ["--use_cpu", "--bf16", "false", "--report_to", "none"]
BETA, WEIGHT, RANGE = 0.1, 0.2, 4.0  # a small range, so that two of the scores below are clamped
PAIRS = [  # (instruction, chosen, rejected, score)
    ("Name a colour.", "Blue.", "I will not.", 7.5),
    ("Say hello.", "Hello!", "Goodbye, I guess.", -6.0),
    ("Count to three.", "One, two, three.", "Three.", 1.25),
]


def scored_rows() -> Dataset:
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
         "rejected": [{"role": "assistant", "content": r}], "score": s}
        for q, c, r, s in PAIRS
    ])  # fmt: skip


def completion_logp(model, tokenizer, prompt: list[dict], answer: list[dict]) -> torch.Tensor:
    """log p(answer | prompt): the tokens the chat template adds after the prompt's generation prompt."""
    context = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    whole = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)[start - 1 :]
    return logprobs.gather(1, torch.tensor(ids[start:])[:, None]).sum()


@pytest.mark.slow
def test_the_loss_of_a_batch_is_dlmas_formula(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():  # a reference apart from the policy, so that each log-ratio counts
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    args = DPOConfig(output_dir=str(tmp_path / "out"), beta=BETA, per_device_train_batch_size=len(PAIRS),
                     use_cpu=True, report_to="none", bf16=False)  # fmt: skip
    trainer = DLMATrainer(model=policy, ref_model=reference, args=args, train_dataset=scored_rows(),
                          processing_class=tokenizer, margin_weight=WEIGHT, margin_range=RANGE)  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    order = [PAIRS.index(next(p for p in PAIRS if s == p[3])) for s in batch["score"].tolist()]
    trainer.model.eval()  # no dropout: the same forward as below
    loss = trainer.compute_loss(trainer.model, batch)

    deltas, margins = [], []
    for index in order:
        instruction, chosen, rejected, score = PAIRS[index]
        prompt = [{"role": "user", "content": instruction}]
        sides = [[{"role": "assistant", "content": text}] for text in (chosen, rejected)]
        pi = [completion_logp(policy, tokenizer, prompt, side) for side in sides]
        ref = [completion_logp(reference, tokenizer, prompt, side) for side in sides]
        deltas.append((pi[0] - ref[0]) - (pi[1] - ref[1]))
        margins.append(WEIGHT * min(max(score, -RANGE), RANGE))
    delta, margin = torch.stack(deltas), torch.tensor(margins)
    assert loss.item() == pytest.approx(-F.logsigmoid(BETA * (delta - margin)).mean().item(), abs=1e-6)
    assert abs(loss.item() - -F.logsigmoid(BETA * delta).mean().item()) > 1e-3  # the scores do move the loss
    assert trainer._metrics["eval"]["dlma/margin"] == [pytest.approx(margin.mean().item())]


@pytest.mark.parametrize(
    ("options", "loss", "scores", "message"),
    [
        ({}, "sigmoid", [1.0, None, None], "--dlma_margin_weight trains on DLMA scores, and 2 of 3 rows have none: "
         "run `popalign score DIR` on the build first"),
        ({}, "ipo", [1.0], "--dlma_margin_weight shifts DPO's sigmoid loss; --loss_type is ['ipo']"),
        ({"dlma_margin_range": 0.0}, "sigmoid", [1.0], "--dlma_margin_range: expected a number > 0, got 0"),
    ],
)  # fmt: skip
def test_a_dlma_run_that_cannot_be_one_is_refused(options, loss, scores, message, tmp_path: Path) -> None:
    training = DPOConfig(output_dir=str(tmp_path), loss_type=loss, use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(PopAlignError) as refused:
        check_dlma(DLMAConfig(dlma_margin_weight=0.2, **options), training, scores)
    assert str(refused.value) == message


@pytest.mark.slow
def test_dpo_script_refuses_dlma_on_an_unscored_build_in_one_line(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "data", {"prefix": 24}, scored=False)
    recipe = {"datasets": [{"path": str(folder), "name": "prefix"}], "output_dir": str(tmp_path / "out"),
              "model_name_or_path": "unused", "dlma_margin_weight": 0.2}  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = run_offline(sys.executable, DPO_SCRIPT, "--config", tmp_path / "recipe.yaml", *CPU,
                         HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "dpo.py: error: --dlma_margin_weight trains on DLMA scores, and 24 of 24 rows have none: "
        "run `popalign score DIR` on the build first"
    )


@pytest.mark.slow
def test_trls_reward_trainer_reads_the_margin_column(tiny_reward_model_dir: Path, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "data", {"prefix": 4})
    rows = load(folder, "prefix").select_columns(["prompt", "chosen", "rejected", "margin"])
    args = RewardConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, use_cpu=True, bf16=False,
                        report_to="none")  # fmt: skip
    trainer = RewardTrainer(model=str(tiny_reward_model_dir), args=args, train_dataset=rows)
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch["margin"].tolist()) == [-2.0, -1.0, 0.0, 1.0]  # the rows' scores, i - 2
