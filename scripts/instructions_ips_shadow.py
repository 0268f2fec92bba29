"""What IP allowlists and shadow mode add per request, in CPU instructions (callgrind), beside
``scripts/instructions.py`` (whose gateway configures neither): the same gateway, plan and
echo upstream, with

* ``api``: the plain keyed route and key, as in instructions.py (the baseline);
* ``pinned``: the same route with a key whose ``allowed_ips`` is ``[127.0.0.0/8, 10.0.0.0/8,
  2001:db8::/32]`` (README "IP allowlists");
* ``shadow_route``: a route whose ``rate_limit`` has ``shadow: true`` (README "Shadow mode");
* ``shadow_key``: the plain route with a key of ``enforcement: shadow`` and a disallowed
  allowlist, so every request is a would-be refusal (counted, logged).

    .venv/bin/python scripts/instructions_ips_shadow.py [--requests 500] [--access-log]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instructions import (
    HOST,
    cli,
    config,
    counted,
    free_port,
    send,
    serve_under_callgrind,
    with_plan,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per case")
    parser.add_argument("--access-log", action="store_true",
                        help="turn the access log on (a would-be refusal is logged there)")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="gw-instr-") as tmp:
        directory = Path(tmp)
        upstream, port, admin = free_port(), free_port(), free_port()
        data = with_plan(config(upstream, port, admin, directory))
        if args.access_log:
            data["logging"] = {"access_log": True}
        routes = data["routes"]
        assert isinstance(routes, list)
        routes.append({"name": "shadowed", "path": "/shadowed/",
                       "upstream": f"http://{HOST}:{upstream}", "permissions": ["read"],
                       "rate_limit": {"requests": 100_000_000, "window": 60, "shadow": True}})
        cfg = directory / "gateway.yaml"
        cfg.write_text(json.dumps(data))
        env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONHASHSEED": "0"}
        echo = subprocess.Popen(
            [sys.executable, "-m", "gateway", "echo-upstream", "--listen", f"{HOST}:{upstream}"],
            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workspace = json.loads(cli(repo, cfg, "workspaces", "create", "--name", "bench"))["id"]

        def key(*flags: str) -> str:
            made = cli(repo, cfg, "keys", "create", "--workspace", workspace, "--name", "b",
                       "--permission", "read", *flags)
            return made.strip().splitlines()[-1]

        keys = {"api": key(), "pinned": key("--allowed-ip", "127.0.0.0/8", "--allowed-ip",
                                            "10.0.0.0/8", "--allowed-ip", "2001:db8::/32"),
                "shadow_key": key("--enforcement", "shadow", "--allowed-ip", "10.0.0.0/8")}
        cases = {"api": ("/api/x", keys["api"]), "pinned": ("/api/x", keys["pinned"]),
                 "shadow_route": ("/shadowed/x", keys["api"]),
                 "shadow_key": ("/api/x", keys["shadow_key"])}
        served = serve_under_callgrind(repo, cfg, directory, env, upstream, admin)
        try:
            for path, plaintext in cases.values():  # warm: caches, keys, code paths
                send(port, path, {"Authorization": f"Bearer {plaintext}"}, 200)
            results = {name: counted(served.pid, directory, port, path,
                                     {"Authorization": f"Bearer {plaintext}"}, args.requests)
                       for name, (path, plaintext) in cases.items()}
        finally:
            served.terminate()
            echo.terminate()
            served.wait(timeout=120)
            echo.wait(timeout=30)
    for name, per_request in results.items():
        extra = per_request - results["api"]
        print(f"{name}: {per_request:,.0f} instructions per request ({extra:+,.0f} vs api, "
              f"{extra / 6100:+.2f} µs at 6.1k instructions/µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
