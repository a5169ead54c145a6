"""Named errors that callers can catch; the CLI turns each into one line and a non-zero exit."""


class PopAlignError(Exception):
    """Base class of every error popalign raises on purpose."""


class PromptsError(PopAlignError):
    """The instructions file is missing, empty, or has a bad row or column."""


class TemplateError(PopAlignError):
    """A template or its data file is missing, unreadable, or fails to render."""


class ConfigError(PopAlignError):
    """An unknown strategy, role or model spec, or roles a strategy needs are not configured."""


class MissingExtraError(ConfigError):
    """A feature needs an optional part of popalign that is not installed; the message names its extra."""


class StrategyError(PopAlignError):
    """A strategy's code failed while it ran: it raised, yielded or returned what a strategy may not, or asked for
    more requests than it declares (named with the package that registers it)."""


class BackendError(PopAlignError):
    """A model could not be loaded or a generation request failed."""


class NotABuildError(PopAlignError):
    """A folder holds no popalign build, its manifest is unreadable, or it cannot become a build folder."""


class TamperedBuildError(NotABuildError):
    """A build folder's files are not what its manifest records: a missing, extra, linked or edited file."""


class ShardError(PopAlignError):
    """The parts given to `merge` are not the complete shards of one build."""


class PublishError(PopAlignError):
    """A push or a listing failed, or was refused to keep published versions intact."""


class VersionExistsError(PublishError):
    """The version is already published and `force` was not given."""


class VersionTooOldError(PublishError):
    """The version is older than the newest published one, or an older one was to be replaced."""


class ForeignRepositoryError(PublishError):
    """The repository holds files popalign did not publish; it is never overwritten."""


class BudgetSpentError(PopAlignError):
    """A build stopped generating because its `--budget` was spent; every answer so far is cached."""


class RequestFailed(PopAlignError):
    """One request was refused for good (for example a prompt too long for the endpoint); its pair is dropped."""


class PromptTooLong(RequestFailed):
    """A prompt (and its answer's tokens) does not fit a model's context, as a local model counts it or a server
    says it: the pair is dropped as `too-long`."""


def first_line(error: BaseException, fallback: str = "no detail") -> str:
    """The first line of an error's message, for one-line errors; `fallback` when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else fallback
