"""Helpers the tests share (fixtures live in conftest.py): running `popalign` as a user does, the scripted
server and its prompts, reading a build back, and the tiny config-built models."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import string
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tomllib
import yaml
from datasets import Dataset, load_dataset

from net import free_port, serve_process
from popalign.dataset.schema import features, make_row

POPALIGN = Path(sys.executable).with_name("popalign")


HERE = Path(__file__).parent


TAGS = ["ok", "cut-plan", "empty-plan", "plan-is-answer", "near-copy", "identical", "cut-answer", "refused",
        "empty-answer"]  # fmt: skip


def run_offline(*command: str | Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command as a user would on a machine with no Hub, with extra environment variables."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    return subprocess.run(list(map(str, command)), cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


@contextmanager
def latency_server(folder: Path, *flags: str, port: int | None = None, delay: float = 0.2) -> Iterator[str]:
    """`latency_server.py` (a fixed-delay server with faults and rate limits) until the block ends: its URL."""
    port = port or free_port()
    log = folder / f"answered-{port}.jsonl"
    log.touch()
    command = [sys.executable, HERE / "latency_server.py", "--port", port, "--delay", delay, "--log", log, *flags]
    with serve_process(command, folder / f"server-{port}.log", f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}"


def serve_scripted(folder: Path, model: str, *flags: str) -> Iterator[tuple[str, Path]]:
    port, named = free_port(), Path(model).name  # a served name may be a path, as llama.cpp's server's is
    log = folder / f"{named}.jsonl"
    command = [sys.executable, HERE / "scripted_server.py", "--port", port, "--model", model, "--log", log, *flags]
    with serve_process(command, folder / f"{named}.log", f"http://127.0.0.1:{port}/v1/models"):
        yield f"http://127.0.0.1:{port}", log


def prompts(folder: Path, tags: list[str]) -> Path:
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Explain tides [{tag}]."}) + "\n" for tag in tags))
    return path


def build(folder: Path, url: str, *flags: str | Path, tags: list[str] = TAGS, out: str = "d", **env: str):
    result = run_offline(
        POPALIGN, "build", "--prompts", prompts(folder, tags), "--out", folder / out, "--no-cache", "--no-progress",
        "--templates", HERE / "scripted_templates", "--model", f"default={url}", *flags, HF_HUB_OFFLINE="0", **env,
    )  # fmt: skip
    return result, folder / out


def manifest(out: Path) -> dict:
    return json.loads((out / "popalign_build.json").read_text())


def requests(log: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in log.read_text().splitlines()]


def load(folder: Path, name: str, split: str = "train"):
    """`load_dataset(folder, name)` with a cache of the test's own: `datasets` may otherwise reuse the cache of
    an earlier folder with the same name."""
    return load_dataset(str(folder), name, split=split, cache_dir=str(folder.parent / "hf-datasets-cache"))


def card_metadata(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---")[1])


def tags(count: int) -> list[str]:
    """Distinct lower-case tags (`aaa`, `aab`, ...), so every instruction is its own."""
    letters = string.ascii_lowercase
    return [letters[n // 676 % 26] + letters[n // 26 % 26] + letters[n % 26] for n in range(count)]


class InFlight:
    """Wraps strategy runs to count those started and not yet finished: `live` now, `peak` at most."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def track(self, run):  # a strategy run, wrapped
        self.live += 1
        self.peak = max(self.peak, self.live)
        try:
            return (yield from run)
        finally:
            self.live -= 1


