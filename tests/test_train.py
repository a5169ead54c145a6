"""DPO on popalign data built by the embedded model: `train/dpo.py` on a mixture, and TRL's own `trl dpo`."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers import POPALIGN, run_offline, write_folder

DPO_SCRIPT = Path(__file__).parents[1] / "train" / "dpo.py"
TRL = Path(sys.executable).with_name("trl")
CPU_FLAGS = ["--use_cpu", "--bf16", "false", "--report_to", "none", "--logging_steps", "1"]


def rows_per_config(folder: Path) -> dict[str, int]:
    configs = json.loads((folder / "popalign_build.json").read_text())["configs"]
    return {name: config["rows"] for name, config in configs.items()}


def trained(out: Path, initial: Path) -> dict:
    """Check a finished run: finite losses, a saved model that reloads and differs from the initial weights.
    Returns the last checkpoint's trainer state."""
    (checkpoint,) = out.glob("checkpoint-*")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses), state["log_history"]
    model = AutoModelForCausalLM.from_pretrained(out)
    before = load_file(initial / "model.safetensors")
    after = model.state_dict()
    assert all(torch.isfinite(tensor).all() for tensor in after.values())
    assert any(not torch.equal(before[name], after[name]) for name in before), "training changed no weight"
    return state


@pytest.mark.slow
def test_dpo_script_trains_on_a_two_config_mixture_from_yaml(embedded_build, tiny_model_dir, tmp_path) -> None:
    data, _ = embedded_build
    available = rows_per_config(data)
    recipe = {
        "datasets": [
            {"path": str(data), "name": "prefix", "fraction": 0.75},
            {"path": str(data), "name": "demon", "fraction": 0.25},
        ],
        "model_name_or_path": str(tiny_model_dir),
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 1,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = run_offline(
        sys.executable, DPO_SCRIPT, "--config", tmp_path / "recipe.yaml", *CPU_FLAGS,
        HF_DATASETS_CACHE=str(tmp_path / "hf-cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    total = min(available["prefix"] / 0.75, available["demon"] / 0.25)
    prefix, demon = round(0.75 * total), round(0.25 * total)
    assert prefix and demon
    assert f"mixture {data}:prefix: {prefix} of {available['prefix']} rows" in result.stdout
    assert f"mixture {data}:demon: {demon} of {available['demon']} rows" in result.stdout
    state = trained(tmp_path / "out", tiny_model_dir)
    # one epoch at batch size 1 is one step per mixed row: the trainer saw exactly the requested rows
    assert state["global_step"] == prefix + demon
    args = torch.load(tmp_path / "out" / "training_args.bin", weights_only=False)
    assert (args.beta, args.learning_rate, args.max_length, args.num_train_epochs) == (0.01, 5e-7, 2048, 1.0)


@pytest.mark.slow
def test_trl_cli_trains_on_one_config_unchanged(embedded_build, tiny_model_dir, tmp_path) -> None:
    data, _ = embedded_build
    result = run_offline(
        TRL, "dpo", "--dataset_name", data, "--dataset_config", "prefix", "--model_name_or_path", tiny_model_dir,
        "--output_dir", tmp_path / "out", "--max_steps", 2, "--per_device_train_batch_size", 2, *CPU_FLAGS,
        HF_DATASETS_CACHE=str(tmp_path / "hf-cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert trained(tmp_path / "out", tiny_model_dir)["global_step"] == 2


@pytest.mark.slow
def test_dpo_script_from_flags_with_lora(embedded_build, tiny_model_dir, tmp_path) -> None:
    from peft import PeftModel

    data, _ = embedded_build
    result = run_offline(
        sys.executable, DPO_SCRIPT, "--dataset_name", data, "--dataset_config", "nparam",
        "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "out", "--max_steps", 2,
        "--use_peft", "--lora_r", 4, "--lora_alpha", 8, "--lora_target_modules", "q_proj", "v_proj", *CPU_FLAGS,
        HF_DATASETS_CACHE=str(tmp_path / "hf-cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"mixture {data}:nparam: {rows_per_config(data)['nparam']} of" in result.stdout
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out")
    lora = {name: tensor for name, tensor in adapter.state_dict().items() if "lora_B" in name}
    assert lora and any(tensor.abs().sum() > 0 for tensor in lora.values()), "LoRA B starts at zero and must move"


@pytest.mark.slow
def test_dpo_script_refuses_a_mixture_naming_a_missing_config(tmp_path: Path) -> None:
    data = write_folder(tmp_path / "data", {"prefix": 3})
    result = run_offline(
        sys.executable, DPO_SCRIPT, "--dataset_name", data, "--dataset_config", "refine",
        "--model_name_or_path", tmp_path / "never-loaded", "--output_dir", tmp_path / "out", *CPU_FLAGS,
        HF_DATASETS_CACHE=str(tmp_path / "hf-cache"),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"dpo.py: error: datasets[0] ({data}:refine): no config 'refine'; the configs are prefix "
        "(skip it with skip_missing: true)"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dpo_script_data_parallel_over_two_processes(embedded_build, tiny_model_dir, tmp_path) -> None:
    """Data-parallel the way TRL runs on several GPUs, here two CPU processes over gloo with `torchrun` (on CPU,
    `accelerate launch` needs MPI for more than one process)."""
    data, _ = embedded_build
    torchrun = Path(sys.executable).with_name("torchrun")
    result = run_offline(
        torchrun, "--nproc_per_node", 2, DPO_SCRIPT, "--dataset_name", data, "--dataset_config", "prefix",
        "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "out", "--per_device_train_batch_size", 1,
        *CPU_FLAGS,
        HF_DATASETS_CACHE=str(tmp_path / "hf-cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("mixture total:") == 1, "the main process alone reports the mixture"
    args = torch.load(tmp_path / "out" / "training_args.bin", weights_only=False)
    assert args.world_size == 2
    # one epoch, two processes taking one row each per step: half as many steps as rows
    assert trained(tmp_path / "out", tiny_model_dir)["global_step"] == math.ceil(rows_per_config(data)["prefix"] / 2)


def recipe_commands() -> list[tuple[Path, str]]:
    """Each recipe with each command its header names (`# Run: COMMAND`)."""
    return [
        (recipe, line.removeprefix("# Run: ").split("  (")[0])
        for recipe in sorted((DPO_SCRIPT.parent / "recipes").glob("*.yaml"))
        for line in recipe.read_text().splitlines()
        if line.startswith("# Run: ")
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "command"), recipe_commands(), ids=lambda value: getattr(value, "stem", value))
def test_every_recipe_trains_on_the_readme_build_with_the_command_it_names(
    embedded_build, tiny_model_dir, tmp_path, recipe: Path, command: str
) -> None:
    """The recipes read `popalign-data`, the folder the README's first command writes: each trains one step, run
    as its header says (`trl dpo --config ...` where every key is TRL's, `python train/dpo.py --config ...`)."""
    data, _ = embedded_build
    (tmp_path / "train").symlink_to(DPO_SCRIPT.parent)  # the command's paths, from the repository's root
    first = [line.removeprefix("# First: ").split("  (")[0] for line in recipe.read_text().splitlines()
             if line.startswith("# First: ")]  # fmt: skip
    if first:  # a step the recipe needs before it (`popalign score`): on a copy, scored by the tiny model
        shutil.copytree(data, tmp_path / "popalign-data")
        for step in first:
            program, *arguments = step.split()
            assert program == "popalign", step
            done = run_offline(POPALIGN, *arguments, "--score-model", tiny_model_dir, "--no-cache", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
    else:  # every folder the recipe reads (`popalign-data`, or the one its own build command writes)
        for path in {entry["path"] for entry in yaml.safe_load(recipe.read_text())["datasets"]}:
            (tmp_path / path).symlink_to(data)
    program, *arguments = command.split()
    executable = {"python": sys.executable, "trl": str(Path(sys.executable).with_name("trl"))}[program]
    result = run_offline(
        executable, *arguments, "--model_name_or_path", tiny_model_dir,
        "--output_dir", tmp_path / "out", "--max_steps", 1, "--per_device_train_batch_size", 1,
        "--gradient_accumulation_steps", 1, *CPU_FLAGS, cwd=tmp_path, HF_DATASETS_CACHE=str(tmp_path / "hf-cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = {entry["name"]: entry["path"] for entry in yaml.safe_load(recipe.read_text())["datasets"]}
    names = list(paths)
    if program == "python":  # the script says what it mixed
        for name in names:
            assert f"mixture {paths[name]}:{name}: " in result.stdout
    state = json.loads((tmp_path / "out" / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    if "dlma_margin_weight" in yaml.safe_load(recipe.read_text()):  # trained with DLMA's loss: its margin is logged
        assert any("dlma/margin" in entry for entry in state["log_history"]), state["log_history"]
