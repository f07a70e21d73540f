"""The packages whose names load on first use (stepbridge.lazy): every public name still resolves to the
object its module defines, dir() lists them, and an unknown name is an AttributeError naming the package.
Checked in a fresh process, where nothing has loaded the submodules yet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHECK = """
import importlib, json, sys
pkg = importlib.import_module(sys.argv[1])
out = {"before": sorted(m for m in sys.modules if m.startswith(sys.argv[1] + "."))}
out["resolved"] = {n: getattr(pkg, n) is getattr(importlib.import_module(f"{sys.argv[1]}.{pkg._MODULE[n]}"), n)
                   for n in pkg.__all__}
out["missing_from_dir"] = sorted(set(pkg.__all__) - set(dir(pkg)))
try:
    pkg.NoSuchName
except AttributeError as exc:
    out["unknown"] = str(exc)
from_import = {}
exec(f"from {sys.argv[1]} import *", from_import)
out["star"] = sorted(n for n in from_import if not n.startswith("__"))
print(json.dumps(out))
"""


@pytest.mark.parametrize("package", ["stepbridge.storage", "stepbridge.bridge"])
def test_every_public_name_resolves_on_first_use(package: str) -> None:
    done = subprocess.run([sys.executable, "-c", CHECK, package], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    module = __import__(package, fromlist=["__all__"])
    assert out["before"] == [], "importing the package loaded its submodules"
    assert set(out["resolved"]) == set(module.__all__)
    assert all(out["resolved"].values())  # the object its module defines
    assert out["missing_from_dir"] == []
    assert out["unknown"] == f"module {package!r} has no attribute 'NoSuchName'"
    assert out["star"] == sorted(module.__all__)
