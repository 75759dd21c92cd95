"""Running ``service_manager.py`` with a Python that lacks the project's libraries (the system
one, say): go on with the project's ``.venv`` interpreter, or say which one to use, instead of a
traceback. Standard library only: it runs before anything else is importable."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

NEEDED = ("orjson", "psutil", "redis")


def use_project_python(script: str) -> None:
    if all(importlib.util.find_spec(name) for name in NEEDED):
        return
    venv = Path(script).resolve().parents[2] / ".venv" / "bin" / "python"
    if venv.is_file() and Path(sys.executable).resolve() != venv.resolve():
        os.execv(str(venv), [str(venv), str(Path(script).resolve()), *sys.argv[1:]])
    print(
        f"{sys.executable} lacks the project's libraries: run ./start_microservices.sh (or "
        "python3 setup_microservices.py --full) once, then use .venv/bin/tradingctl",
        file=sys.stderr,
    )
    sys.exit(2)
