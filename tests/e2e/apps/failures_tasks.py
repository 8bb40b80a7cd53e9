"""The failing tasks of ``failures_app`` (a module of their own: its file is watched)."""

from __future__ import annotations

import asyncio


class Ghost:
    """An ORM row after its session closed: any attribute access, repr included, raises."""

    def __repr__(self) -> str:
        raise RuntimeError("DetachedInstanceError: session is closed")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str failed")


def fail_with_ghost(row: Ghost) -> None:
    raise ValueError("row update failed")


async def fail_unprintably() -> None:
    await asyncio.sleep(0)
    raise Unprintable


async def fail_in_the_renderer() -> None:
    await asyncio.sleep(0)
    raise ValueError("renderer victim")
