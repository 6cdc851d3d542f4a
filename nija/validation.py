"""Pydantic's validation errors in plain words, with the fix: shared by every file NIJA reads (follower files, the
embedded exchange's accounts file)."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["plain_fix"]


def plain_fix(error: dict, model: type[BaseModel]) -> str:
    """What is wrong with one field of a `model` document, and how to fix it."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown field: remove it or fix its spelling (known: {', '.join(model.model_fields)})"
    if kind == "missing":
        return 'is required: add it, e.g. "name": "alice"'
    text = str(error["msg"]).removeprefix("Value error, ")  # pydantic's wrapping of our own validators' messages
    # Our own validators already say the fix; pydantic's own checks get the value and a nudge.
    return text if kind == "value_error" else f"{text} (got {error.get('input')!r}): correct the value"
