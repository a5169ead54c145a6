"""popalign: contrastive DPO preference data, one Hugging Face dataset config per contrast strategy.

The Python API (`build`, `estimate`, `evaluate`, `score`, `judge`, `merge`, `push`, `export`, `pairs`,
`versions`, `open_build`) is what the `popalign` command runs; see `popalign.api`. Each command's settings are
declared in `popalign.config` (build) and `popalign.commands` (the others). The errors it raises are in
`popalign.errors`.
"""

from popalign.api import (
    Build,
    build,
    estimate,
    evaluate,
    export,
    judge,
    merge,
    open_build,
    pairs,
    push,
    review,
    score,
    versions,
)
from popalign.commands import (
    EvaluateCommand,
    ExportCommand,
    JudgeCommand,
    MergeCommand,
    PushCommand,
    ReviewCommand,
    ScoreCommand,
    ShowCommand,
)
from popalign.config import BuildConfig, Endpoints, Executor, JudgeOptions, Push, ScoreOptions
from popalign.contrasts import Strategy
from popalign.dataset.folder import Manifest
from popalign.dataset.records import ConfigRecord, JudgeRecord, JudgeSummary, QualityRecord, ScoreRecord
from popalign.errors import (
    BackendError,
    BudgetSpentError,
    ConfigError,
    ForeignRepositoryError,
    MissingExtraError,
    NotABuildError,
    PopAlignError,
    PromptsError,
    PublishError,
    ShardError,
    StrategyError,
    TamperedBuildError,
    TemplateError,
    VersionExistsError,
    VersionTooOldError,
)
from popalign.estimate import Estimate
from popalign.evaluation import Evaluation
from popalign.generation import GenerationParams
from popalign.version import __version__

__all__ = [
    "BackendError",
    "BudgetSpentError",
    "Build",
    "BuildConfig",
    "ConfigError",
    "ConfigRecord",
    "Endpoints",
    "Estimate",
    "EvaluateCommand",
    "Evaluation",
    "Executor",
    "ExportCommand",
    "ForeignRepositoryError",
    "GenerationParams",
    "JudgeCommand",
    "JudgeOptions",
    "JudgeRecord",
    "JudgeSummary",
    "Manifest",
    "MergeCommand",
    "MissingExtraError",
    "NotABuildError",
    "PopAlignError",
    "PromptsError",
    "PublishError",
    "Push",
    "PushCommand",
    "QualityRecord",
    "ReviewCommand",
    "ScoreCommand",
    "ScoreOptions",
    "ScoreRecord",
    "ShardError",
    "ShowCommand",
    "Strategy",
    "StrategyError",
    "TamperedBuildError",
    "TemplateError",
    "VersionExistsError",
    "VersionTooOldError",
    "__version__",
    "build",
    "estimate",
    "evaluate",
    "export",
    "judge",
    "merge",
    "open_build",
    "pairs",
    "push",
    "review",
    "score",
    "versions",
]
