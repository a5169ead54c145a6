"""`popalign build --executor`: one shard per datatrove task, then one merge. The local executor gives exactly the
rows of a one-process build and a rerun runs only the unfinished tasks; the Ray executor does the same on a local
Ray instance; the Slurm executor's generated job script runs through a stand-in `sbatch` that executes the array
tasks here."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import HERE, POPALIGN, build, load, manifest, prompts, run_offline, serve_scripted, tags, work_of

STRATEGIES = "prefix,elicitive"
COUNT = 24

#: `sbatch` for a machine without Slurm: runs each array task of the script at once, in order, with the
#: variables Slurm sets, writing its output where `#SBATCH --output` says; prints the job id as sbatch does.
SBATCH = r"""#!/usr/bin/env python3
import itertools, os, re, subprocess, sys
ids = itertools.count(int(os.environ.get("STANDIN_JOB", "100")))
script = sys.argv[-1]
text = open(script).read()
array = re.search(r"^#SBATCH --array=(\d+)-(\d+)", text, re.M)
output = re.search(r"^#SBATCH --output=(.+)$", text, re.M)
exports = dict(a.split("=", 1) for arg in sys.argv[1:-1] if arg.startswith("--export=")
               for a in arg.removeprefix("--export=").split(",")[1:])
job = str(abs(hash(script + text)) % 100000)
for task in range(int(array[1]), int(array[2]) + 1) if array else [None]:
    env = {**os.environ, **exports, "SLURM_JOB_ID": job, "SLURM_ARRAY_JOB_ID": job, "SLURM_NODELIST": "localhost"}
    if task is not None:
        env["SLURM_ARRAY_TASK_ID"] = str(task)
    log = output[1].replace("%A", job).replace("%a", str(task)) if output else os.devnull
    with open(log, "a") as out:
        subprocess.run(["bash", script], env=env, stdout=out, stderr=subprocess.STDOUT)
print(f"Submitted batch job {job}")
"""
#: `scontrol show hostnames NODES` lists the nodes (here: the one given).
SCONTROL = r"""#!/usr/bin/env python3
import sys
print(*sys.argv[3:], sep="\n")
"""
#: `srun -l -n 1 COMMAND...` runs COMMAND.
SRUN = r"""#!/usr/bin/env python3
import os, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args = args[2:] if args[0] == "-n" else args[1:]
os.execvp(args[0], args)
"""


def rows_by_prompt(out: Path) -> dict[str, list[tuple]]:
    """Each config's rows as comparable tuples, sorted by instruction (a merge orders rows by shard)."""
    configs = {}
    for name in STRATEGIES.split(","):
        rows = load(out, name)
        configs[name] = sorted(
            (row["prompt_id"], row["chosen"][0]["content"], row["rejected"][0]["content"], row["chosen_reasoning"])
            for row in rows
        )
    return configs


def executor_build(tmp_path: Path, url: str, *flags: str, out: str, **env: str):
    return build(tmp_path, url, "--strategies", STRATEGIES, "--concurrency", "4", *flags, tags=tags(COUNT), out=out,
                 **env)  # fmt: skip


