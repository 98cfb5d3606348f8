"""Waiting for a condition, with a deadline and a message saying what did not happen."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

POLL_S = 0.05


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], within_s: float, what: str
) -> None:
    """Poll `condition` until it holds; fail naming `what` after `within_s` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"not within {within_s:g} s: {what}")
        await asyncio.sleep(POLL_S)
