"""popalign: contrastive DPO preference data, one Hugging Face dataset config per contrast strategy."""

from popalign.errors import BackendError, ConfigError, PopAlignError, PromptsError, TemplateError

__version__ = "0.1.0"

__all__ = ["BackendError", "ConfigError", "PopAlignError", "PromptsError", "TemplateError", "__version__"]
