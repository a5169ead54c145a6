"""popalign: contrastive DPO preference data, one Hugging Face dataset config per contrast strategy.

The Python API (`build`, `score`, `judge`, `merge`, `push`, `versions`, `open_build`) is what the `popalign`
command runs; see `popalign.api`. The errors it raises are in `popalign.errors`.
"""

from popalign.api import (
    Build,
    Endpoints,
    JudgeOptions,
    ScoreOptions,
    build,
    judge,
    merge,
    open_build,
    push,
    score,
    versions,
)
from popalign.build_folder import Manifest
from popalign.errors import (
    BackendError,
    ConfigError,
    ForeignRepositoryError,
    NotABuildError,
    PopAlignError,
    PromptsError,
    PublishError,
    ShardError,
    TemplateError,
    VersionExistsError,
    VersionTooOldError,
)
from popalign.scale_out import Executor

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Build",
    "ConfigError",
    "Endpoints",
    "Executor",
    "ForeignRepositoryError",
    "JudgeOptions",
    "Manifest",
    "NotABuildError",
    "PopAlignError",
    "PromptsError",
    "PublishError",
    "ScoreOptions",
    "ShardError",
    "TemplateError",
    "VersionExistsError",
    "VersionTooOldError",
    "__version__",
    "build",
    "judge",
    "merge",
    "open_build",
    "push",
    "score",
    "versions",
]