@pytest.mark.slow
def test_local_executor_gives_the_rows_of_one_process_and_reruns_only_unfinished_tasks(
    scripted,
    tmp_path: Path,
) -> None:
    url, log = scripted
    one, single = executor_build(tmp_path, url, out="one")
    assert one.returncode == 0, one.stderr
    many, merged = executor_build(tmp_path, url, "--executor", "local", "--tasks", "4", "--workers", "2", out="many")
    assert many.returncode == 0, many.stderr
    assert "merged 4 parts into" in many.stdout
    assert rows_by_prompt(merged) == rows_by_prompt(single)
    assert manifest(merged)["prompts"]["merged_shards"] == 4
    work = work_of(tmp_path / "many")
    parts = sorted((work / "parts").iterdir())
    assert [part.name for part in parts] == [f"part-{k:05d}-of-00004" for k in range(1, 5)]
    # task 3 dies before datatrove marks it complete: its mark and part are gone; a rerun runs task 3 alone
    (work / "logs" / "completions" / "00002").unlink()
    for path in sorted(parts[2].rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    parts[2].rmdir()
    before = {part: (part / "popalign_build.json").stat().st_mtime_ns for part in parts if part.exists()}
    requests = len(log.read_text().splitlines())
    again, _ = executor_build(tmp_path, url, "--executor", "local", "--tasks", "4", "--workers", "2", out="many")
    assert again.returncode == 0, again.stderr
    assert {part: (part / "popalign_build.json").stat().st_mtime_ns for part in before} == before
    assert (parts[2] / "popalign_build.json").is_file()
    shard = manifest(parts[2])["prompts"]["count"]
    assert len(log.read_text().splitlines()) - requests == shard * (2 + 5)  # prefix 2 + guided elicitive 5 each
    assert rows_by_prompt(merged) == rows_by_prompt(single)


@pytest.mark.slow
def test_a_rerun_with_other_options_never_merges_the_old_parts(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    first, out = executor_build(tmp_path, url, "--executor", "local", "--tasks", "4", "--workers", "2", out="many")
    assert first.returncode == 0, first.stderr
    assert sorted(manifest(out)["configs"]) == ["elicitive", "prefix"] and manifest(out)["params"]["seed"] == 0
    # other prompts, strategies, seed and task count: fresh parts, the new rows only
    again = build(tmp_path, url, "--strategies", "prefix", "--seed", "1", "--concurrency", "4", "--executor", "local",
                  "--tasks", "3", "--workers", "2", tags=tags(COUNT + 4)[COUNT:], out="many")[0]  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "merged 3 parts into" in again.stdout
    written = manifest(out)
    assert list(written["configs"]) == ["prefix"] and written["params"]["seed"] == 1
    assert written["prompts"]["count"] == 4 and written["prompts"]["merged_shards"] == 3
    assert len(list((tmp_path / ".many.popalign-tasks").iterdir())) == 2  # the first build's work is left as it was


@pytest.fixture
def slow_scripted(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The scripted server answering after 0.05 s, so a task lasts long enough to be killed in the middle."""
    yield from serve_scripted(tmp_path, "scripted-default", "--delay", "0.05")


@pytest.mark.slow
def test_a_task_killed_while_it_generates_is_the_only_one_a_rerun_runs(slow_scripted, tmp_path: Path) -> None:
    url, log = slow_scripted
    one, single = executor_build(tmp_path, url, out="one")
    assert one.returncode == 0, one.stderr
    # one worker runs the tasks in turn in the command's own process: SIGKILL it while task 3 generates
    command = [POPALIGN, "build", "--prompts", prompts(tmp_path, tags(COUNT)), "--out", tmp_path / "many",
               "--cache-dir", tmp_path / "cache", "--no-progress", "--templates", HERE / "scripted_templates",
               "--model", f"default={url}", "--strategies", STRATEGIES, "--concurrency", "1",
               "--executor", "local", "--tasks", "4", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}
    tasks = tmp_path / ".many.popalign-tasks"  # then the plan's fingerprint/logs/completions
    process = subprocess.Popen(list(map(str, command)), env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(tasks.glob("*/logs/completions/00001")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        two_done = len(log.read_text().splitlines())
        while len(log.read_text().splitlines()) < two_done + 10:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    answered = len(log.read_text().splitlines()) - two_done
    work = work_of(tmp_path / "many")
    assert not (work / "logs" / "completions" / "00002").exists()
    assert not (tmp_path / "many").exists()
    parts = work / "parts"
    before = {part: (part / "popalign_build.json").stat().st_mtime_ns for part in sorted(parts.iterdir())[:2]}
    requests = len(log.read_text().splitlines())
    again = subprocess.run(list(map(str, command)), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "merged 4 parts into" in again.stdout
    assert {part: (part / "popalign_build.json").stat().st_mtime_ns for part in before} == before
    # task 3 asks only what had not been answered when it died (one request may have been in flight), task 4 all;
    # prefix makes 2 requests per instruction and guided elicitive 5
    third, fourth = (manifest(part)["prompts"]["count"] * (2 + 5) for part in sorted(parts.iterdir())[2:])
    assert 10 <= answered < third
    rerun = len(log.read_text().splitlines()) - requests
    assert third - answered + fourth <= rerun <= third - answered + fourth + 1
    assert rows_by_prompt(tmp_path / "many") == rows_by_prompt(single)


@pytest.mark.slow
def test_slurm_executor_runs_its_job_script_through_sbatch(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    path = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    one, single = executor_build(tmp_path, url, out="one")
    assert one.returncode == 0, one.stderr
    submitted, merged = executor_build(tmp_path, url, "--executor", "slurm", "--tasks", "3", "--slurm-partition",
                                       "cpu", out="slurm", PATH=path)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert "submitted 3 Slurm tasks and a merge job" in submitted.stdout
    script = (work_of(tmp_path / "slurm") / "logs" / "launch_script.slurm").read_text()
    assert "#SBATCH --partition=cpu" in script and "#SBATCH --array=0-2" in script
    assert "launch_pickled_pipeline" in script and f"source {Path(sys.prefix)}/bin/activate" in script
    assert rows_by_prompt(merged) == rows_by_prompt(single)
    missing = run_offline(POPALIGN, "build", "--executor", "slurm", "--out", tmp_path / "x")
    assert missing.returncode == 2 and "--slurm-partition" in missing.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ray_executor_on_a_local_ray_instance_gives_the_same_rows(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    one, single = executor_build(tmp_path, url, out="one")
    assert one.returncode == 0, one.stderr
    many, merged = executor_build(tmp_path, url, "--executor", "ray", "--tasks", "3", "--workers", "2", out="ray",
                                  RAY_ADDRESS="")  # fmt: skip
    assert many.returncode == 0, many.stderr
    assert rows_by_prompt(merged) == rows_by_prompt(single)
    assert sorted(path.name for path in (work_of(tmp_path / "ray") / "logs" / "completions").iterdir()) == [
        "00000", "00001", "00002",
    ]  # fmt: skip


@pytest.mark.slow
def test_executor_bad_input_is_one_line(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    for flags, says in (
        (["--executor", "local", "--tasks", "2", "--shard", "1/2"], "shard and executor do not go together"),
        (["--executor", "local", "--tasks", "99"], "more tasks than the 24 instructions"),
        (["--executor", "local", "--tasks", "2", "--judge-model", url], "score or judge the merged folder"),
        (["--executor", "local", "--tasks", "2", "--token", "sk-secret"], "not --token or a URL"),
        (["--executor", "local", "--model", f"planner={url.replace('//', '//u:sk-secret@')}"], "not --token or a URL"),
    ):
        refused, out = executor_build(tmp_path, url, *flags, out="bad")
        assert refused.returncode == 2 and says in refused.stderr and len(refused.stderr.splitlines()) == 1
        assert "sk-secret" not in refused.stdout + refused.stderr
        assert not out.exists() and not (tmp_path / ".bad.popalign-tasks").exists()
