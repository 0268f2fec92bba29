"""CPU instructions per request, counted by valgrind (callgrind): a cost that does not move with
whatever else the machine is doing, for comparing commits on a shared or noisy machine.

    .venv/bin/python scripts/instructions.py                      # this checkout
    .venv/bin/python scripts/instructions.py --requests 1000 --repo ../other-checkout

It starts the demo echo upstream and ``gateway serve`` (one worker, SQLite, in-process limiter,
the benchmark's routes and plan) under ``valgrind --tool=callgrind``, warms both routes up, then
for each route zeroes the counters, sends ``--requests`` requests one after another on one
keep-alive connection, and dumps the counters: the instructions the gateway process executed
for exactly those requests (parsing, the pipeline, forwarding, the event loop), divided by the
count. ``open`` is the ``auth: none`` route, ``limited`` the same with a ``rate_limit`` per
client address; ``api`` is the full pipeline with a key. ``--credits`` adds ``credits``: the
same with a key that has credits (README "Credits"; a checkout that has them).

Instruction counts are not time (cache misses and branch mispredictions do not show), so use
them for A/B comparisons of the same code path, beside ``scripts/bench.py``'s req/s.
Exit code 2 when something failed to start.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def config(upstream: int, port: int, admin: int, directory: Path) -> dict[str, object]:
    target = f"http://{HOST}:{upstream}"
    return {
        "listen": f"{HOST}:{port}",
        "admin_listen": f"{HOST}:{admin}",
        "database": f"sqlite:///{directory}/gateway.db",
        "logging": {"access_log": False},
        "defaults": {"rate_limit": {"requests": 100_000_000, "window": 60},
                     "max_concurrent": 1_000_000},
        "routes": [
            {"name": "open", "path": "/open/", "upstream": target, "auth": "none"},
            # an open route limited per client address (a checkout before that feature
            # accepts the limit and ignores it, so the difference is what the limit costs)
            {"name": "limited", "path": "/limited/", "upstream": target, "auth": "none",
             "rate_limit": {"requests": 100_000_000, "window": 60}},
            {"name": "api", "path": "/api/", "upstream": target, "permissions": ["read"]},
        ],
    }


def with_plan(data: dict[str, object]) -> dict[str, object]:
    """The benchmark's plan (a key budget and day/month quotas), where the checkout has plans."""
    return {**data, "default_plan": "bench", "plans": {"bench": {
        "rate_limit": {"requests": 100_000_000, "window": 60},
        "quota": {"day": 1_000_000_000, "month": 1_000_000_000}}}}


def gateway(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "-c", str(cfg), *args]


def cli(repo: Path, cfg: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONHASHSEED": "0"}  # same dict layouts
    done = subprocess.run(gateway(cfg, *args), cwd=repo, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout


def wait_http(port: int, path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"nothing answered on {HOST}:{port}{path} within {seconds:g} s")


def send(port: int, path: str, headers: dict[str, str], count: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    for _ in range(count):
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{path}: HTTP {response.status}")
    conn.close()


def counted(pid: int, directory: Path, port: int, path: str, headers: dict[str, str],
            count: int) -> float:
    """Instructions per request for ``count`` requests to ``path``."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    send(port, path, headers, count)
    before = set(directory.glob("callgrind.out*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while not (dumps := set(directory.glob("callgrind.out*")) - before):
        if time.monotonic() > deadline:
            raise SystemExit("callgrind wrote no dump")
        time.sleep(0.2)
    time.sleep(0.5)  # the dump is written by the process itself: let it finish
    text = max(dumps, key=lambda p: p.stat().st_mtime).read_text(errors="replace")
    summary = next(line for line in text.splitlines() if line.startswith("summary:"))
    return int(summary.split()[1]) / count


def serve_under_callgrind(repo: Path, cfg: Path, directory: Path, env: dict[str, str],
                          upstream: int, admin: int) -> subprocess.Popen[bytes]:
    """``gateway serve`` under callgrind, once it and the echo upstream answer (its dumps go to
    ``directory``)."""
    served = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/callgrind.out",
         *gateway(cfg, "serve")],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(upstream, "/", 60)
        wait_http(admin, "/healthz", 300)
    except BaseException:
        served.terminate()
        raise
    return served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout whose gateway is measured (default: this one)")
    parser.add_argument("--requests", type=int, default=500, help="requests per route")
    parser.add_argument("--no-plan", action="store_true", help="leave the plan out")
    parser.add_argument("--credits", action="store_true",
                        help="also measure the api route with a key that has credits")
    args = parser.parse_args()
    repo = args.repo.resolve()
    with tempfile.TemporaryDirectory(prefix="gw-instr-") as tmp:
        directory = Path(tmp)
        upstream, port, admin = free_port(), free_port(), free_port()
        data = config(upstream, port, admin, directory)
        if not args.no_plan:
            data = with_plan(data)
        cfg = directory / "gateway.yaml"
        cfg.write_text(json.dumps(data))
        env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONHASHSEED": "0"}  # same dict layouts
        echo = subprocess.Popen(
            [sys.executable, "-m", "gateway", "echo-upstream", "--listen", f"{HOST}:{upstream}"],
            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workspace = json.loads(cli(repo, cfg, "workspaces", "create", "--name", "bench"))
        key = cli(repo, cfg, "keys", "create", "--workspace", workspace["id"], "--name", "b",
                  "--permission", "read").strip().splitlines()[-1]
        paying = cli(repo, cfg, "keys", "create", "--workspace", workspace["id"], "--name", "c",
                     "--permission", "read", "--credits", "1000000000",
                     ).strip().splitlines()[-1] if args.credits else None
        served = serve_under_callgrind(repo, cfg, directory, env, upstream, admin)
        try:
            bearer = {"Authorization": f"Bearer {key}"}
            send(port, "/open/x", {}, 200)  # warm: caches, the key, code paths
            send(port, "/api/x", bearer, 200)
            send(port, "/limited/x", {}, 200)
            results = {
                "open": counted(served.pid, directory, port, "/open/x", {}, args.requests),
                "api": counted(served.pid, directory, port, "/api/x", bearer, args.requests),
                "limited": counted(served.pid, directory, port, "/limited/x", {}, args.requests),
            }
            if paying is not None:
                spender = {"Authorization": f"Bearer {paying}"}
                send(port, "/api/x", spender, 200)
                results["credits"] = counted(served.pid, directory, port, "/api/x", spender,
                                             args.requests)
        finally:
            served.terminate()
            echo.terminate()
            served.wait(timeout=120)
            echo.wait(timeout=30)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                            capture_output=True, text=True, check=False).stdout.strip()
    for route, per_request in results.items():
        print(f"{commit} {route}: {per_request:,.0f} instructions per request")
    print(f"{commit} api - open: {results['api'] - results['open']:,.0f}")
    if "credits" in results:
        print(f"{commit} credits - api: {results['credits'] - results['api']:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
