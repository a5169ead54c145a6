"""The output folder, refused in one line before any work at every entry point (command line, recipe, Python API):
a symbolic link (the swap would replace the link), a cache inside it (each build replaces it whole), and a folder
another popalign command holds (its lock)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import popalign
from helpers import POPALIGN, build, run_offline
from popalign import ConfigError, JudgeOptions, NotABuildError, ScoreOptions
from popalign.dataset.folder import claimed


def refused_everywhere(tmp_path: Path, out: Path, says: str, error: type[Exception], **settings: str) -> None:
    """`popalign build` with `out` and `settings` refused with `says`: as flags, as a recipe and in the API."""
    flags = [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", value)]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"out": str(out), **settings}))
    for command in (["--out", out, *flags], ["--recipe", recipe]):
        result = run_offline(POPALIGN, "build", "--limit", 1, *command)
        assert (result.returncode, result.stderr) == (2, f"popalign: error: {says}\n"), command
    with pytest.raises(error) as raised:
        popalign.build(out=out, limit=1, progress=False, **settings)
    assert str(raised.value) == says


@pytest.mark.slow
def test_a_symbolic_link_as_the_output_is_refused_and_kept(tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    says = f"{link}: a symbolic link (to {real}); give the folder itself as the output"
    refused_everywhere(tmp_path, link, says, NotABuildError)
    assert link.is_symlink() and list(real.iterdir()) == []


@pytest.mark.slow
def test_a_cache_inside_the_output_is_refused(tmp_path: Path) -> None:
    out, cache = tmp_path / "d", tmp_path / "d" / "cache"
    says = (
        f"cache_dir: {cache} is inside the output folder {out}, which every build, score and judge replaces "
        "whole; give a folder outside it"
    )
    refused_everywhere(tmp_path, out, says, ConfigError, cache_dir=str(cache))
    for step in (lambda: popalign.score(out, ScoreOptions(), cache_dir=cache),
                 lambda: popalign.judge(out, JudgeOptions(model="http://127.0.0.1:9"), cache_dir=cache)):  # fmt: skip
        with pytest.raises(ConfigError, match="is inside the output folder"):
            step()
    assert not out.exists()


@pytest.mark.slow
def test_a_folder_another_command_holds_is_refused(scripted, tmp_path: Path) -> None:
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix", tags=["ok", "aaa"])
    assert result.returncode == 0, result.stderr
    before = sorted((path.relative_to(out), path.read_bytes()) for path in out.rglob("*") if path.is_file())
    says = f"{out}: in use by another popalign command; wait for it to end, or give another output folder"
    commands: dict[str, Callable[[], object]] = {
        "build": lambda: popalign.build(out=out, limit=1, progress=False),
        "score": lambda: popalign.score(out, ScoreOptions(model=scripted[0]), cache=False),
        "judge": lambda: popalign.judge(out, JudgeOptions(model=scripted[0]), cache=False, progress=False),
        "merge": lambda: popalign.merge([tmp_path / "part"], out=out),
    }
    with claimed(out):  # as a running command holds it (a lock on its own open file, as another process's)
        for name, command in commands.items():
            with pytest.raises(NotABuildError) as raised:
                command()
            assert str(raised.value) == says, name
        again = build(tmp_path, scripted[0], "--strategies", "prefix", tags=["ok", "aaa"])[0]
        assert (again.returncode, again.stderr) == (2, f"popalign: error: {says}\n")
    assert sorted((path.relative_to(out), path.read_bytes()) for path in out.rglob("*") if path.is_file()) == before
    with claimed(out):  # released: it is free again, and its lock file is gone
        pass
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".d.")] == []
