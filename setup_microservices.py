#!/usr/bin/env python3
"""Set up and test the ASX trading services from a fresh clone.

    python3 setup_microservices.py --test          # venv, install, run the whole test suite
    python3 setup_microservices.py --full          # venv, install, directories, databases

Uses only the standard library, so it runs before anything is installed. Outside a virtualenv
it creates ``.venv`` next to this file and re-runs the work with that interpreter.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
MIN_PYTHON = (3, 11)


def in_virtualenv() -> bool:
    return sys.prefix != sys.base_prefix


def venv_python() -> Path:
    return VENV / "bin" / "python"


def python_for_project() -> str:
    """The interpreter to install into and run with: the active virtualenv, else .venv."""
    if in_virtualenv():
        return sys.executable
    if not venv_python().exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    return str(venv_python())


def run(command: list[str], **kwargs: object) -> int:
    print("+", " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT, **kwargs)  # type: ignore[arg-type]


def install_deps(python: str) -> None:
    stamp = Path(python).resolve().parent.parent / ".asx-installed"
    wanted = (ROOT / "pyproject.toml").read_bytes()
    if stamp.exists() and stamp.read_bytes() == wanted:
        print("dependencies up to date", flush=True)
        return
    quiet = ["--quiet"] if os.environ.get("CI") else []
    if run([python, "-m", "pip", "install", *quiet, "--upgrade", "pip"]) != 0:
        sys.exit("pip upgrade failed")
    if run([python, "-m", "pip", "install", *quiet, "-e", ".[dev]"]) != 0:
        sys.exit("installing the project's dependencies failed")
    stamp.write_bytes(wanted)


def project_call(python: str, code: str) -> int:
    return run([python, "-c", code])


def create_dirs(python: str) -> None:
    code = (
        "from services.base.config import load_settings\n"
        "s = load_settings(); s.home.create(); print('TRADING_HOME ready:', s.home.root)"
    )
    if project_call(python, code) != 0:
        sys.exit("creating TRADING_HOME failed")


def init_db(python: str) -> None:
    code = (
        "from services.base.config import load_settings\n"
        "from services.base.db import init_all\n"
        "s = load_settings(); s.home.create()\n"
        "versions = init_all(s.home)\n"
        "print('databases:', ', '.join(f'{k} v{v}' for k, v in versions.items()) or 'none registered yet')"
    )
    if project_call(python, code) != 0:
        sys.exit("database migrations failed")


def run_tests(python: str, pytest_args: list[str]) -> int:
    return run([python, "-m", "pytest", *pytest_args])


def main(argv: list[str] | None = None) -> int:
    if sys.version_info < MIN_PYTHON:
        sys.exit(
            f"Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed, this is {sys.version.split()[0]}"
        )
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--create-dirs", action="store_true", help="create TRADING_HOME and its directories")
    parser.add_argument(
        "--install-deps", action="store_true", help="install the project and its dependencies"
    )
    parser.add_argument("--init-db", action="store_true", help="run every registered schema migration")
    parser.add_argument("--test", action="store_true", help="install, then run the whole test suite")
    parser.add_argument("--full", action="store_true", help="install, create directories and databases")
    args, pytest_args = parser.parse_known_args(argv)
    if not any((args.create_dirs, args.install_deps, args.init_db, args.test, args.full)):
        parser.print_help()
        return 2

    python = python_for_project()
    if args.install_deps or args.test or args.full:
        install_deps(python)
    if args.create_dirs or args.full:
        create_dirs(python)
    if args.init_db or args.full:
        init_db(python)
    if args.test:
        return run_tests(python, pytest_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
