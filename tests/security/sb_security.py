"""Helpers of the attack regressions (a plain module: conftest files are not importable).

The operator's key never looks like a key (``hunter2banana``): scrubbing must work from what the
operator configured, not from what keys usually look like.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent
KEY = "hunter2banana"
KEY_ENV = "SB_SECURITY_TEST_KEY"


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of pool workers and CLI processes: the test helpers importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def profile_env(base_url: str, key: str = KEY) -> dict[str, str]:
    """The operator's default LM profile as environment variables (what workers and the CLI read)."""
    return {"STEPBRIDGE_LM_BASE_URL": base_url, "STEPBRIDGE_LM_API_KEY_ENV": KEY_ENV, KEY_ENV: key,
            "STEPBRIDGE_LM_MODEL": "openai/reference"}


def plant(store: Any, data: dict[str, Any], digest: str, *, alias: str | None = None) -> None:
    """Put a program row into a store the way an attacker with database access would: a benign version
    is published, then its row rewritten to ``data`` under ``digest`` (no validation on the way in)."""
    from stepbridge import load_program
    from stepbridge.storage.programs import versions

    benign = load_program({"stepbridge": 1, "name": data.get("name", "planted"), "signature": "question -> answer",
                           "steps": [{"return": {"answer": "$inputs.question"}}]})
    store.publish(benign)
    with store.engine.begin() as conn:
        conn.execute(versions.update().where(versions.c.hash == benign.content_hash)
                     .values(hash=digest, program=data))
    if alias is not None:
        store.set_alias(data.get("name", "planted"), alias, digest)


def forged(valid: Any, module: str, **changes: Any) -> Any:
    """``valid`` with a module's fields replaced without validation (what a peer that skips
    validation, or an older stepbridge, would hold); its content hash covers the change."""
    mod = valid.modules[module].model_copy(update=changes)
    program = valid.model_copy(update={"modules": {**valid.modules, module: mod}})
    program.__dict__.pop("content_hash", None)
    program.__dict__.pop("plan_key", None)
    return program