def save_tiny_model(folder: Path, *, reward: bool = False, seed: int = 0, bos: bool = False, labels: int = 1) -> Path:
    """Save a 4-layer, 32-wide Llama into `folder`, its weights drawn with `seed`, loadable offline by path; with
    `reward`, a `labels`-label sequence classifier (one label: a reward model) instead of a causal LM; with `bos`, a
    tokenizer that
    puts its BOS token before every text and a chat template that writes it, as Llama 3's do."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from popalign.resources import embedded_model_path

    gguf = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=labels,
    )
    (LlamaForSequenceClassification if reward else LlamaForCausalLM)(config).save_pretrained(folder)
    if bos:
        from tokenizers.processors import TemplateProcessing

        first = tokenizer.bos_token
        special = [(first, tokenizer.bos_token_id)]
        tokenizer._tokenizer.post_processor = TemplateProcessing(single=f"{first} $A", special_tokens=special)
        tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_pair_ranker(folder: Path) -> Path:
    """Save a 2-layer, 32-wide PairRM-architecture model (DeBERTa-v2, relative positions as DeBERTa-v3 has them)
    into `folder`, seeded, with SmolLM2's tokenizer and PairRM's three prefix tokens added; its config names
    PairRM's architecture, as `llm-blender/PairRM-hf`'s does."""
    import torch
    from transformers import AutoTokenizer, DebertaV2Config

    from popalign.backends.pair_ranker import ARCHITECTURE, PREFIXES, PairRankerModel
    from popalign.resources import embedded_model_path

    gguf = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.add_special_tokens({"additional_special_tokens": list(PREFIXES.values())})
    torch.manual_seed(0)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in PREFIXES.items()}
    config = DebertaV2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=512, relative_attention=True, position_buckets=256, position_biased_input=False,
        pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm", pad_token_id=tokenizer.pad_token_id,
        n_tasks=1, drop_out=0.05, initializer_range=1.0, **ids,  # wide weights: content outweighs position
    )  # fmt: skip
    PairRankerModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    written = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(written | {"architectures": [ARCHITECTURE]}, indent=2))
    return folder


def write_folder(folder: Path, sizes: dict[str, int], *, scored: bool = True, judged: bool = False) -> Path:
    """A Hub-layout folder with `sizes[name]` rows per config. Row i has score (and margin) i - 2 and per-token
    score -i (so the two rank rows in opposite orders) unless not `scored`, reasoning on even rows of elicitive,
    and a chosen answer i*10 characters long. With `judged`, row i of the k-th config has judge margin
    (7 * i) % size and the verdict `rejected` when i is a multiple of k + 2, else `chosen` (so later configs are
    judged more accurate)."""
    for k, (name, size) in enumerate(sizes.items()):
        rows = []
        for i in range(size):
            reasoning = "plan" if name == "elicitive" and i % 2 == 0 else None
            row = make_row(
                strategy=name, prompt=[{"role": "user", "content": f"q{i}"}], prompt_id=f"{name}-{i}",
                chosen="c" * (10 * i + 1),
                rejected="r", chosen_model="m", rejected_model="m", chosen_reasoning=reasoning,
                rejected_reasoning=reasoning,
            )  # fmt: skip
            scores = {"score": float(i - 2), "margin": float(i - 2), "score_per_token": float(-i)} if scored else {}
            verdicts = {"judge_margin": float(7 * i % size), "judge_verdict": "rejected" if i % (k + 2) == 0 else
                        "chosen"} if judged else {}  # fmt: skip
            rows.append(row | scores | verdicts)
        target = folder / "data" / name / "train-00000-of-00001.parquet"
        target.parent.mkdir(parents=True)
        Dataset.from_list(rows, features=features()).to_parquet(str(target))
    configs = [{"config_name": n, "data_files": [{"split": "train", "path": f"data/{n}/*.parquet"}]} for n in sizes]
    (folder / "README.md").write_text("---\n" + yaml.safe_dump({"configs": configs}) + "---\n")
    return folder


def install_plugin(source: Path, target: Path) -> Path:
    """Install the plugin package in `source` (its `pyproject.toml` and package folder) into `target` with pip, as
    a wheel built here from its files (no build backend, no index): put `target` on PYTHONPATH to use it."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    name, version = project["name"].replace("-", "_"), project["version"]
    info = f"{name}-{version}.dist-info"
    points = "".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items())
        for group, entries in project["entry-points"].items()
    )
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: popalign-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": points,
    }
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if path.is_file() and relative != "pyproject.toml" and "__pycache__" not in relative:
            files[relative] = path.read_text()
    records = [f"{file},sha256={_digest(text)},{len(text.encode())}" for file, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*records, f"{info}/RECORD,,"]) + "\n"
    wheel = target.parent / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for file, text in files.items():
            archive.writestr(file, text)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", target, wheel]
    subprocess.run(list(map(str, command)), check=True, capture_output=True, text=True)
    return target


def _digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def work_of(out: Path) -> Path:
    """The executor's work folder of the one build made into `out` (named by its plan's fingerprint)."""
    (work,) = (out.parent / f".{out.name}.popalign-tasks").iterdir()
    return work


SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system"}  # fmt: skip


def read_like_llamafactory(folder: Path, name: str) -> list[dict]:
    """One dataset of an export as LLaMA-Factory's loader and sharegpt converter take it."""
    entry = json.loads((folder / "dataset_info.json").read_text())[name]
    assert (entry["formatting"], entry["ranking"]) == ("sharegpt", True)
    columns = entry["columns"]
    rows = load_dataset("json", data_files=str(folder / entry["file_name"]), split="train",
                        cache_dir=str(folder.parent / "hf-cache")).to_list()  # fmt: skip
    for row in rows:
        turns = row[columns["messages"]]
        if turns[0][SHAREGPT_TAGS["role_tag"]] == SHAREGPT_TAGS["system_tag"]:  # its system prompt, taken off first
            turns = turns[1:]
        assert len(turns) % 2 == 1  # the prompt's turns end on the user's, which the ranked answers follow
        tags = [turn[SHAREGPT_TAGS["role_tag"]] for turn in turns]
        assert tags == [SHAREGPT_TAGS["user_tag"], SHAREGPT_TAGS["assistant_tag"]] * (len(tags) // 2) + ["human"]
        for side in (columns["chosen"], columns["rejected"]):
            assert row[side][SHAREGPT_TAGS["role_tag"]] == SHAREGPT_TAGS["assistant_tag"]
    return rows
