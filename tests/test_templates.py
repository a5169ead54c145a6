"""Template registry: sandboxed rendering of user text as data, overrides by name, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import build
from popalign.contrasts import StrategyContext
from popalign.errors import TemplateError
from popalign.generation import Generation
from popalign.prompts import Instruction
from popalign.strategies import STRATEGIES
from popalign.templates import TemplateSet, registered_files

HOSTILE = "Explain {{ 7*7 }} and {% for x in range(3) %}{{ x }}{% endfor %} and {{ ''.__class__ }} please"


def first_requests(strategy: str, text: str, templates: TemplateSet) -> list:
    """The requests a strategy asks for first, for one instruction."""
    return next(STRATEGIES[strategy].run(Instruction.from_text(text), StrategyContext(templates)))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_instruction_with_jinja_syntax_is_rendered_verbatim(strategy: str) -> None:
    for request in first_requests(strategy, HOSTILE, TemplateSet()):
        assert HOSTILE in request.messages[-1][1]
        assert "49" not in request.messages[-1][1]


def test_demonstrations_and_principles_are_data_too(tmp_path: Path) -> None:
    (tmp_path / "demon_good.jsonl").write_text('{"instruction": "{{ 6*7 }}", "response": "{% raw %}x"}\n')
    (tmp_path / "prefix_principles.yaml").write_text('- {positive: "{{ 1+1 }} good", negative: "{{ 1+1 }} bad"}\n')
    templates = TemplateSet(tmp_path)
    good, _ = first_requests("demon", "q", templates)
    assert good.messages[:2] == (("user", "{{ 6*7 }}"), ("assistant", "{% raw %}x"))
    positive, negative = first_requests("prefix", "q", templates)
    assert positive.messages[0][1] == "{{ 1+1 }} good\n\nq"
    assert negative.messages[0][1] == "{{ 1+1 }} bad\n\nq"


def test_every_strategy_keeps_scaffolding_out_of_the_instruction() -> None:
    positive, negative = first_requests("prefix", "Name a colour.", TemplateSet())
    assert positive.messages[0][1] != negative.messages[0][1]
    assert positive.messages[0][1].endswith("Name a colour.")
    plain = first_requests("nparam", "Name a colour.", TemplateSet())
    assert [r.messages for r in plain] == [(("user", "Name a colour."),)] * 2
    assert [r.role for r in plain] == ["large", "small"]


def test_override_replaces_a_template_by_name_and_changes_its_hash(tmp_path: Path) -> None:
    (tmp_path / "refine.jinja").write_text("Make it better: {{ instruction }}")
    shipped, overridden = TemplateSet(), TemplateSet(tmp_path)
    assert overridden.render("refine.jinja", instruction="q") == "Make it better: q"
    assert overridden.hashes()["refine.jinja"] != shipped.hashes()["refine.jinja"]
    assert overridden.hashes()["prefix.jinja"] == shipped.hashes()["prefix.jinja"]
    assert [e.name for e in overridden.entries() if e.overridden] == ["refine.jinja"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("prefix.jinja", "{% for x in %}", "prefix.jinja: line 1: template syntax error"),
        ("refine.jinja", "{{ undefined_name }}", "refine.jinja: cannot render"),
        ("refine.jinja", "{{ instruction.__class__.__mro__ }}", "refine.jinja: cannot render"),
        ("prefix_principles.yaml", "- {positive: only one side}\n", "record 1: field 'negative' is missing"),
        ("demon_bad.jsonl", "{not json\n", "demon_bad.jsonl: not valid JSONL"),
        ("notes.txt", "hello", "notes.txt: not a popalign template name"),
    ],
)
def test_bad_override_is_one_clear_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(TemplateError, match=re.escape(message)):
        run = STRATEGIES["refine"].run(Instruction.from_text("q"), StrategyContext(TemplateSet(tmp_path)))
        next(run)
        run.send([Generation("a draft", 2)])


@pytest.mark.slow
def test_cli_lists_and_shows_templates_with_hashes(tmp_path: Path, popalign) -> None:
    listing = popalign("templates", "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(registered_files())  # popalign's, then the strategies' own
    assert "bestofn_rate.jinja" in registered_files() and lines[-1].split()[2:4] == ["shipped", "by"]
    digests = TemplateSet().hashes()
    assert all(line.split()[1] == digests[line.split()[0]][:16] for line in lines)
    shown = popalign("templates", "show", "elicitive_answer.jinja")
    assert shown.stdout == (Path(TemplateSet().path("elicitive_answer.jinja"))).read_text()
    (tmp_path / "refine.jinja").write_text("mine {{ instruction }}")
    overridden = popalign("templates", "list", "--templates", tmp_path)
    assert f"override {tmp_path / 'refine.jinja'}" in overridden.stdout
    unknown = popalign("templates", "show", "nope.jinja")
    assert unknown.returncode == 2
    known = ", ".join(registered_files())
    assert unknown.stderr.strip() == f"popalign: error: unknown template 'nope.jinja' (known: {known})"


@pytest.mark.parametrize(
    ("text", "tag"),
    [('{% include "x.jinja" %}', "include"), ('\n{% import "m" as m %}', "import"),
     ('{% from "m" import x %}', "from"), ('{% extends "base" %}', "extends")],
)  # fmt: skip
def test_templates_are_self_contained(tmp_path: Path, text: str, tag: str) -> None:
    (tmp_path / "refine.jinja").write_text(text)
    line = text.count("\n", 0, text.index("{%")) + 1
    message = f"{tmp_path / 'refine.jinja'}: line {line}: {{% {tag} %}} is not allowed: templates are self-contained"
    with pytest.raises(TemplateError) as raised:
        TemplateSet(tmp_path)
    assert str(raised.value) == message


@pytest.mark.slow
def test_a_template_that_resolves_outside_its_folder_is_refused(tmp_path: Path, popalign) -> None:
    secret = tmp_path / "elsewhere" / "secrets.txt"
    secret.parent.mkdir()
    secret.write_text("hf_notATemplate")
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "refine.jinja").symlink_to(secret)
    result = popalign("templates", "show", "refine.jinja", "--templates", folder)
    assert result.returncode == 2 and "hf_notATemplate" not in result.stdout + result.stderr
    assert result.stderr == (
        f"popalign: error: {folder / 'refine.jinja'}: resolves outside the templates folder {folder.resolve()}; "
        "templates are files in it\n"
    )
    (folder / "refine.jinja").unlink()
    (folder / "refine.jinja").symlink_to(folder / ".real-refine")  # a link inside the folder is fine
    (folder / ".real-refine").write_text("Improve it: {{ instruction }}")
    assert TemplateSet(folder).render("refine.jinja", instruction="q") == "Improve it: q"


BOUNDS = {
    "nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "rendering stopped: more than 1,000,000 steps (loop iterations, operators, calls)"),
    "huge repeat": ('{{ "x" * 4000000000 }}', "rendering stopped: a value of more than 4,000,000 characters or items"),
    "huge power": ("{{ 10**100000 }}", "rendering stopped: a number of more than 65,536 bits"),
    "huge width": ('{{ "x"|center(1000000000) }}', "rendering stopped: a size argument of 1e+09, over 4,000,000"),
    "replace growth": ('{{ ("x" * 1000000)|replace("x", "xxxxxxxx") }}',
                       "rendering stopped: a value of more than 4,000,000 characters or items"),
    "join growth": ('{{ (["x" * 1000000] * 100)|join }}',
                    "rendering stopped: a value of more than 4,000,000 characters or items"),
    "doubling": ('{% set ns = namespace(s="xy") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}',
                 "rendering stopped: a value of more than 4,000,000 characters or items"),
    "format width": ('{{ "%999999999d" % 1 }}', "rendering stopped: a %-format width or precision over 10,000"),
    "mutation": ("{% set l = [1] %}{% for i in range(30) %}{{ l.extend(l) }}{% endfor %}",
                 "cannot render (access to attribute 'extend' of 'list' object is unsafe.)"),
    "str.join": ('{{ ",".join(["a"] * 10) }}', "cannot render (access to attribute 'join' of 'str' object is unsafe.)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BOUNDS))
def test_a_template_is_bounded_in_work_and_size(tmp_path: Path, case: str) -> None:
    text, says = BOUNDS[case]
    (tmp_path / "prefix.jinja").write_text(text)
    with pytest.raises(TemplateError) as raised:
        TemplateSet(tmp_path).render("prefix.jinja", principle="p", instruction="q")
    bounded = "; templates are bounded" if says.startswith("rendering stopped") else ""
    assert str(raised.value) == f"{tmp_path / 'prefix.jinja'}: {says}{bounded}"


def test_a_bounded_template_still_has_what_prompts_need(tmp_path: Path) -> None:
    (tmp_path / "prefix.jinja").write_text(
        "{{ principle|trim }}\n{% for line in instruction.splitlines() %}- {{ line|upper }}\n{% endfor %}"
        "{{ (instruction ~ '!')|length }} {{ [1, 2, 3]|join(',') }} {{ '%5.1f' % 2.25 }}"
    )
    rendered = TemplateSet(tmp_path).render("prefix.jinja", principle=" Be exact. ", instruction="a\n{{ 7*7 }}")
    assert rendered == "Be exact.\n- A\n- {{ 7*7 }}\n12 1,2,3   2.2"


@pytest.mark.slow
def test_a_build_with_an_unbounded_template_stops_in_one_line(scripted, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "prefix.jinja").write_text(BOUNDS["huge repeat"][0])
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix", "--templates", folder, tags=["ok"])
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.splitlines()[-1] == (
        f"popalign: error: {folder / 'prefix.jinja'}: rendering stopped: a value of more than 4,000,000 characters "
        "or items; templates are bounded"
    )
