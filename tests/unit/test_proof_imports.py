"""What the demo, the soak and their worker apps import: no test tooling they do not use.

Each module is imported in a fresh interpreter, so what other tests loaded
does not count.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

#: Test tooling no runtime module uses: the TCP proxy, the throwaway servers, the
#: pytest-celery bridge, and pytest and pytest-celery themselves.
UNUSED = {"celery_claim.testing.network", "celery_claim.testing.servers",
          "celery_claim.testing.bridge", "pytest", "pytest_celery"}
WORKER_APPS = {"celery_claim._demo_app", "celery_claim._soak_app"}


@functools.cache
def loaded_after(module: str) -> frozenset[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    return frozenset(json.loads(result.stdout))


@pytest.mark.parametrize("module", ["celery_claim.demo", "celery_claim.soak", *sorted(WORKER_APPS)])
def test_runtime_code_imports_no_test_tooling_it_does_not_use(module: str) -> None:
    loaded = loaded_after(module)
    assert module in loaded
    assert not loaded & UNUSED, sorted(loaded & UNUSED)
    if module in WORKER_APPS:  # a worker needs none of it
        assert not [m for m in loaded if m.startswith("celery_claim.testing")], module


def test_the_soak_loads_the_tooling_it_uses() -> None:
    # The check above can see a module being loaded: the soak's own tooling is.
    loaded = loaded_after("celery_claim.soak")
    assert {"celery_claim.testing.workers", "celery_claim.testing.queues"} <= loaded


def test_every_public_name_still_imports_from_celery_claim_testing() -> None:
    import celery_claim.testing as testing

    for name in testing.__all__:
        assert getattr(testing, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = testing.nothing  # type: ignore[attr-defined]
