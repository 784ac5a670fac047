"""Every verb of the command line shows its help and exits 0; ``--version`` prints the version."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from candidfashion import __version__
from candidfashion.cli import app

runner = CliRunner()

#: The verbs the README and docs/cli.md document; a renamed or dropped verb must fail here.
EXPECTED_VERBS = {
    "serve",
    "parse",
    "search",
    "train",
    "eval",
    "export",
    "demo",
    "catalog add",
    "catalog remove",
    "catalog list",
    "catalog stats",
    "feedback export",
}


def _verbs(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    # Duck-typed: recent typer versions bundle their own click, so isinstance checks on
    # click.Group would miss its groups.
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        if hasattr(command, "commands"):
            found.extend(_verbs(command, path))
        else:
            found.append(path)
    return found


ALL_VERBS = sorted(_verbs(typer.main.get_group(app)))


def test_top_level_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Shop the look" in result.output
    for verb in ("serve", "search", "catalog", "train"):
        assert verb in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == __version__


def test_expected_verbs_exist() -> None:
    assert {" ".join(v) for v in ALL_VERBS} == EXPECTED_VERBS


@pytest.mark.parametrize("verb", ALL_VERBS, ids=" ".join)
def test_verb_help(verb: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("group", ["catalog", "feedback"])
def test_group_help(group: str) -> None:
    result = runner.invoke(app, [group, "--help"])
    assert result.exit_code == 0, result.output


def test_unknown_verb_fails() -> None:
    result = runner.invoke(app, ["fly"])
    assert result.exit_code != 0


def test_bad_log_level_is_reported() -> None:
    result = runner.invoke(app, ["--log-level", "LOUD", "catalog", "--help"])
    assert result.exit_code != 0
