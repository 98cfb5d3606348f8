"""The README's configuration table is the settings model, neither more nor less."""

from __future__ import annotations

import re
from pathlib import Path

from usage_ingest.settings import ENV_PREFIX, Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def documented_settings() -> set[str]:
    rows = re.findall(r"^\| `(USAGE_INGEST_[A-Z0-9_]+)` \| `(--[a-z0-9-]+)` \|", README, re.M)
    return {f"{env} {flag}" for env, flag in rows}


def test_every_setting_is_documented_with_its_flag() -> None:
    expected = {
        f"{ENV_PREFIX}{name.upper()} --{name.replace('_', '-')}" for name in Settings.model_fields
    }
    assert documented_settings() == expected


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join(README.splitlines()[:10])
    assert "make run" in head
    assert "make test" in head
