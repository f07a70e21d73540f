"""Cassettes: recorded upstream responses keyed by :func:`request_hash`, for record/replay of real
LM traffic (``stepbridge lm serve --cassette FILE [--record --upstream URL]``)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["VOLATILE_FIELDS", "Cassette", "CassetteMiss", "request_hash"]

#: Request-body fields that do not change what an LM answers; left out of the cassette hash.
VOLATILE_FIELDS = frozenset(
    {"stream", "stream_options", "user", "metadata", "timeout", "request_timeout", "num_retries",
     "extra_headers", "headers", "api_key", "api_base", "base_url", "rollout_id", "store"}
)


def request_hash(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a request body without :data:`VOLATILE_FIELDS` (the cassette key)."""
    stable = {k: v for k, v in body.items() if k not in VOLATILE_FIELDS}
    canonical = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class CassetteMiss(LookupError):
    """A replayed request has no recorded response."""

    def __init__(self, key: str, path: Path):
        super().__init__(f"cassette miss: no recorded response for request hash {key} in {path}")
        self.key = key
        self.path = path


class Cassette:
    """Recorded responses keyed by :func:`request_hash`, stored as JSONL (one ``{hash, request, response}``
    object per line; appending keeps recording crash-safe and diffs readable; the last line for a
    hash wins)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._responses: dict[str, Any] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        self._responses[str(rec["hash"])] = rec["response"]
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ValueError(f"{self.path}:{lineno}: not a cassette record ({exc})") from exc

    def __len__(self) -> int:
        return len(self._responses)

    def __contains__(self, key: object) -> bool:
        return key in self._responses

    def get(self, key: str) -> Any:
        try:
            return self._responses[key]
        except KeyError:
            raise CassetteMiss(key, self.path) from None

    def record(self, key: str, request: Any, response: Any) -> None:
        with self._lock:
            self._responses[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"hash": key, "request": request, "response": response},
                                    ensure_ascii=False, sort_keys=True) + "\n")
