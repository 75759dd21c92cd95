"""Cold start of the whole stack to all-healthy, and the stack's memory (PSS).

    .venv/bin/python bench/stack_bench.py [--runs 3]

Each run starts the stack in a fresh TRADING_HOME with ``tradingctl start`` (the manager, its
embedded Redis and every service, in dependency order, each health-checked) and times it until the
command returns with everything healthy. The baseline, measured in the same run, starts the same
processes directly and all at once, without the manager, and waits until each answers ``health``:
the ratio is what dependency order, health gating and the manager itself cost.

Memory is the sum of PSS (proportional set size: shared pages split between the processes sharing
them) of the manager, Redis and every service, with a per-process breakdown, against a bare Python
interpreter per process.

Services whose package is not installed yet are played by stand-ins (``tests/sample_service.py``,
a minimal service on the same base), in the same dependency graph, and labelled as such.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.base.config import TradingHome  # noqa: E402
from services.base.redis_server import EmbeddedRedis, ping  # noqa: E402
from services.base.rpc import RpcClient  # noqa: E402
from services.management.catalog import DEFAULT_GRAPH, default_command, is_installed  # noqa: E402

STAND_IN = (sys.executable, str(ROOT / "tests" / "sample_service.py"))
TARGET_START_S = 3.0
TARGET_PSS_MB = 180.0


def commands() -> dict[str, tuple[tuple[str, ...], bool]]:
    """Each DESIGN service: its command, and whether it is a stand-in."""
    return {
        name: (default_command(name), False) if is_installed(name) else (STAND_IN, True)
        for name in DEFAULT_GRAPH
    }


def write_config(home: TradingHome) -> None:
    lines = ["[manager]", "default_services = false", ""]
    for name, (command, _) in commands().items():
        argv = ", ".join(orjson.dumps(part).decode() for part in command)
        depends = ", ".join(f'"{d}"' for d in DEFAULT_GRAPH[name])
        lines += [f"[manager.services.{name}]", f"command = [{argv}]", f"depends_on = [{depends}]", ""]
    home.config_file.write_text("\n".join(lines))


def environment(home: TradingHome) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING") and k != "REDIS_URL"}
    env.update(TRADING_HOME=str(home.root), PYTHONPATH=str(ROOT))
    return env


def fresh_home() -> TradingHome:
    home = TradingHome(Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp")))
    home.create()
    write_config(home)
    return home


def tradingctl(home: TradingHome, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.management", *args],
        env=environment(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stack_start(home: TradingHome) -> float:
    began = time.perf_counter()
    result = tradingctl(home, "start")
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"tradingctl start failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed


def stack_processes(home: TradingHome) -> dict[str, int]:
    status = orjson.loads(tradingctl(home, "status", "--json").stdout)
    pids = {p["name"]: p["pid"] for p in status["processes"] if p["pid"]}
    pids["manager"] = status["manager"]["pid"]
    return pids


def pss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_full_info().pss)


async def wait_healthy(home: TradingHome, names: list[str], deadline: float) -> None:
    async def one(name: str) -> None:
        while time.perf_counter() < deadline:
            try:
                async with RpcClient(home.socket_path(name), timeout=1.0, connect_attempts=1) as client:
                    if (await client.call("health"))["status"] in ("ok", "degraded"):
                        return
            except Exception:
                await asyncio.sleep(0.01)
        raise TimeoutError(name)

    await asyncio.gather(*(one(name) for name in names))


def baseline_start(home: TradingHome) -> float:
    """Redis and every service started at once, without the manager, until all answer health."""
    began = time.perf_counter()
    redis = EmbeddedRedis(home)
    redis_process = subprocess.Popen(redis.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    services = []
    for name, (command, _) in commands().items():
        env = dict(environment(home), TRADING_MANAGED_NAME=name, TRADING_SUPERVISED="1")
        services.append(
            subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    try:
        while not ping(redis.socket_path):
            time.sleep(0.005)
        asyncio.run(wait_healthy(home, list(commands()), began + 60))
        return time.perf_counter() - began
    finally:
        for process in [*services, redis_process]:
            process.terminate()
        for process in [*services, redis_process]:
            process.wait(10)


def bare_interpreter_pss() -> int:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        return pss_bytes(process.pid)
    finally:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    stand_ins = [name for name, (_, stand_in) in commands().items() if stand_in]
    if stand_ins:
        print(f"stand-ins (tests/sample_service.py) for services not installed yet: {', '.join(stand_ins)}")

    starts, baselines, memory = [], [], {}
    for run in range(args.runs):
        home = fresh_home()
        try:
            baselines.append(baseline_start(home))
            starts.append(stack_start(home))
            if run == args.runs - 1:
                time.sleep(1.0)  # let start-up allocations settle
                memory = {name: pss_bytes(pid) for name, pid in stack_processes(home).items()}
            tradingctl(home, "stop")
        finally:
            tradingctl(home, "stop")
            shutil.rmtree(home.root, ignore_errors=True)

    start, baseline = statistics.median(starts), statistics.median(baselines)
    print(f"\ncold start to all-healthy (median of {args.runs}):")
    runs = ", ".join(f"{s:.2f}" for s in starts)
    print(f"  tradingctl start        {start * 1000:8.0f} ms   (runs: {runs} s)")
    print(f"  all at once, no manager {baseline * 1000:8.0f} ms   (baseline)")
    verdict = "met" if start <= TARGET_START_S else "MISSED"
    print(f"  ratio {start / baseline:.2f}x the baseline; target <= {TARGET_START_S:g} s: {verdict}")

    bare = bare_interpreter_pss()
    total = sum(memory.values())
    print("\nmemory (PSS) of the running stack:")
    for name, size in sorted(memory.items(), key=lambda item: -item[1]):
        label = " (stand-in)" if name in stand_ins else ""
        print(f"  {name:<16} {size / 2**20:7.1f} MB{label}")
    print(f"  {'total':<16} {total / 2**20:7.1f} MB   target <= {TARGET_PSS_MB:g} MB: "
          f"{'met' if total / 2**20 <= TARGET_PSS_MB else 'MISSED'}")  # fmt: skip
    pythons = len(memory) - 1  # all but redis
    print(f"  baseline: {pythons} bare Python interpreters = {pythons * bare / 2**20:.1f} MB "
          f"({bare / 2**20:.1f} MB each); ratio {total / (pythons * bare):.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
