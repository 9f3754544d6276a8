"""Create the project's virtual environment and install usvl into it (``make install``).

Usage: ``python3 scripts/install_venv.py VENV [--extras dev] [--installer uv|pip] [--bytecode all|lazy]``

The default installer is uv (``uv pip install``), put into the venv by pip first: it installs the ~6 GB torch
stack with bytecode compiled in about a third of pip's time (BENCHMARKS.md, "make demo on a fresh clone"). It resolves
the same versions as ``pip install -e ".[dev]"`` because it is given pip's own settings: the index, extra indexes,
find-links, constraints and certificate from ``pip config list`` (files and ``PIP_*`` variables), and it picks the
best version across all indexes as pip does. ``--installer pip`` (or ``USVL_INSTALLER=pip``) installs with pip
alone; when uv cannot be installed, the script says so and uses pip. Only the standard library is used: this runs
before the venv exists.

``--bytecode all`` (the default, ``make install`` and the test targets) byte-compiles the modules this install adds,
about 19,000 files in a new venv; ``--bytecode lazy`` (``make demo``, ``make reproduce``) compiles none and leaves it
to the first import of each module, which writes its ``.pyc`` (the Makefile un-exports ``PYTHONDONTWRITEBYTECODE`` so
that it can): a training run imports about 4,600 of them, so a first run spends about 14 CPU-seconds compiling
instead of the install's 70 (BENCHMARKS.md, "make demo on a fresh clone"). uv compiles only the packages it installs,
so after a lazy install a later ``--bytecode all`` compiles the dev extras, and the rest still compiles on first
import.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

# Scopes of ``pip config list`` lines, highest precedence first (a variable overrides every file).
SCOPES = (":env:", "site.", "user.", "global.")
# pip setting -> uv option; each value may hold several entries separated by white space.
PIP_TO_UV_OPTIONS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def pip_settings(pip: Path) -> dict[str, list[str]]:
    """Read pip's effective settings (config files and ``PIP_*`` variables) with ``pip config list``.

    Args:
        pip: The pip executable to ask.

    Returns:
        Setting name (without its scope, e.g. ``extra-index-url``) -> its entries, in pip's order of precedence
        (environment variables first).
    """
    listing = subprocess.run([str(pip), "config", "list"], capture_output=True, text=True, check=True).stdout
    settings: dict[str, list[str]] = {}
    for line in sorted(listing.splitlines(), key=_precedence):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        name = key.rsplit(".", 1)[-1]
        if name in settings:  # already set by a scope of higher precedence
            continue
        settings[name] = shlex.split(value.strip().strip("'\""))
    return settings


def _precedence(line: str) -> int:
    """Pip's precedence of the scope a ``pip config list`` line comes from: variables, then site, user, global."""
    for rank, scope in enumerate(SCOPES):
        if line.startswith(scope):
            return rank
    return len(SCOPES)


def uv_arguments(settings: dict[str, list[str]]) -> list[str]:
    """Turn pip's settings into ``uv pip install`` options that resolve the same way.

    Args:
        settings: Output of :func:`pip_settings`.

    Returns:
        uv options: pip's indexes, find-links and constraints, and pip's best-match rule across indexes.
    """
    options = ["--index-strategy", "unsafe-best-match"]
    for name, option in PIP_TO_UV_OPTIONS.items():
        for entry in settings.get(name, []):
            options += [option, entry]
    return options


def install_with_uv(venv: Path, requirement: str, compile_bytecode: bool = True) -> bool:
    """Install ``requirement`` (editable) with uv, byte-compiling every module or none; False without uv."""
    pip, uv = venv / "bin" / "pip", venv / "bin" / "uv"
    if not uv.exists():
        got_uv = subprocess.run([str(pip), "install", "--quiet", "uv"], capture_output=True, text=True)
        if got_uv.returncode != 0:
            reason = (got_uv.stderr.strip().splitlines() or ["no message"])[-1]
            print(f"install_venv: could not install uv ({reason}); "
                  "installing with pip instead (about 2.5 minutes)", file=sys.stderr)
            return False
    settings = pip_settings(pip)
    env = dict(os.environ)
    if settings.get("cert") and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = settings["cert"][0]
    command = [str(uv), "pip", "install", "--python", str(venv / "bin" / "python"),
               *(["--compile-bytecode"] if compile_bytecode else []), *uv_arguments(settings), "-e", requirement]
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True, env=env)
    return True


def install_with_pip(venv: Path, requirement: str, compile_bytecode: bool = True) -> None:
    """Install ``requirement`` (editable) with pip, which reads its own settings."""
    pip = str(venv / "bin" / "pip")
    subprocess.run([pip, "install", "--quiet", "--upgrade", "pip"], check=True)
    command = [pip, "install", *([] if compile_bytecode else ["--no-compile"]), "-e", requirement]
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    """Create the venv when missing and install the project into it; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("venv", type=Path, help="virtual environment folder (created when missing)")
    parser.add_argument("--extras", default="dev", help="comma-separated extras of usvl to install (default: dev)")
    parser.add_argument("--installer", choices=("uv", "pip"), default=os.environ.get("USVL_INSTALLER", "uv"),
                        help="uv (default) or pip; also USVL_INSTALLER")
    parser.add_argument("--bytecode", choices=("all", "lazy"), default="all",
                        help="byte-compile every installed module now (default), or none: each on its first import")
    options = parser.parse_args(argv)
    start = time.perf_counter()
    if not (options.venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(options.venv)], check=True)
    requirement = f".[{options.extras}]" if options.extras else "."
    compile_bytecode = options.bytecode == "all"
    try:
        if options.installer == "pip" or not install_with_uv(options.venv, requirement, compile_bytecode):
            install_with_pip(options.venv, requirement, compile_bytecode)
    except subprocess.CalledProcessError as error:
        print(f"install_venv: `{shlex.join(str(part) for part in error.cmd)}` failed with exit status "
              f"{error.returncode} (its output is above). USVL_INSTALLER=pip tries pip alone; delete "
              f"{options.venv} to start over.", file=sys.stderr)
        return error.returncode or 1
    lazily = "" if compile_bytecode else " (bytecode compiled on first import)"
    print(f"install_venv: {requirement} installed into {options.venv}{lazily} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
