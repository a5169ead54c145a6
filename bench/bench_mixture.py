"""Benchmark: loading and mixing popalign configs for training, next to one DPO step of the tiny model.

100k synthetic rows spread over the six configs are written as a Hub-layout folder; `load_mixture` mixes all
six equally (cold: Parquet to Arrow on first load; warm: cached; filtered: with a length filter on). The
baseline, measured in the same run, is the median time of one DPO training step of the tests' tiny model.

    python bench/bench_mixture.py [--rows 100000] [--batch-size 8] [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from datasets import Dataset

from popalign.contrasts import PAPER
from popalign.dataset.schema import FEATURES
from popalign.mixture import MixtureConfig, load_mixture

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from helpers import save_tiny_model


def write_configs(folder: Path, rows: int) -> None:
    """`rows` synthetic pairs split evenly over the six configs, in the popalign schema."""
    per_config = rows // len(PAPER)
    indices = range(per_config)
    for name in PAPER:
        columns = {
            "prompt": [[{"role": "user", "content": f"Instruction {i}: explain topic {i % 97}."}] for i in indices],
            "chosen": [[{"role": "assistant", "content": "A careful answer. " * (1 + i % 20)}] for i in indices],
            "rejected": [[{"role": "assistant", "content": "A poor answer. " * (1 + i % 7)}] for i in indices],
            "strategy": [name] * per_config,
            "prompt_id": [f"{name}-{i}" for i in indices],
            "chosen_model": ["large"] * per_config,
            "rejected_model": ["small"] * per_config,
            "chosen_reasoning": [None] * per_config,
            "rejected_reasoning": [None] * per_config,
            "score": [float(i % 11 - 5) for i in indices],
        }  # fmt: skip
        target = folder / "data" / name / "train-00000-of-00001.parquet"
        target.parent.mkdir(parents=True)
        Dataset.from_dict(columns, features=FEATURES).to_parquet(str(target))
    configs = [{"config_name": n, "data_files": [{"split": "train", "path": f"data/{n}/*.parquet"}]} for n in PAPER]
    (folder / "README.md").write_text("---\n" + yaml.safe_dump({"configs": configs}) + "---\n")


def time_mixture(config: MixtureConfig) -> tuple[float, int]:
    started = time.perf_counter()
    rows = len(load_mixture(config, seed=0).splits["train"])
    return time.perf_counter() - started, rows


def dpo_step_seconds(model: Path, data: Path, out: Path, *, batch_size: int, steps: int) -> float:
    """Median seconds of one DPO step (the first step, which warms up, left out)."""
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    timer = StepTimer()
    train = load_mixture(MixtureConfig(datasets=[{"path": str(data), "name": "prefix", "rows": batch_size * steps}]))
    args = DPOConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size, use_cpu=True, bf16=False,
        report_to="none", save_strategy="no", logging_strategy="no", beta=0.01, learning_rate=5e-7,
    )  # fmt: skip
    DPOTrainer(model=str(model), args=args, train_dataset=train.splits["train"], callbacks=[timer]).train()
    return statistics.median(timer.seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="popalign-bench-") as scratch:
        root = Path(scratch)
        os.environ["HF_DATASETS_CACHE"] = str(root / "hf-cache")
        write_configs(root / "data", options.rows)
        equal = [{"path": str(root / "data"), "name": name, "fraction": 1 / len(PAPER)} for name in PAPER]
        cold, rows = time_mixture(MixtureConfig(datasets=equal))
        warm, _ = time_mixture(MixtureConfig(datasets=equal))
        filtered, kept = time_mixture(MixtureConfig(datasets=equal, filter_max_chars=300))
        step = dpo_step_seconds(
            save_tiny_model(root / "tiny"), root / "data", root / "out", batch_size=options.batch_size,
            steps=options.steps,
        )  # fmt: skip
    print(f"mixture of six configs, {options.rows} rows: {rows} rows mixed")
    print(f"  load + mix, cold (Parquet -> Arrow):  {cold:7.2f} s")
    print(f"  load + mix, warm (Arrow cache):       {warm:7.2f} s")
    print(f"  load + mix + length filter:           {filtered:7.2f} s  ({kept} rows kept)")
    print(f"one DPO step, tiny model, batch {options.batch_size}:   {step:7.2f} s (median of {options.steps - 1})")
    print(f"warm mixing costs {warm / step:.2f} training steps; cold {cold / step:.2f}; filtered {filtered / step:.2f}")
    steps_per_epoch = rows // options.batch_size
    print(f"one epoch of this mixture is {steps_per_epoch} steps: cold mixing is {cold / (step * steps_per_epoch):.4%}")


if __name__ == "__main__":
    main()
