"""The prompt templates and their data files: a registry, user overrides by name, sandboxed rendering.

Templates are data. User text (the instruction, demonstrations) is only ever passed as a variable, never
compiled, so an instruction containing `{{ 7*7 }}` is rendered verbatim. A template itself (a published recipe
ships its own) is untrusted too: it renders in a sandbox, bounded in work, time and size (`template_bounds`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from popalign.contrasts import STRATEGIES
from popalign.errors import TemplateError, first_line
from popalign.resources import shipped_dir
from popalign.template_bounds import BoundedEnvironment, TemplateBoundError, render

#: Every file the paper's strategies and the judge read, with what it holds; the other strategies declare their own
#: (`popalign.contrasts.Strategy.templates`). A user folder overrides any of them by file name.
TEMPLATE_FILES: dict[str, str] = {
    "prefix.jinja": "prefix (sentences): principle prefix + instruction (vars: principle, instruction)",
    "prefix_principles.yaml": "prefix (sentences): list of {positive, negative} principle pairs",
    "prefix_labels_helpful.yaml": "prefix (helpful): list of {positive, negative} labels of a response's helpfulness",
    "prefix_labels_harmless.yaml": "prefix (harmless): list of {positive, negative} labels of a response's "
    "harmlessness",
    "prefix_label_prefill.jinja": "prefix (labels) on a local model: the assistant's prefilled opening (vars: label)",
    "prefix_label_system.jinja": "prefix (labels) on an endpoint: system message naming the response (vars: label)",
    "demon_good.jsonl": "demon: good demonstrations, given as earlier chat turns, {instruction, response} per line",
    "demon_bad.jsonl": "demon: bad demonstrations, given as earlier chat turns, {instruction, response} per line",
    "elicitive_good.jinja": "elicitive (guided) step 1: the planner plans a good answer (vars: instruction)",
    "elicitive_bad.jinja": "elicitive (guided) step 1: the planner plans a bad answer (vars: instruction)",
    "elicitive_answer.jinja": "elicitive (guided) step 2: system message giving the plan as guidance (vars: plan)",
    "elicitive_paper_good.jinja": "elicitive (paper): Thought: then Response: of a good answer (vars: instruction)",
    "elicitive_paper_bad.jinja": "elicitive (paper): Thought: then Response: of a bad answer (vars: instruction)",
    "refine.jinja": "refine (self) turn 2: improve the first answer (vars: instruction)",
    "refine_clair.jinja": "refine (clair): the reviser minimally revises the first answer (vars: instruction, answer)",
    "judge_pairwise.jinja": "judge: which of two answers is better, ending in A or B (vars: instruction, answer_a, "
    "answer_b)",
}


@dataclass(frozen=True)
class TemplateEntry:
    """One registered file as `popalign templates list` shows it."""

    name: str
    path: Path
    sha256: str
    overridden: bool
    description: str
    strategy: str | None = None  # the strategy that declares the file, where it is not one of popalign's own


def registered_files() -> dict[str, tuple[str, Path, str | None]]:
    """Every template file, with what it holds, the folder it ships in and the strategy that declares it (None:
    popalign's own files), popalign's first.

    Raises:
        TemplateError: a strategy declares a file another one (or popalign) already has.
    """
    shipped = shipped_dir("templates")
    files: dict[str, tuple[str, Path, str | None]] = {
        name: (text, shipped, None) for name, text in TEMPLATE_FILES.items()
    }
    for name, text, folder, strategy in STRATEGIES.template_files():
        if name in files:
            raise TemplateError(f"template {name!r} of strategy {strategy!r}: the name is taken; give it its own")
        files[name] = (text, folder or shipped, strategy)
    return files


class TemplateSet:
    """The shipped templates (popalign's and every installed strategy's), with any file of the same name in
    `override_dir` taking precedence.

    >>> templates = TemplateSet()
    >>> templates.render("prefix.jinja", principle="Be helpful.", instruction="{{ 7*7 }}")
    'Be helpful.\\n\\n{{ 7*7 }}'
    """

    def __init__(self, override_dir: Path | None = None) -> None:
        self._files = registered_files()
        self._override = Path(override_dir) if override_dir is not None else None
        if self._override is not None:
            self._check_override_dir(self._override)
        self._env = BoundedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
        self._sources = {name: self._read(name) for name in self._files}
        self._compiled = {
            name: self._compile(name, source) for name, source in self._sources.items() if name.endswith(".jinja")
        }

    def path(self, name: str) -> Path:
        """The file that provides `name`: the override if there is one, else the shipped file."""
        if self._override is not None and (self._override / name).is_file():
            return self._override / name
        return self._files[name][1] / name

    def entries(self) -> list[TemplateEntry]:
        """Every registered file with its content hash, in registry order."""
        return [
            TemplateEntry(
                name=name,
                path=self.path(name),
                sha256=hashlib.sha256(self._sources[name].encode("utf-8")).hexdigest(),
                overridden=self.path(name).parent != folder,
                description=description,
                strategy=strategy,
            )
            for name, (description, folder, strategy) in self._files.items()
        ]

    def hashes(self) -> dict[str, str]:
        """Content hash of every registered file, for the dataset card."""
        return {entry.name: entry.sha256 for entry in self.entries()}

    def source(self, name: str) -> str:
        """The raw text of one registered file."""
        self._check_name(name)
        return self._sources[name]

    def render(self, name: str, **variables: Any) -> str:
        """Render template `name` with `variables` as data; surrounding whitespace is stripped."""
        self._check_name(name)
        try:
            return render(self._compiled[name], variables).strip()
        except TemplateBoundError as err:
            raise TemplateError(f"{self.path(name)}: rendering stopped: {err}; templates are bounded") from err
        except jinja2.TemplateError as err:
            raise TemplateError(f"{self.path(name)}: cannot render ({first_line(err)})") from err

    def records(self, name: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
        """A data file (`.yaml` list or `.jsonl`) as non-empty records, each with text `fields`."""
        self._check_name(name)
        path, source = self.path(name), self._sources[name]
        try:
            if name.endswith(".yaml"):
                records = yaml.safe_load(source)
            else:
                records = [json.loads(line) for line in source.splitlines() if line.strip()]
        except (yaml.YAMLError, json.JSONDecodeError) as err:
            raise TemplateError(f"{path}: not valid {path.suffix[1:].upper()} ({err})") from err
        if not isinstance(records, list) or not records:
            raise TemplateError(f"{path}: expected a non-empty list of records")
        for number, record in enumerate(records, start=1):
            missing = [f for f in fields if not (isinstance(record, dict) and isinstance(record.get(f), str))]
            if missing:
                raise TemplateError(f"{path}: record {number}: field {missing[0]!r} is missing or not text")
        return records

    def _check_name(self, name: str) -> None:
        if name not in self._files:
            raise TemplateError(f"unknown template {name!r} (known: {', '.join(self._files)})")

    def _check_override_dir(self, folder: Path) -> None:
        if not folder.is_dir():
            raise TemplateError(f"{folder}: templates folder not found")
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.name not in self._files:
                raise TemplateError(f"{path}: not a popalign template name (known: {', '.join(self._files)})")

    def _read(self, name: str) -> str:
        path = self.path(name)
        if self._override is not None and path.parent == self._override:
            folder = self._override.resolve()
            if not path.resolve().is_relative_to(folder):
                raise TemplateError(
                    f"{path}: resolves outside the templates folder {folder}; templates are files in it"
                )
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise TemplateError(f"{path}: cannot read template ({err})") from err

    def _compile(self, name: str, source: str) -> jinja2.Template:
        try:
            tree = self._env.parse(source)
            for node in tree.find_all(
                (jinja2.nodes.Include, jinja2.nodes.Import, jinja2.nodes.FromImport, jinja2.nodes.Extends)
            ):
                tag = type(node).__name__.lower().replace("fromimport", "from")
                raise TemplateError(
                    f"{self.path(name)}: line {node.lineno}: {{% {tag} %}} is not allowed: templates are self-contained"
                )
            return self._env.from_string(self._env.bound(tree))
        except jinja2.TemplateSyntaxError as err:
            raise TemplateError(f"{self.path(name)}: line {err.lineno}: template syntax error ({err.message})") from err
        except (jinja2.TemplateError, ValueError, OverflowError, RecursionError) as err:
            raise TemplateError(f"{self.path(name)}: cannot compile ({type(err).__name__}: {first_line(err)})") from err
