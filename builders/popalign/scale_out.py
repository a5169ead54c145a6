"""Many machines: one `popalign build --shard K/N` per datatrove task, on datatrove's local, Slurm or Ray
executor, then one `merge` of the parts into the build folder (and a push, with `--push-to`).

The tasks share nothing but the work folder beside `--out` (parts and datatrove's logs) and, if given, the
cache folder. Datatrove marks a task complete only after its part is written, so a rerun of the same command
runs only the tasks that did not finish; each of those resumes from the cache like any build.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popalign.errors import ConfigError, PopAlignError

EXECUTORS = ("local", "slurm", "ray")


def work_folder(out: Path) -> Path:
    """Where the tasks of a build into `out` write their parts and logs: a sibling of `out`."""
    return out.parent / f".{out.name}.popalign-tasks"


def part_folder(out: Path, rank: int, world_size: int) -> Path:
    return work_folder(out) / "parts" / f"part-{rank + 1:05d}-of-{world_size:05d}"


@dataclass(frozen=True)
class Executor:
    """How to run a build as `tasks` datatrove tasks (`kind`: local, slurm or ray; `workers` at once, default
    all), where datatrove logs (default: beside `out`), the Slurm settings, and the push of the merged build
    (`push_to`, `version`): on Slurm the merge and the push are a job of their own, after the array."""

    kind: str = "local"
    tasks: int = 1
    workers: int | None = None
    logging_dir: str | None = None
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"
    slurm_cpus: int = 4
    push_to: str | None = None
    version: str | None = None
    private: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"executor {self.kind!r}: expected one of {', '.join(EXECUTORS)}")


class ShardTask:
    """A datatrove pipeline step: task `rank` of `world_size` builds shard `rank + 1`/`world_size` with the
    build's own options into its part folder (pickled with the executor for Slurm and Ray)."""

    def __init__(self, options: dict[str, Any], out: Path) -> None:
        self.options, self.out = options, out

    def __call__(self, data: Any, rank: int = 0, world_size: int = 1) -> None:
        from popalign.api import build

        part = part_folder(self.out, rank, world_size)
        build(**self.options, out=part, shard=f"{rank + 1}/{world_size}", progress=False)


class MergeTask:
    """The last step: merge every part into `out`, then push if asked (a Slurm job after the build's array)."""

    def __init__(self, out: Path, executor: Executor) -> None:
        self.out, self.executor = out, executor

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        from popalign.pipeline import merge_builds

        tasks = self.executor.tasks
        merge_builds([part_folder(self.out, k, tasks) for k in range(tasks)], self.out)
        if self.executor.push_to:
            from popalign.publish import push_dataset

            push = self.executor
            push_dataset(self.out, push.push_to, push.version or "", token=None, private=push.private, force=push.force)


def run_tasks(options: dict[str, Any], out: Path, executor: Executor) -> bool:
    """Run the build of `options` into `out` as datatrove tasks, then merge (and push). Returns True when the
    merged build is written, False when the work was only submitted (Slurm: a merge job follows the array)."""
    try:
        import datatrove  # noqa: F401
    except ImportError:
        raise ConfigError("--executor needs datatrove: pip install 'popalign[scale]'") from None
    logs = str(executor.logging_dir or work_folder(out) / "logs")
    workers = executor.workers or -1  # datatrove: every task at once
    pipeline = [ShardTask(options, out)]
    if executor.kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not executor.slurm_partition:
            raise ConfigError("--executor slurm needs --slurm-partition")
        slurm = {
            "time": executor.slurm_time,
            "partition": executor.slurm_partition,
            "cpus_per_task": executor.slurm_cpus,
            "venv_path": str(Path(sys.prefix) / "bin" / "activate") if sys.prefix != sys.base_prefix else None,
        }
        build = SlurmPipelineExecutor(
            pipeline=pipeline, tasks=executor.tasks, workers=workers, logging_dir=logs, job_name="popalign", **slurm
        )
        merge = SlurmPipelineExecutor(
            pipeline=[MergeTask(out, executor)], tasks=1, logging_dir=f"{logs}/merge", job_name="popalign-merge",
            depends=build, **slurm,
        )  # fmt: skip
        merge.run()  # submits the build's array first, then the merge job that waits for it
        return False
    if executor.kind == "ray":
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'popalign[ray]'") from None
        from datatrove.executor import RayPipelineExecutor

        ray.init(ignore_reinit_error=True, log_to_driver=False)  # the cluster at $RAY_ADDRESS, or one started here
        runner: Any = RayPipelineExecutor(pipeline=pipeline, tasks=executor.tasks, workers=workers, logging_dir=logs)
    else:
        from datatrove.executor import LocalPipelineExecutor

        runner = LocalPipelineExecutor(pipeline=pipeline, tasks=executor.tasks, workers=workers, logging_dir=logs)
    try:
        runner.run()
    except Exception as err:  # a task failed: datatrove logged it in full
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise PopAlignError(
            f"a task failed ({reason}); its log is under {logs}/logs; rerun to run the unfinished"
        ) from None
    MergeTask(out, executor)()
    return True
