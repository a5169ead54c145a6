"""popalign: contrastive DPO preference data, one Hugging Face dataset config per contrast strategy.

The Python API (`build`, `estimate`, `evaluate`, `score`, `judge`, `merge`, `push`, `export`, `versions`,
`open_build`) is what the `popalign` command runs; see `popalign.api`. The errors it raises are in `popalign.errors`.
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
    push,
    score,
    versions,
)
from popalign.config import (
    BuildConfig,
    Endpoints,
    EvaluateOptions,
    Executor,
    GenerationParams,
    JudgeOptions,
    Push,
    ScoreOptions,
)
from popalign.contrasts import Strategy
from popalign.dataset.folder import Manifest
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
from popalign.version import __version__

__all__ = [
    "BackendError",
    "BudgetSpentError",
    "Build",
    "BuildConfig",
    "ConfigError",
    "Endpoints",
    "Estimate",
    "EvaluateOptions",
    "Evaluation",
    "Executor",
    "ForeignRepositoryError",
    "GenerationParams",
    "JudgeOptions",
    "Manifest",
    "MissingExtraError",
    "NotABuildError",
    "PopAlignError",
    "PromptsError",
    "PublishError",
    "Push",
    "ScoreOptions",
    "ShardError",
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
    "push",
    "score",
    "versions",
]
