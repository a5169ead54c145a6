"""A build recipe: the YAML file `popalign build --recipe` reads instead of (or under) its flags.

```yaml
prompts: instructions.jsonl          # paths are relative to the recipe's folder, and stay inside it;
                                     # or a Hub dataset: ORG/NAME[:CONFIG][:SPLIT], with prompts_revision: COMMIT
strategies: [prefix, demon, elicitive, nparam, leaderboard, refine]
out: popalign-data
elicitive_style: guided              # or paper: the paper's single-turn Thought:/Response: template
prefix_style: sentences              # or helpful / harmless: a label of the response on the assistant's side
keep_truncated: false                # pairs with a side cut at max_new_tokens are dropped as `truncated`
generation: {max_new_tokens: 1024, temperature: 0.7, top_p: 0.9, seed: 0}
concurrency: 64
roles:
  default: http://tgi-a:8080,http://tgi-b:8080      # replicas of one model
  large: {url: http://tgi-large:8080, api_key_env: LARGE_KEY}
  small: {url: http://tgi-small:8080, model: my-org/small, generation: {temperature: 1.0}}
```
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from popalign.commands import PATHS, command_fields
from popalign.config import BuildConfig, check_setting, recipe_keys, settings_index
from popalign.contrasts import STRATEGIES, check_role
from popalign.declarations import PATH, checked, checked_values, unknown_setting
from popalign.errors import ConfigError
from popalign.generation import GenerationParams
from popalign.prompts import is_hub_dataset
from popalign.roles import EndpointSpec, ModelSpec, parse_spec

GENERATION_KEYS = tuple(f.name for f in fields(GenerationParams))
#: A role's keys; `weights` is what identified the model a saved recipe was built with (a record: a model with other
#: weights is another model, and a rerun generates its answers anew).
ROLE_KEYS = ("url", "urls", "spec", "model", "api_key_env", "generation", "endpoint_model", "weights")


@dataclass
class Recipe:
    """The settings (by flat key, as `config.BuildConfig.of` takes them), roles and per-role generation
    settings read from a recipe file."""

    settings: dict[str, Any] = field(default_factory=dict)
    roles: dict[str, ModelSpec | EndpointSpec] = field(default_factory=dict)
    role_generation: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: roles a published recipe names only by their endpoint's served model: `--model ROLE=URL` must give them
    endpoint_models: dict[str, str] = field(default_factory=dict)

    def check_endpoints(self, given: Iterable[str]) -> None:
        """Refuse a recipe role known only by its served model name that the command line does not give (a helper
        role, the planner or the reviser, may be left out when it was the default model: it follows the default)."""
        default = self.endpoint_models.get("default")
        missing = [
            role
            for role in self.endpoint_models
            if role not in given and not (role in STRATEGIES.helper_roles() and self.endpoint_models[role] == default)
        ]
        if missing:
            role = missing[0]
            raise ConfigError(
                f"recipe role {role} was served by an endpoint as {self.endpoint_models[role]!r}: give a server of "
                f"it with --model {role}=URL"
            )


#: The longest recipe read: a recipe is a page of settings; a device or a huge file is refused, not read.
MAX_RECIPE_BYTES = 1 << 20


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe; every problem is one line naming the file and the key."""
    data = _read_mapping(path, "a recipe is a mapping of keys (prompts, strategies, roles, ...)")
    try:
        return _read(path, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def load_command_recipe(path: Path, cls: type) -> dict[str, Any]:
    """The settings of one command (`popalign score --config YAML`, `cls` its declaration in `popalign.commands`)
    from a recipe, by their keys, checked; paths are resolved beside the recipe and stay inside its folder. Every
    problem is one line naming the file and the key."""
    data = _read_mapping(path, "a recipe is a mapping of the command's settings")
    known = {key: item for key, item in command_fields(cls).items() if item.metadata["recipe"]}
    folder = path.parent.resolve()
    settings = {}
    try:
        for key, value in data.items():
            if key not in known:
                raise ConfigError(unknown_setting(str(key), known))
            if value is not None and known[key].metadata["check"] in PATHS:
                many = isinstance(value, list)
                value = [_beside(folder, key, one) for one in value] if many else _beside(folder, key, value)
            settings[key] = checked(known[key], value)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return settings


def _read_mapping(path: Path, expected: str) -> dict[Any, Any]:
    """A recipe file's mapping; a file that cannot be read, is too long, or holds no YAML mapping is refused in one
    line."""
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: not a file; a recipe is a YAML file")
        with path.open("rb") as file:
            raw = file.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise ConfigError(f"{path}: over {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a page of settings")
        data = yaml.safe_load(raw.decode("utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the recipe ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {expected}")
    return data


def _beside(folder: Path, key: str, value: Any) -> Path:
    """A recipe's path, resolved in the recipe's folder, which it may not leave (links kept: `out` must not be a
    link, and is told so)."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    joined = folder / value
    if not joined.resolve().is_relative_to(folder):
        raise ConfigError(
            f"{key}: {value!r} leaves the recipe's folder; a recipe names files beside it "
            f"(give --{key.replace('_', '-')} on the command line to use another place)"
        )
    return Path(os.path.normpath(joined))


def _read(path: Path, data: dict[str, Any]) -> Recipe:
    known = recipe_keys()
    for key in data:
        if key not in known:
            raise ConfigError(unknown_setting(str(key), known))
    recipe = Recipe()
    folder = path.parent.resolve()
    index = settings_index()
    for key, value in data.items():
        if key in ("generation", "roles", "prompts_sha256"):
            continue
        if value is None:  # `license: null` is no way to ask for the default: refused unless None is the default
            recipe.settings[key] = check_setting(key, value)
            continue
        if key == "strategies" and isinstance(value, list):
            if not all(isinstance(name, str) for name in value):
                raise ConfigError(f"strategies: expected strategy names, got {value!r}")
            value = ",".join(value)
        if (key == "prompts" or _is_path(index[key])) and not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        if key == "prompts" and is_hub_dataset(str(value)) and not (folder / str(value)).exists():
            recipe.settings[key] = str(value)  # a Hub dataset, not a file beside the recipe
            continue
        if key == "prompts" or _is_path(index[key]):
            value = _beside(folder, key, value)
        recipe.settings[key] = check_setting(key, value)
    if "prompts_sha256" in data:
        _check_prompts_digest(path, recipe.settings.get("prompts"), str(data["prompts_sha256"]))
    recipe.settings |= _generation("", data.get("generation") or {})
    roles = data.get("roles") or {}
    if not isinstance(roles, dict):
        raise ConfigError("roles: expected a mapping of role to model")
    for role, value in roles.items():
        check_role(role)
        if isinstance(value, dict) and "endpoint_model" in value and not {"url", "urls", "spec"} & value.keys():
            recipe.endpoint_models[role] = str(value["endpoint_model"])  # as popalign writes a published recipe
            generation = _generation(f"roles.{role}.generation", value.get("generation") or {})
        else:
            recipe.roles[role], generation = _role(role, value)
        if generation:
            recipe.role_generation[role] = generation
    return recipe


def _is_path(where: tuple[str | None, str]) -> bool:
    """Whether a setting names a file or folder (resolved beside the recipe)."""
    group, name = where
    return group is None and any(
        item.name == name and item.metadata.get("check") is PATH for item in fields(BuildConfig)
    )


def _check_prompts_digest(path: Path, prompts: Path | None, expected: str) -> None:
    """A saved recipe names its prompts file by name and content digest: refuse other content under that name."""
    if prompts is None or not prompts.is_file():
        return  # reported as a missing prompts file
    if hashlib.sha256(prompts.read_bytes()).hexdigest() != expected:
        raise ConfigError(
            f"{path}: {prompts.name} is not the prompts file this recipe was built with (its sha256 differs)"
        )


def _role(role: str, value: Any) -> tuple[ModelSpec | EndpointSpec, dict[str, Any]]:
    where = f"roles.{role}"
    if isinstance(value, str):
        return _spec(where, value), {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a model spec, URLs, or a mapping with url/urls/spec")
    unknown = [key for key in value if key not in ROLE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(ROLE_KEYS)})")
    given = [key for key in ("url", "urls", "spec") if key in value]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of url, urls, spec")
    generation = _generation(f"roles.{role}.generation", value.get("generation") or {})
    if given[0] == "spec":
        if "model" in value or "api_key_env" in value:
            raise ConfigError(f"{where}: model and api_key_env are for endpoints (url/urls)")
        return _spec(where, str(value["spec"])), generation
    for key in ("model", "api_key_env"):
        if key in value and not isinstance(value[key], str):
            raise ConfigError(f"{where}: {key}: expected text, got {value[key]!r}")
    urls = value["urls"] if given[0] == "urls" else [value["url"]]
    if not isinstance(urls, list) or not urls:
        raise ConfigError(f"{where}: urls: expected a list of URLs")
    try:
        spec = EndpointSpec.parse(
            ",".join(map(str, urls)), model=value.get("model"), api_key_env=value.get("api_key_env")
        )
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    return spec, generation


def _spec(where: str, text: str) -> ModelSpec | EndpointSpec:
    try:
        return parse_spec(text)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def _generation(where: str, value: Any) -> dict[str, Any]:
    """Generation settings of the run (`where` empty: the same line as a flag's) or of one role."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where or 'generation'}: expected a mapping of {', '.join(GENERATION_KEYS)}")
    return checked_values(GenerationParams, value, f"{where}." if where else "")
