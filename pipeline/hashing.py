"""The one hash of a text: the sample space's `text_sha` column, prompt ids without a given id, and the pair
cache's keys."""

from __future__ import annotations

import hashlib


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
