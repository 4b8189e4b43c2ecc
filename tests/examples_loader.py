"""Load a file under examples/ as a fresh module (imported by the example tests)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
_names = itertools.count()


def load(relative: str, url: str | None = None) -> types.ModuleType:
    """A fresh copy of an example module; its app's claim store moved to ``url``.

    Settings are read at a task's first call, so moving the store here is
    enough to run the example against a test database.
    """
    path = EXAMPLES / relative
    name = f"example_{path.stem}_{next(_names)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if url is not None:
        module.app.conf.claim_database_url = url
    return module
