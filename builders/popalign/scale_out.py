"""Many machines: one `popalign build --shard K/N` per datatrove task, on datatrove's local, Slurm or Ray
executor, then one `merge` of the parts into the build folder (and a push, with `--push-to`).

The tasks share nothing but the work folder beside `--out` (parts and datatrove's logs) and, if given, the
cache folder. Datatrove marks a task complete only after its part is written, so a rerun of the same command
runs only the tasks that did not finish; each of those resumes from the cache like any build.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from popalign.errors import ConfigError, PopAlignError

EXECUTORS = ("local", "slurm", "ray")


def work_folder(out: Path) -> Path:
    """Where the tasks of a build into `out` write their parts and logs: a sibling of `out`."""
    return out.parent / f".{out.name}.popalign-tasks"


def part_folder(out: Path, rank: int, world_size: int) -> Path:
    return work_folder(out) / "parts" / f"part-{rank + 1:05d}-of-{world_size:05d}"


class ShardTask:
    """A datatrove pipeline step: task `rank` of `world_size` builds shard `rank + 1`/`world_size` with the
    command's own arguments into its part folder (pickled with the executor for Slurm and Ray)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def __call__(self, data: Any, rank: int = 0, world_size: int = 1) -> None:
        part = copy.copy(self.args)
        part.executor, part.shard, part.out = (
            None,
            f"{rank + 1}/{world_size}",
            part_folder(self.args.out, rank, world_size),
        )
        part.push_to = part.version = None
        part.no_progress = True
        status = part.func(part)
        if status:
            raise PopAlignError(f"task {rank + 1}/{world_size} ended with status {status}")


class MergeTask:
    """The last step: merge every part into `--out`, then push if asked (a Slurm job after the build's array)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        from popalign.pipeline import merge_builds

        args = self.args
        merge_builds([part_folder(args.out, k, args.tasks) for k in range(args.tasks)], args.out)
        if args.push_to:
            from popalign.publish import push_dataset

            push_dataset(args.out, args.push_to, args.version, token=None, private=args.private, force=args.force)


def run_tasks(args: argparse.Namespace) -> bool:
    """Run the build as `args.tasks` datatrove tasks on `args.executor`, then merge (and push). Returns True when
    the merged build is written, False when the work was only submitted (Slurm: a merge job follows the array)."""
    if args.shard is not None:
        raise ConfigError("--shard and --executor do not go together: the executor gives each task its shard")
    try:
        import datatrove  # noqa: F401
    except ImportError:
        raise ConfigError("--executor needs datatrove: pip install 'popalign[scale]'") from None
    logs = str(args.logging_dir or work_folder(args.out) / "logs")
    workers = args.workers or -1  # datatrove: every task at once
    pipeline = [ShardTask(args)]
    if args.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not args.slurm_partition:
            raise ConfigError("--executor slurm needs --slurm-partition")
        slurm = {
            "time": args.slurm_time,
            "partition": args.slurm_partition,
            "cpus_per_task": args.slurm_cpus,
            "venv_path": str(Path(sys.prefix) / "bin" / "activate") if sys.prefix != sys.base_prefix else None,
        }
        build = SlurmPipelineExecutor(
            pipeline=pipeline, tasks=args.tasks, workers=workers, logging_dir=logs, job_name="popalign", **slurm
        )
        merge = SlurmPipelineExecutor(
            pipeline=[MergeTask(args)], tasks=1, logging_dir=f"{logs}/merge", job_name="popalign-merge",
            depends=build, **slurm,
        )  # fmt: skip
        merge.run()  # submits the build's array first, then the merge job that waits for it
        return False
    if args.executor == "ray":
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'popalign[ray]'") from None
        from datatrove.executor import RayPipelineExecutor

        ray.init(ignore_reinit_error=True, log_to_driver=False)  # the cluster at $RAY_ADDRESS, or one started here
        executor: Any = RayPipelineExecutor(pipeline=pipeline, tasks=args.tasks, workers=workers, logging_dir=logs)
    else:
        from datatrove.executor import LocalPipelineExecutor

        executor = LocalPipelineExecutor(pipeline=pipeline, tasks=args.tasks, workers=workers, logging_dir=logs)
    try:
        executor.run()
    except Exception as err:  # a task failed: datatrove logged it in full
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise PopAlignError(
            f"a task failed ({reason}); its log is under {logs}/logs; rerun to run the unfinished"
        ) from None
    MergeTask(args)()
    return True
