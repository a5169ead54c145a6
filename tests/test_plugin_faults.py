"""A plugin's code is contained: one that exits at import, raises in its run, yields or returns what a strategy may
not, asks for more requests than it declares, or declares its fields with the wrong types is refused in one line
naming it, through the command line, a recipe and the Python API; one that loops forever stops at Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import POPALIGN, prompts, run_offline

HEADER = """
from dataclasses import replace
from pathlib import Path
from popalign.contrasts import Dropped, Pair
from popalign.generation import Request, user
from popalign.strategies import PREFIX

def ask(text):
    return Request("default", (user(text),))
"""

#: name: (the plugin module's code after `HEADER`, what the one line says after the plugin's name)
FAULTS = {
    "raising": ("def run(instruction, ctx):\n    yield [ask('a'), ask('b')]\n    raise RuntimeError('boom')\n"
                "PLUGIN = replace(PREFIX, name='raising', run=run)",
                "its run failed (RuntimeError: boom)"),
    "calling": ("def run(instruction, ctx):\n    raise ValueError('not a generator at all')\n"
                "PLUGIN = replace(PREFIX, name='calling', run=run)",
                "its run failed (ValueError: not a generator at all)"),
    "exiting": ("import sys\ndef run(instruction, ctx):\n    sys.exit(4)\n    yield []\n"
                "PLUGIN = replace(PREFIX, name='exiting', run=run)",
                "its run failed (SystemExit: 4)"),
    "texts": ("def run(instruction, ctx):\n    yield ['not a request']\n"
              "PLUGIN = replace(PREFIX, name='texts', run=run)",
              "yielded 'not a request', not a Request"),
    "returning": ("def run(instruction, ctx):\n    yield [ask('a')]\n    return 'done'\n"
                  "PLUGIN = replace(PREFIX, name='returning', run=run)",
                  "returned 'done', not a Pair of texts or a Dropped"),
    "numbers": ("def run(instruction, ctx):\n    yield [ask('a'), ask('b')]\n"
                "    return Pair(1, 2, 'default', 'default')\n"
                "PLUGIN = replace(PREFIX, name='numbers', run=run)",
                "returned Pair(chosen=1, rejected=2"),
    "endless": ("def run(instruction, ctx):\n    n = 0\n    while True:\n"
                "        n += 1\n        yield [ask(f'again {n}')]\n"
                "PLUGIN = replace(PREFIX, name='endless', run=run, requests=2)",
                "asked for 3 requests for one instruction; it declares at most 2"),
}  # fmt: skip

DECLARATIONS = {
    "wordy": ("PLUGIN = replace(PREFIX, name='wordy', requests='many')", "its requests 'many' is not a whole number"),
    "stringy": ("PLUGIN = replace(PREFIX, name='stringy', run='a string')", "its run 'a string' is not a function"),
    "rolelist": ("PLUGIN = replace(PREFIX, name='rolelist', roles='default')", "its roles 'default' is not a tuple"),
    "exit": ("import sys\nsys.exit(3)", "cannot load (SystemExit: 3)"),
}


def install(folder: Path, name: str, code: str) -> dict[str, str]:
    """A plugin `name` (its module and a dist-info naming its entry point) in `folder`: the environment that sees it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_plugin.py").write_text(HEADER + code + "\n")
    info = folder / f"{name}_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[popalign.strategies]\n{name} = {name}_plugin:PLUGIN\n")
    return {"PYTHONPATH": str(folder)}


@pytest.mark.slow
def test_a_failing_plugin_run_is_one_line_naming_it(scripted, tmp_path: Path) -> None:
    url = scripted[0]
    for name, (code, says) in FAULTS.items():
        env = install(tmp_path / name, name, code)
        source = prompts(tmp_path, ["a"])
        line = f"popalign: error: strategy {name!r} (from {name}-plugin): {says}"
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(json.dumps({"strategies": [name], "roles": {"default": url}, "prompts": str(source)}))
        api = (
            "import popalign\ntry:\n    popalign.build({!r}, strategies=[{!r}], roles={{'default': {!r}}}, "
            "out={!r}, cache=False, progress=False)\nexcept popalign.StrategyError as err:\n    print(err)\n"
        )
        for command in ([POPALIGN, "build", "--prompts", source, "--strategies", name, "--model", f"default={url}"],
                        [POPALIGN, "build", "--recipe", recipe]):  # fmt: skip
            result = run_offline(*command, "--out", tmp_path / f"{name}-d", "--no-cache", "--no-progress",
                                 HF_HUB_OFFLINE="0", **env)  # fmt: skip
            assert result.returncode == 2, (name, result.stderr)
            assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, (name, result.stderr)
        code = api.format(str(source), name, url, str(tmp_path / f"{name}-api"))
        called = run_offline(sys.executable, "-c", code, HF_HUB_OFFLINE="0", **env)
        assert called.stdout.startswith(line.removeprefix("popalign: error: ")), (name, called.stderr[-500:])
        assert not (tmp_path / f"{name}-d").exists()


@pytest.mark.parametrize("name", DECLARATIONS)
@pytest.mark.slow
def test_a_badly_declared_plugin_is_refused_when_it_registers(name: str, tmp_path: Path) -> None:
    code, says = DECLARATIONS[name]
    result = run_offline(POPALIGN, "strategies", **install(tmp_path, name, code))
    assert result.returncode == 2
    assert result.stderr.startswith(f"popalign: error: strategy plugin {name!r} ({name}_plugin:PLUGIN): {says}")
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_ctrl_c_stops_a_plugin_that_loops_forever(scripted, tmp_path: Path) -> None:
    marker = tmp_path / "looping"
    code = (f"def run(instruction, ctx):\n    Path({str(marker)!r}).touch()\n    while True:\n        pass\n"
            "    yield []\nPLUGIN = replace(PREFIX, name='spinning', run=run)")  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "0", **install(tmp_path / "spinning", "spinning", code)}
    command = [POPALIGN, "build", "--prompts", prompts(tmp_path, ["a"]), "--strategies", "spinning", "--model",
               f"default={scripted[0]}", "--out", tmp_path / "d", "--no-cache", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(list(map(str, command)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), process.communicate()
    process.send_signal(signal.SIGINT)  # once, as a user presses Ctrl-C
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().endswith(
        "popalign: interrupted; finished answers are cached: rerun the same command to resume"
    )
