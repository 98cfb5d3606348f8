"""The README's configuration table is the settings model, neither more nor less."""

from __future__ import annotations

import re
from pathlib import Path

from usage_ingest.settings import ENV_PREFIX, Settings, settings_reference

README = (Path(__file__).parents[2] / "README.md").read_text()


def documented_settings() -> set[str]:
    rows = re.findall(r"^\| `(USAGE_INGEST_[A-Z0-9_]+)` \| `(--[a-z0-9-]+)` \|", README, re.M)
    return {f"{env} {flag}" for env, flag in rows}


def test_every_setting_is_documented_with_its_flag() -> None:
    expected = {
        f"{ENV_PREFIX}{name.upper()} --{name.replace('_', '-')}" for name in Settings.model_fields
    }
    assert documented_settings() == expected


def readme_configuration_table() -> str:
    """The table under "## Configuration", header included, up to its last row."""
    section = README.split("\n## Configuration\n", 1)[1]
    rows = section[section.index("| variable | flag | default | meaning |") :].splitlines()
    table = []
    for row in rows:
        if not row.startswith("|"):
            break
        table.append(row)
    return "\n".join(table) + "\n"


def test_the_configuration_table_is_generated_from_the_settings_model() -> None:
    # On a difference: replace README's table with the output of `usage-ingest settings`.
    assert readme_configuration_table() == settings_reference()


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join(README.splitlines()[:10])
    assert "make run" in head
    assert "make test" in head
