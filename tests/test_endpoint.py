"""The endpoint backend against a real LLM server: llama.cpp's `llama-server` (built from the llama-cpp-python
sdist) serving the embedded SmolLM2 GGUF on loopback, behind a fault-injecting proxy.

One server serves every role. The model-contrast roles differ by their generation settings (`small` samples at
temperature 1.5, `second` stops at 12 tokens), set per role in the recipe, so each side is a different request.
The server runs one slot without prompt caching, so an answer depends only on its request (with parallel slots,
llama.cpp's batched kernels change a few sampled tokens run to run), which lets every test compare datasets
byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet
import pytest

from fault_proxy import fault_proxy
from helpers import POPALIGN, run_offline
from llama_server import SERVED_NAME, build_llama_server, serve_llama
from net import free_port
from popalign.contrasts import PAPER
from popalign.resources import embedded_model_path

pytestmark = pytest.mark.slow
LIMIT = 4
RECIPE = """\
strategies: paper
limit: {limit}
out: {out}
keep_truncated: true
generation: {{max_new_tokens: 24, temperature: 0.7, seed: 3}}
concurrency: 4
roles:
  default: {url}
  large: {url}
  small: {{url: {url}, generation: {{temperature: 1.5, top_p: 1.0}}}}
  first: {url}
  second: {{url: {url}, generation: {{max_new_tokens: 12}}}}
"""


@pytest.fixture(scope="session")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-slot `llama-server` serving SmolLM2; the binary is built once and cached."""
    cache = Path(os.environ.get("POPALIGN_TEST_CACHE", Path.home() / ".cache" / "popalign-tests"))
    binary = build_llama_server(cache)
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with serve_llama(binary, embedded_model_path(), log, slots=1, extra=("--no-cache-prompt",)) as url:
        yield url


def recipe(folder: Path, url: str, limit: int = LIMIT) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(RECIPE.format(limit=limit, out="d", url=url))
    return path


def build(folder: Path, url: str, *extra: str, limit: int = LIMIT) -> subprocess.CompletedProcess[str]:
    """`popalign build --recipe` into `folder/d` with its own cache `folder/cache`."""
    command = [POPALIGN, "build", "--recipe", recipe(folder, url, limit), "--cache-dir", folder / "cache", *extra]
    return run_offline(*command, "--no-progress", HF_HUB_OFFLINE="0")


def tables(folder: Path) -> dict[str, list[dict]]:
    return {d.name: pyarrow.parquet.read_table(d).to_pylist() for d in sorted((folder / "data").iterdir())}


