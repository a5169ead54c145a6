"""Contrast strategies as plugins: a package installed beside popalign registers a strategy under the
`popalign.strategies` entry points, and it is listed, built, carried into `all`, the card and the folder's templates,
and judged like a built-in one; a plugin that is broken or clashes is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import HERE, POPALIGN, build, card_metadata, install_plugin, load, manifest, run_offline
from popalign.contrasts import STRATEGIES, Strategy, StrategyContext, StrategyRegistry
from popalign.errors import ConfigError


@pytest.fixture
def plugin(tmp_path: Path) -> dict[str, str]:
    """The environment a command sees the test plugin in (`tests/plugin`, pip-installed into a folder of its own)."""
    return {"PYTHONPATH": str(install_plugin(HERE / "plugin", tmp_path / "site"))}


@pytest.mark.slow
def test_an_installed_plugin_is_listed_built_and_judged_like_a_built_in_strategy(
    scripted, plugin: dict[str, str], tmp_path: Path
) -> None:
    url, log = scripted
    listed = run_offline(POPALIGN, "strategies", **plugin)
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith("concise ")]
    assert line.split()[:4] == ["concise", "prompt", "default", "concise-contrast"], line
    assert [line.split()[0] for line in listed.stdout.splitlines()][:9] == list(STRATEGIES)  # popalign's come first
    templates = run_offline(POPALIGN, "templates", "list", **plugin).stdout
    assert "concise_short.jinja" in templates and "shipped by concise" in templates

    result, out = build(tmp_path, url, "--strategies", "concise,prefix", "--thinking", "inline",
                        tags=["ok", "not-shorter", "x"], **plugin)  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = manifest(out)
    assert list(record["configs"]) == ["prefix", "concise"]  # the paper's first, then the plugin's
    assert record["configs"]["concise"]["rows"] == 2 and record["configs"]["concise"]["dropped"] == {"not-shorter": 1}
    rows = load(out, "concise")
    assert set(rows["chosen_model"]) == {"scripted-default"}
    assert all(len(r["chosen"][0]["content"]) < len(r["rejected"][0]["content"]) for r in rows)
    assert sum(1 for messages in map(str, log.read_text().splitlines()) if "CONCISE-SHORT" in messages) == 3
    assert sorted(set(load(out, "all")["strategy"])) == ["concise", "prefix"]
    card = (out / "README.md").read_text()
    assert "- **concise**: The same model answers concisely vs padded with filler (a plugin)." in card
    assert "- `not-shorter`: concise: the concise answer is not the shorter one" in card  # its own drop reason
    assert "concise" in [c["config_name"] for c in card_metadata(out)["configs"]]
    assert (out / "templates" / "concise_short.jinja").read_text().startswith("CONCISE-SHORT")
    assert "concise_short.jinja" in record["template_hashes"]
    assert "| M(short ⊕ q), its thinking kept | M(padded ⊕ q), its thinking kept |" in card  # its styled sides

    judged = run_offline(POPALIGN, "judge", out, "--judge-model", url, "--no-progress", HF_HUB_OFFLINE="0", **plugin)
    assert judged.returncode == 0, judged.stderr
    assert sum(manifest(out)["judge"]["configs"]["concise"]["counts"].values()) == 2  # both its pairs, judged
    judged_card = (out / "README.md").read_text()
    assert judged_card.split("| `concise` |")[-1].split("\n")[0].endswith("| 70.0% |")  # the figure it declares
    shown = run_offline(POPALIGN, "show", out, "concise", **plugin)
    assert shown.returncode == 0 and "Tides follow the moon." in shown.stdout
    assert "concise" not in run_offline(POPALIGN, "strategies").stdout  # the plugin is this environment's alone


def _registry(folder: Path, monkeypatch: pytest.MonkeyPatch, point: str) -> StrategyRegistry:
    """A registry of a group of its own, read from a distribution in `folder` that names `point`."""
    group = f"popalign.test_{folder.name}"
    info = folder / "fake_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{point}\n")
    monkeypatch.syspath_prepend(str(folder))
    return StrategyRegistry(group)


BAD_PLUGINS = [
    ("broken = no_such_module_here:THING", "strategy plugin 'broken' (no_such_module_here:THING): cannot load "
     "(ModuleNotFoundError: No module named 'no_such_module_here')"),
    ("notone = popalign.contrasts:PAPER", "strategy plugin 'notone' (popalign.contrasts:PAPER): expected a "
     "popalign.contrasts.Strategy, got tuple"),
    ("renamed = popalign.strategies:PREFIX", "strategy plugin 'renamed' (popalign.strategies:PREFIX): its name "
     "'prefix' differs from the entry point's"),
]  # fmt: skip


@pytest.mark.parametrize(("point", "line"), BAD_PLUGINS, ids=["unloadable", "not-a-strategy", "misnamed"])
def test_a_bad_plugin_is_refused_in_one_line_naming_its_entry_point(
    point: str, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as refused:
        dict(_registry(tmp_path / "plugin", monkeypatch, point))
    assert str(refused.value) == line


def test_a_plugin_that_redefines_a_common_drop_reason_or_clashes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "clashing.py").write_text(
        "from popalign.strategies import PREFIX\nfrom dataclasses import replace\n"
        "LOUD = replace(PREFIX, name='loud', drop_reasons={'empty': 'mine'})\n"
        "ODD = replace(PREFIX, name='odd', kind='vibes')\n"
    )
    with pytest.raises(ConfigError, match=r"'loud' .*: it redefines a common drop reason"):
        dict(_registry(tmp_path / "loud", monkeypatch, "loud = clashing:LOUD"))
    with pytest.raises(ConfigError, match=r"'odd' .*: kind 'vibes' is not one of prompt, model, pipeline, sampling"):
        dict(_registry(tmp_path / "odd", monkeypatch, "odd = clashing:ODD"))


def test_popalign_registers_its_own_strategies_through_the_entry_points() -> None:
    assert list(STRATEGIES)[:6] == ["prefix", "demon", "elicitive", "nparam", "leaderboard", "refine"]
    assert {"bestofn", "temperature", "teacher"} <= set(STRATEGIES)
    assert all(isinstance(strategy, Strategy) and STRATEGIES.package(n) == "popalign" for n, strategy in
               STRATEGIES.items() if n in ("prefix", "bestofn"))  # fmt: skip
    assert STRATEGIES.roles()[-2:] == ("ranker", "teacher") and "ranker" in STRATEGIES.helper_roles()


@pytest.mark.slow
def test_a_plugin_strategy_answers_a_conversation_in_its_context(scripted, plugin: dict[str, str], tmp_path) -> None:
    """A plugin's run gets the conversation (`Instruction.asking`): its requests carry the earlier turns, and its
    rows the whole conversation."""
    url, log = scripted
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Why do tides happen?"}]  # fmt: skip
    prompts = tmp_path / "chats.jsonl"
    prompts.write_text(json.dumps({"messages": chat}) + "\n")
    result = run_offline(POPALIGN, "build", "--prompts", prompts, "--strategies", "concise",
                         "--model", f"default={url}", "--out", tmp_path / "out", "--no-cache", "--no-progress",
                         HF_HUB_OFFLINE="0", **plugin)  # fmt: skip
    assert result.returncode == 0, result.stderr
    asked = [json.loads(line)["messages"] for line in log.read_text().splitlines()]
    assert len(asked) == 2 and all(messages[:3] == chat[:3] for messages in asked), asked
    assert sorted(messages[3]["content"].split()[0] for messages in asked) == ["CONCISE-PADDED", "CONCISE-SHORT"]
    assert load(tmp_path / "out", "concise")["prompt"] == [chat]


def test_a_plugin_declares_the_prompts_its_rows_are_scored_under(monkeypatch: pytest.MonkeyPatch) -> None:
    """DLMA scores a plugin's rows under the prompt pair its `Strategy` declares (`scoring`), not the score
    contrast's; a strategy that declares none is scored under the contrast's (`prefix`)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugin"))
    from concise_contrast import CONCISE

    from popalign import scoring
    from popalign.templates import TemplateSet

    monkeypatch.setattr(STRATEGIES, "_strategies", {**STRATEGIES, "concise": CONCISE})  # as if it were installed
    context = StrategyContext(TemplateSet(None))
    row = {"strategy": "concise", "prompt": [{"role": "user", "content": "Why tides?"}]}
    positive, negative = scoring.contrast_chats(row, context, "prefix")
    assert positive[-1]["content"].startswith("CONCISE-SHORT") and negative[-1]["content"].startswith("CONCISE-PADDED")
    unscored = scoring.contrast_chats({**row, "strategy": "nparam"}, context, "prefix")
    assert unscored == scoring.contrast_chats({**row, "strategy": "prefix"}, context, "prefix")
