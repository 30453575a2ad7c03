"""Fixtures of the deploy consistency tests (see test_consistency.py)."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

import hcl_model
import rust_facts
import server_help
from deploy_paths import MODULE_DIR, REPO


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def module() -> hcl_model.Module:
    return hcl_model.load_module(MODULE_DIR)


@pytest.fixture(scope="session")
def server_bin(tmp_path_factory) -> str:
    """A private copy of the notes-server binary (NOTES_SERVER_BIN, default
    target/debug/notes-server), so a rebuild while the tests run cannot
    change it under them."""
    path = pathlib.Path(os.environ.get("NOTES_SERVER_BIN", REPO / "target" / "debug" / "notes-server"))
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        pytest.fail(
            f"{path} does not exist: build it (cargo build -p notes-server) or set NOTES_SERVER_BIN",
            pytrace=False,
        )
    copy = tmp_path_factory.mktemp("bin") / "notes-server"
    shutil.copy2(path, copy)
    return str(copy)


@pytest.fixture(scope="session")
def settings(server_bin) -> server_help.Settings:
    return server_help.serve_settings(server_bin)


@pytest.fixture(scope="session")
def sdk_ops(repo) -> frozenset[str]:
    return rust_facts.sdk_operations(repo)


@pytest.fixture(scope="session")
def actions(repo, sdk_ops) -> rust_facts.DynamoActions:
    return rust_facts.dynamodb_actions(repo / "server" / "src", sdk_ops)


@pytest.fixture(scope="session")
def auth_rs(repo) -> str:
    return (repo / "server" / "src" / "config" / "auth.rs").read_text()