@pytest.fixture(scope="module")
def reference(llama_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """An uninterrupted build of all six strategies through a pass-through proxy: its dataset folder, the number of
    chat requests the server answered, and the CLI output."""
    folder = tmp_path_factory.mktemp("reference")
    with fault_proxy(llama_url) as proxy:
        result = build(folder, proxy.url)
    assert result.returncode == 0, result.stderr
    return folder / "d", len(proxy.forwarded), result.stdout


def summary_line(stdout: str, strategy: str) -> str:
    """The closing table's line of one strategy: rows, drops, then requests made, cached, shared, retried, failed."""
    lines = stdout.splitlines()
    (line,) = [line for line in lines if line.startswith(f"{strategy} ") and line.split()[1].isdigit() and "%" in line]
    return line


def distinct_requests(stdout: str) -> int:
    (line,) = [line for line in stdout.splitlines() if line.startswith("wrote ")]
    return int(line.split(" distinct:")[0].rsplit(" ", 1)[1])


def test_all_six_strategies_build_on_the_llama_server(reference: tuple[Path, int, str], tmp_path: Path) -> None:
    import datasets

    out, served, stdout = reference
    manifest = json.loads((out / "popalign_build.json").read_text())
    assert list(manifest["configs"]) == list(PAPER) and len(tables(out)) >= 5
    assert manifest["backend"] == "endpoint" and manifest["roles"]["small"] == SERVED_NAME
    assert manifest["role_params"]["small"]["temperature"] == 1.5
    for name, rows in tables(out).items():
        loaded = datasets.load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "hf"))
        assert loaded.num_rows == len(rows) > 0
        assert all(row["chosen_model"] == row["rejected_model"] == SERVED_NAME for row in rows)
        assert all(row["chosen"][0]["content"] and row["rejected"][0]["content"] for row in rows)
    # shared requests were made once: the server answered exactly the distinct requests
    assert served == distinct_requests(stdout)
    # per instruction: prefix 2, demon 2, elicitive 5, nparam 2, leaderboard 2, refine 2 = 15 asked; each model
    # and pipeline strategy draws its own M(q), and only refine's draft is the planner's check (draw 0, same model,
    # same settings): elicitive makes it, refine shares it, so at most 14 calls
    assert served <= 14 * LIMIT
    # answers cut at the recipe's 24 tokens were recorded from the server's finish_reason, and kept as asked
    cut = {name: config["truncation"]["cut"] for name, config in manifest["configs"].items()}
    assert cut["prefix"] > 0 and all(0 <= n <= LIMIT for n in cut.values())
    assert all("truncated" not in config["dropped"] for config in manifest["configs"].values())
    for name, sharing in (("leaderboard", 0), ("refine", LIMIT)):
        _made, cached, shared, _retried, failed = map(int, summary_line(stdout, name).split()[-5:])
        assert (shared, cached, failed) == (sharing, 0, 0)
    assert int(summary_line(stdout, "leaderboard").split()[-5]) == 2 * LIMIT  # M_first(q) and M_second(q), its own


def test_faults_are_retried_and_no_row_is_lost_or_duplicated(
    llama_url: str, reference: tuple[Path, int, str], tmp_path: Path
) -> None:
    schedule = ["429", "pass", "503", "pass", "reset", "pass", "pass", "stall", "pass", "garbage", "pass", "pass"]
    # the deadline is well above a real answer's time on a loaded 2-core machine, and the stall well above it
    with fault_proxy(llama_url, schedule, stall=14.0) as proxy:
        result = build(tmp_path, proxy.url, "--timeout", "9", "--retries", "8")
    assert result.returncode == 0, result.stderr
    assert set(proxy.injected) == {"429", "503", "reset", "stall", "garbage"}
    retries = int(result.stdout.split(" retries;")[0].rsplit(" ", 1)[1])
    assert retries == sum(proxy.injected.values())
    assert tables(tmp_path / "d") == tables(reference[0])


