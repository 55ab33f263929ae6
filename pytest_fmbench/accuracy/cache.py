"""Judge calls cached by content in SQLite, so a rerun or a re-score makes no judge call.

The key is a SHA-256 over the judge's identity (backend, model, where it is served), the
rendered prompt and the parameters that change the answer; never timeouts, retries or
concurrency. The value is the raw reply and its usage: verdicts are re-parsed from the raw
text, so a parser fix applies to cached calls without paying again. Errors are not cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class CachedReply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None


def cache_key(identity: dict[str, Any], prompt: str, parameters: dict[str, Any]) -> str:
    canonical = json.dumps({"judge": identity, "prompt": prompt, "parameters": parameters},
                           sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class JudgeCache:
    """A SQLite file (WAL mode); safe to share between threads of one process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS judge_calls (key TEXT PRIMARY KEY, "
                         "text TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER)")
        self._db.commit()

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            row = self._db.execute("SELECT text, prompt_tokens, completion_tokens FROM "
                                   "judge_calls WHERE key = ?", (key,)).fetchone()
        return None if row is None else CachedReply(row[0], row[1], row[2])

    def put(self, key: str, reply: CachedReply) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO judge_calls VALUES (?, ?, ?, ?)",
                             (key, reply.text, reply.prompt_tokens, reply.completion_tokens))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
