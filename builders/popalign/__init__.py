"""popalign: contrastive DPO preference data, one Hugging Face dataset config per contrast strategy.

The Python API (`build`, `score`, `judge`, `merge`, `push`, `export`, `versions`, `open_build`) is what the `popalign`
command runs; see `popalign.api`. The errors it raises are in `popalign.errors`.
"""

from popalign.api import (
    Build,
    build,
    export,
    judge,
    merge,
    open_build,
    push,
    score,
    versions,
)
from popalign.config import BuildConfig, Endpoints, Executor, GenerationParams, JudgeOptions, Push, ScoreOptions
from popalign.dataset.folder import Manifest
from popalign.errors import (
    BackendError,
    ConfigError,
    ForeignRepositoryError,
    MissingExtraError,
    NotABuildError,
    PopAlignError,
    PromptsError,
    PublishError,
    ShardError,
    TamperedBuildError,
    TemplateError,
    VersionExistsError,
    VersionTooOldError,
)
from popalign.version import __version__

__all__ = [
    "BackendError",
    "Build",
    "BuildConfig",
    "ConfigError",
    "Endpoints",
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
    "TamperedBuildError",
    "TemplateError",
    "VersionExistsError",
    "VersionTooOldError",
    "__version__",
    "build",
    "export",
    "judge",
    "merge",
    "open_build",
    "push",
    "score",
    "versions",
]