def test_a_killed_run_resumes_with_only_the_missing_requests(
    llama_url: str, reference: tuple[Path, int, str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache" / "generations.sqlite"
    total = reference[1]
    with fault_proxy(llama_url) as proxy:
        command = [POPALIGN, "build", "--recipe", recipe(tmp_path, proxy.url), "--cache-dir", tmp_path / "cache"]
        env = {**os.environ, "HF_HUB_OFFLINE": "0"}
        run = subprocess.Popen(list(map(str, command)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while _cached(cache) < total // 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL
    kept = _cached(cache)
    assert total // 2 <= kept < total
    with fault_proxy(llama_url) as proxy:
        result = build(tmp_path, proxy.url)
    assert result.returncode == 0, result.stderr
    assert len(proxy.forwarded) == total - kept
    assert tables(tmp_path / "d") == tables(reference[0])


def _cached(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def test_an_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    result = build(tmp_path, f"http://127.0.0.1:{free_port()}", limit=1)
    assert result.returncode == 2
    assert result.stderr.startswith("popalign: error: endpoint http://127.0.0.1:")
    assert "unreachable" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_offline_mode_is_named_rather_than_a_traceback(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    command = [POPALIGN, "build", "--recipe", recipe(tmp_path, url, 1), "--cache-dir", tmp_path / "cache"]
    result = run_offline(*command)  # HF_HUB_OFFLINE=1
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"endpoint {url}: HF_HUB_OFFLINE=1 blocks huggingface_hub's HTTP client" in result.stderr


def test_a_wrong_key_is_refused_without_printing_it(llama_url: str, tmp_path: Path) -> None:
    with fault_proxy(llama_url, token="right-key-123") as proxy:
        wrong = build(tmp_path, proxy.url, "--token", "wrong-key-456", limit=1)
        right = build(tmp_path, proxy.url, "--token", "right-key-123", limit=1)
    assert wrong.returncode == 2 and "unauthorized (HTTP 401)" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert right.returncode == 0, right.stderr
    assert any("Bearer right-key-123" in headers for headers in proxy.headers_seen)
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "d").rglob("*") if p.is_file())
    for text in (wrong.stdout, wrong.stderr, right.stdout, right.stderr, written):
        assert "key-123" not in text and "key-456" not in text


def test_garbage_that_persists_stops_the_run_naming_the_endpoint(llama_url: str, tmp_path: Path) -> None:
    with fault_proxy(llama_url, ["garbage"]) as proxy:
        result = build(tmp_path, proxy.url, "--retries", "2", limit=1)
    assert result.returncode == 2
    assert f"endpoint {proxy.url}: still failing after 2 attempts (unreadable answer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_empty_answers_are_dropped_and_counted(llama_url: str, tmp_path: Path) -> None:
    with fault_proxy(llama_url, ["pass", "empty", "pass"]) as proxy:
        result = build(tmp_path, proxy.url, limit=2)
    assert result.returncode == 0, result.stderr
    assert proxy.injected["empty"] > 0 and " empty" in result.stdout
    for rows in tables(tmp_path / "d").values():
        assert all(row["chosen"][0]["content"].strip() and row["rejected"][0]["content"].strip() for row in rows)


def test_judge_runs_on_the_llama_server(llama_url: str, reference: tuple[Path, int, str], tmp_path: Path) -> None:
    from popalign.judging import VERDICTS

    out = tmp_path / "judged"
    shutil.copytree(reference[0], out)
    result = run_offline(POPALIGN, "judge", out, "--judge-model", llama_url, "--judge-max-new-tokens", 48,
                         "--cache-dir", tmp_path / "cache", "--no-progress", HF_HUB_OFFLINE="0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    judge = json.loads((out / "popalign_build.json").read_text())["judge"]
    assert judge["model"] == SERVED_NAME and set(judge["configs"]) == set(tables(out))
    for name, rows in tables(out).items():
        assert all(row["judge_verdict"] in VERDICTS for row in rows)
        assert sum(judge["configs"][name]["counts"].values()) == len(rows)
    assert "judged by SmolLM2-135M-Instruct" in result.stdout


def test_a_judge_reply_without_a_letter_is_read_from_the_llama_servers_top_logprobs(
    llama_url: str, reference: tuple[Path, int, str], tmp_path: Path
) -> None:
    """llama.cpp's chat completions give `logprobs` and `top_logprobs`: the first token's top five are the local
    model's on the same GGUF, within llama.cpp's quantized arithmetic (measured here: up to 0.23 apart on these
    long prompts, 0.16 on short ones), and a judge cut at one token reads its choices there."""
    import torch

    from popalign.backends.endpoint import EndpointBackend
    from popalign.backends.local import LocalBackend
    from popalign.generation import Request, user
    from popalign.judging import judge_chats
    from popalign.roles import EndpointSpec, ModelSpec
    from popalign.templates import TemplateSet

    out = tmp_path / "judged"
    shutil.copytree(reference[0], out)
    rows = pyarrow.parquet.read_table(next((out / "data" / "prefix").glob("*.parquet"))).to_pylist()[:2]
    chats = [chat for row in rows for chat in judge_chats(row, TemplateSet())]
    asks = [Request("judge", (user(chat[0]["content"]),)) for chat in chats]
    served = EndpointBackend().first_token_logprobs(EndpointSpec.parse(llama_url), asks, 5)
    model, tokenizer = LocalBackend().load(ModelSpec("smollm2"))
    for chat, top in zip(chats, served, strict=True):
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        with torch.inference_mode():
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            local = torch.log_softmax(model(**ids).logits[0, -1].float(), dim=-1)
        assert top is not None and len(top) == 5
        values, ids = local.topk(5)
        expected = {tokenizer.decode([i]): value for value, i in zip(values.tolist(), ids.tolist(), strict=True)}
        assert max(top, key=top.get) == max(expected, key=expected.get) and len(top.keys() & expected.keys()) >= 4
        assert all(abs(top[token] - expected[token]) < 0.4 for token in top.keys() & expected.keys())
    result = run_offline(POPALIGN, "judge", out, "--judge-model", llama_url, "--judge-max-new-tokens", 1,
                         "--cache-dir", tmp_path / "cache", "--no-progress", HF_HUB_OFFLINE="0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    judge = json.loads((out / "popalign_build.json").read_text())["judge"]
    assert judge["from_logprobs"] > 0 and "no log-probs" not in result.stderr


def test_the_llama_server_takes_the_reasoning_settings_server_fields_and_shapes(llama_url: str, tmp_path: Path) -> None:
    """llama.cpp's server reads `reasoning_effort`, `reasoning_format` and `chat_template_kwargs` per request: a
    build that sets them is answered (not refused) and records what it sent; SmolLM2 does not think, so no trace.
    Its `response_format` holds best-of-N's ratings to their JSON shape."""
    body = '{"chat_template_kwargs": {"enable_thinking": false}, "reasoning_format": "deepseek"}'
    result = build(tmp_path, llama_url, "--strategies", "prefix,bestofn", "--best-of", "2", "--reasoning-effort",
                   "low", "--extra-body", body, limit=1)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "d" / "popalign_build.json").read_text())
    assert manifest["params"]["reasoning_effort"] == "low"
    assert manifest["params"]["extra_body"]["reasoning_format"] == "deepseek"
    assert manifest["configs"]["bestofn"]["shapes"] == {"asked": 2, "in_shape": 2, "free_text": 0}
    for rows in tables(tmp_path / "d").values():
        assert all(row["chosen_thinking"] is None and row["chosen"][0]["content"] for row in rows)


def test_settings_reach_the_llama_servers_sampler_and_its_path_is_not_published(tmp_path: Path) -> None:
    """llama.cpp's server names its model by the path it was started with, reads `repeat_penalty` (not
    `repetition_penalty`) and samples with top-k 40 and min-p 0.05 where a request says nothing: its `/slots` shows
    what its sampler used."""
    cache = Path(os.environ.get("POPALIGN_TEST_CACHE", Path.home() / ".cache" / "popalign-tests"))
    model = embedded_model_path()
    with serve_llama(build_llama_server(cache), model, tmp_path / "server.log", slots=1, alias=str(model)) as url:
        result = run_offline(
            POPALIGN, "build", "--limit", 2, "--strategies", "prefix", "--model", f"default={url}", "--out",
            tmp_path / "d", "--no-cache", "--no-progress", "--max-new-tokens", 8, "--keep-truncated",
            "--top-k", 0, "--min-p", 0, "--repetition-penalty", 1.2, HF_HUB_OFFLINE="0",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        (slot,) = json.loads(urllib.request.urlopen(f"{url}/slots", timeout=30).read())
    used = slot["params"]
    assert used["top_k"] == 0 and used["min_p"] == 0.0 and used["repeat_penalty"] == pytest.approx(1.2)
    rows = pyarrow.parquet.read_table(next((tmp_path / "d" / "data").glob("prefix/*.parquet"))).to_pylist()
    assert {row["chosen_model"] for row in rows} == {model.name}
    written = "".join(p.read_text() for p in (tmp_path / "d").rglob("*") if p.suffix in (".json", ".md", ".yaml"))
    assert str(model.parent) not in written
    recorded = json.loads((tmp_path / "d" / "popalign_build.json").read_text())
    assert recorded["identities"]["default"]["identified_by"] == "llama.cpp file size and parameter count"
    assert recorded["sent"]["default"]["fields"]["repeat_penalty"] == 1.2
