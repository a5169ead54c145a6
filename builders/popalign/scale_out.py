"""Many machines: one `popalign build --shard K/N` per datatrove task, on datatrove's local, Slurm or Ray
executor, then one `merge` of the parts into the build folder (and a push, with `--push-to`).

The tasks share nothing but the work folder beside `--out` (parts and datatrove's logs) and, if given, the
cache folder. Datatrove marks a task complete only after its part is written, so a rerun of the same command
runs only the tasks that did not finish; each of those resumes from the cache like any build.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from popalign.config import Push
from popalign.errors import ConfigError, PopAlignError
from popalign.extras import require
from popalign.merge import merge_builds
from popalign.pipeline import run_plan
from popalign.plan import BuildPlan
from popalign.publish import push_dataset


def work_folder(out: Path, plan: BuildPlan | None = None) -> Path:
    """Where the tasks of a build into `out` write their parts and logs: a sibling of `out`, then (given the plan)
    a folder named by the plan's fingerprint, so a rerun with other options starts afresh beside the old work."""
    tasks = out.parent / f".{out.name}.popalign-tasks"
    return tasks / plan.fingerprint()[:16] if plan else tasks


def part_folder(work: Path, rank: int, world_size: int) -> Path:
    """The part task `rank` of `world_size` writes, in the build's work folder."""
    return work / "parts" / f"part-{rank + 1:05d}-of-{world_size:05d}"


class ShardTask:
    """A datatrove pipeline step: task `rank` of `world_size` runs the build's plan for shard `rank + 1` of
    `world_size` into its part folder (pickled with the executor for Slurm and Ray)."""

    def __init__(self, plan: BuildPlan, work: Path) -> None:
        self.plan, self.work = plan, work

    def __call__(self, data: Any, rank: int = 0, world_size: int = 1) -> None:
        run_plan(self.plan.for_shard(rank + 1, world_size), part_folder(self.work, rank, world_size), progress=False)


class MergeTask:
    """The last step: merge every part into `out`, then push if asked (a Slurm job after the build's array)."""

    def __init__(self, out: Path, work: Path, tasks: int, push: Push | None) -> None:
        self.out, self.work, self.tasks, self.push = out, work, tasks, push

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        merge_builds([part_folder(self.work, k, self.tasks) for k in range(self.tasks)], self.out)
        if self.push:
            push = self.push
            push_dataset(
                self.out, push.repo_id, push.release,
                token=None, private=push.private, force=push.force, flags=push.flags,
            )  # fmt: skip


def run_tasks(plan: BuildPlan) -> bool:
    """Run `plan` as datatrove tasks, then merge (and push). Returns True when the merged build is written, False
    when the work was only submitted (Slurm: a merge job follows the array)."""
    executor, out = plan.config.executor, plan.out
    assert executor is not None
    credentials = [key for role in plan.used for key in plan.roles[role].credentials]
    if plan.config.endpoints.token or any(credentials):
        raise ConfigError(
            "--executor writes the command's arguments into the tasks' pickled pipeline: give endpoint keys "
            "through a role's api_key_env or $HF_TOKEN (the tasks inherit the environment), not --token or a URL"
        )
    require("ray" if executor.kind == "ray" else "scale", f"--executor {executor.kind}")
    work = work_folder(out, plan)
    # datatrove's completion marks: under the plan's fingerprint too, so other options never find them
    logs = str(Path(executor.logging_dir) / work.name if executor.logging_dir else work / "logs")
    workers = executor.workers or -1  # datatrove: every task at once
    pipeline = [ShardTask(plan, work)]
    merge_task = MergeTask(out, work, executor.tasks, plan.config.push)
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
            pipeline=[merge_task], tasks=1, logging_dir=f"{logs}/merge", job_name="popalign-merge",
            depends=build, **slurm,
        )  # fmt: skip
        merge.run()  # submits the build's array first, then the merge job that waits for it
        return False
    if executor.kind == "ray":
        import ray
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
    merge_task()
    return True
