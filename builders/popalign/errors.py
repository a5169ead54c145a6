"""Named errors that callers can catch; the CLI turns each into one line and a non-zero exit."""


class PopAlignError(Exception):
    """Base class of every error popalign raises on purpose."""


class PromptsError(PopAlignError):
    """The instructions file is missing, empty, or has a bad row or column."""


class TemplateError(PopAlignError):
    """A template or its data file is missing, unreadable, or fails to render."""


class ConfigError(PopAlignError):
    """An unknown strategy, role or model spec, or roles a strategy needs are not configured."""


class BackendError(PopAlignError):
    """A model could not be loaded or a generation request failed."""


class RequestFailed(PopAlignError):
    """One request was refused for good (for example a prompt too long for the endpoint); its pair is dropped."""


def first_line(error: BaseException, fallback: str = "no detail") -> str:
    """The first line of an error's message, for one-line errors; `fallback` when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else fallback
