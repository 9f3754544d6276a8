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


@pytest.fixture
def recording_venv(tmp_path, fake_pip):
    """A venv folder whose pip answers ``config list`` and whose uv and pip record the arguments they get."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.txt"
    for name in ("uv", "pip"):
        tool = bin_dir / name
        answer = f"[ \"$1 $2\" = 'config list' ] && exec {fake_pip} \"$@\"\n" if name == "pip" else ""
        tool.write_text(f"#!/bin/sh\n{answer}echo {name} \"$@\" >> {log}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return tmp_path / "venv", log


@pytest.mark.parametrize("compile_bytecode", [True, False])
def test_uv_compiles_bytecode_only_when_asked(recording_venv, compile_bytecode):
    venv, log = recording_venv
    assert install_venv.install_with_uv(venv, ".", compile_bytecode=compile_bytecode)
    (call,) = log.read_text().splitlines()
    assert call.startswith("uv pip install ") and call.endswith("-e .")
    assert ("--compile-bytecode" in call.split()) is compile_bytecode


@pytest.mark.parametrize("compile_bytecode", [True, False])
def test_pip_skips_compiling_only_when_asked(recording_venv, compile_bytecode):
    venv, log = recording_venv
    install_venv.install_with_pip(venv, ".[dev]", compile_bytecode=compile_bytecode)
    install = log.read_text().splitlines()[-1]
    assert install.startswith("pip install ") and install.endswith("-e .[dev]")
    assert ("--no-compile" in install.split()) is not compile_bytecode


def test_lazy_bytecode_reaches_the_installer(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()
    seen = []

    def fake_uv(venv, requirement, compile_bytecode):
        seen.append((requirement, compile_bytecode))
        return True

    monkeypatch.setattr(install_venv, "install_with_uv", fake_uv)
    assert install_venv.main([str(tmp_path), "--extras", "", "--bytecode", "lazy"]) == 0
    assert install_venv.main([str(tmp_path)]) == 0
    assert seen == [(".", False), (".[dev]", True)]
