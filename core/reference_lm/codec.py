"""Fast JSON for request and response bodies: orjson (prompt bodies are large), plain json as fallback."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps", "loads"]

try:  # orjson is much faster for the large prompt bodies; plain json is the fallback.
    import orjson as _orjson

    def dumps(obj: Any) -> bytes:
        return _orjson.dumps(obj)

    def loads(data: bytes | str) -> Any:
        return _orjson.loads(data)
except ImportError:  # pragma: no cover - orjson ships with litellm/dspy
    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    def loads(data: bytes | str) -> Any:
        return json.loads(data)
