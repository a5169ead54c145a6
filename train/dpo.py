"""DPO on any mixture of popalign configs: TRL's `trl/scripts/dpo.py` with popalign's mixture loader.

Defaults follow the PopAlign paper: beta 0.01, one epoch, max length 2048, learning rate 5e-7. Every option
of `DPOConfig` and `ModelConfig` works as a flag and in the YAML `--config`.

# All six strategies mixed equally, at a pinned version
```bash
python train/dpo.py --config train/recipes/popalign-all.yaml
```

# One config, from flags
```bash
python train/dpo.py \
    --dataset_name ORG/popalign --dataset_config elicitive --dataset_revision v1.0.0 \
    --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct \
    --output_dir SmolLM2-135M-popalign-elicitive
```

# DLMA's loss on a scored build (`popalign score popalign-data` first): DPO with each pair's score as a margin
```bash
python train/dpo.py --config train/recipes/dlma.yaml   # --dlma_margin_weight 0.2 --dlma_margin_range 40
```

# LoRA on several GPUs
```bash
accelerate launch train/dpo.py --config train/recipes/popalign-all.yaml \
    --use_peft --lora_r 16 --lora_alpha 32 --learning_rate 5e-6
```
"""

from __future__ import annotations

import sys

from trl import DPOConfig, DPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from popalign.dlma_loss import DLMAConfig, DLMATrainer, check_dlma
from popalign.errors import PopAlignError
from popalign.mixture import MixtureConfig, MixtureEntry, load_mixture

PAPER_DEFAULTS = {"beta": 0.01, "num_train_epochs": 1.0, "max_length": 2048, "learning_rate": 5e-7}


def main(
    script_args: ScriptArguments,
    training_args: DPOConfig,
    model_args: ModelConfig,
    mixture_args: MixtureConfig,
    dlma_args: DLMAConfig,
) -> None:
    if not mixture_args.datasets and script_args.dataset_name:
        mixture_args.datasets = [MixtureEntry(path=script_args.dataset_name, name=script_args.dataset_config)]
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    try:
        mixture = load_mixture(mixture_args, seed=seed)
        if dlma_args.enabled:
            check_dlma(dlma_args, training_args, mixture.splits["train"]["score"])
    except PopAlignError as error:
        sys.exit(f"dpo.py: error: {error}")

    if mixture_args.curriculum:
        training_args.train_sampling_strategy = "sequential"  # keep the easy-to-hard order
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    dlma = {"margin_weight": dlma_args.dlma_margin_weight, "margin_range": dlma_args.dlma_margin_range}
    trainer = (DLMATrainer if dlma_args.enabled else DPOTrainer)(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=mixture.splits["train"],
        eval_dataset=mixture.splits.get("test") if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        **(dlma if dlma_args.enabled else {}),
    )
    for line in mixture.describe():
        trainer.accelerator.print(line)

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"model saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.wait_for_everyone()  # no process tears the group down while another still uses it
    trainer.end()


def make_parser() -> TrlParser:
    parser = TrlParser((ScriptArguments, DPOConfig, ModelConfig, MixtureConfig, DLMAConfig))
    parser.set_defaults(**PAPER_DEFAULTS)
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
