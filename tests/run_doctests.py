"""Run the docstring examples of every popalign module, in a process of their own so that the Hub they push to
is the test server (`HF_ENDPOINT` is read when huggingface_hub is imported). The names the examples use come
as JSON on the command line (`TINY_MODEL` is made here, where torch is imported anyway); one JSON line reports
the examples tried and failed.

    HF_ENDPOINT=http://127.0.0.1:PORT python tests/run_doctests.py '{"EXAMPLE": "...", "SERVER": "...", ...}'
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import pkgutil
import sys
from pathlib import Path

import popalign
from helpers import save_tiny_model

if __name__ == "__main__":
    names = json.loads(sys.argv[1])
    save_tiny_model(Path(names["TINY_MODEL"]))
    tried = failed = 0
    for info in pkgutil.iter_modules(popalign.__path__, "popalign."):
        module = importlib.import_module(info.name)
        result = doctest.testmod(module, extraglobs={"popalign": popalign, **names}, optionflags=doctest.ELLIPSIS)
        tried, failed = tried + result.attempted, failed + result.failed
    # every submodule is imported now: none of them may shadow a function of the API
    shadowed = [
        name
        for name in ("build", "estimate", "evaluate", "score", "judge", "merge", "push", "versions", "open_build")
        if not inspect.isfunction(getattr(popalign, name))
    ]
    print(json.dumps({"tried": tried, "failed": failed, "shadowed": shadowed}))
