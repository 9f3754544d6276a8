"""scripts/install_venv.py: uv is given pip's own settings, so both resolve the same packages."""

import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import install_venv  # noqa: E402


@pytest.fixture
def fake_pip(tmp_path):
    listing = "\n".join([
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
        "global.find-links='/opt/wheels'",
        "global.constraint='/etc/pip/constraints.txt'",
        "global.cert='/etc/ssl/ca.crt'",
        "user.find-links='/home/u/wheels'",
        ":env:.index-url='https://mirror.example/simple'",
        ":env:.constraint='/tmp/c.txt'",
    ])
    pip = tmp_path / "pip"
    pip.write_text(f"#!/bin/sh\n[ \"$1 $2\" = 'config list' ] || exit 3\ncat <<'END'\n{listing}\nEND\n")
    pip.chmod(pip.stat().st_mode | stat.S_IXUSR)
    return pip


def test_pip_settings_follow_pips_precedence(fake_pip):
    settings = install_venv.pip_settings(fake_pip)
    assert settings["extra-index-url"] == ["file:///opt/a/simple", "file:///opt/b/simple"]
    assert settings["find-links"] == ["/home/u/wheels"]  # user overrides global
    assert settings["constraint"] == ["/tmp/c.txt"]  # a PIP_ variable overrides every file
    assert settings["index-url"] == ["https://mirror.example/simple"]
    assert settings["cert"] == ["/etc/ssl/ca.crt"]


def test_uv_gets_every_index_constraint_and_pips_best_match_rule(fake_pip):
    arguments = install_venv.uv_arguments(install_venv.pip_settings(fake_pip))
    pairs = list(zip(arguments[::2], arguments[1::2], strict=True))
    assert ("--index-strategy", "unsafe-best-match") in pairs
    assert ("--index-url", "https://mirror.example/simple") in pairs
    assert [v for k, v in pairs if k == "--extra-index-url"] == ["file:///opt/a/simple", "file:///opt/b/simple"]
    assert ("--find-links", "/home/u/wheels") in pairs
    assert ("--constraint", "/tmp/c.txt") in pairs
    assert "--cert" not in arguments  # the certificate goes to uv as SSL_CERT_FILE, not as an option
