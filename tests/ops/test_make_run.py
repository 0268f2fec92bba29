"""``make run`` (README "Quick start"): the gateway starts only once the demo upstream listens;
when the upstream cannot start (its port is taken) make fails at once, and the upstream's one
line is the only thing the gateway's command says. The install step is skipped (``-o
install``) and the tests' own interpreter stands in for the virtualenv."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import free_port
from tests.gateway_process import ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")]
VENV = Path(sys.executable).parent.parent


def make_run(echo: str, config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["make", "--no-print-directory", "-o", "install", "run", f"VENV={VENV}",
         f"ECHO_LISTEN={echo}", f"CONFIG={config}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def demo_config(tmp_path: Path, echo_port: int) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{free_port()}", "admin_listen": f"127.0.0.1:{free_port()}",
        "routes": [{"name": "pub", "path": "/pub/", "upstream": f"http://127.0.0.1:{echo_port}",
                    "auth": "none"}],
    }))
    return config


def test_a_taken_upstream_port_fails_at_once_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = demo_config(tmp_path, port)
        run = make_run(f"127.0.0.1:{port}", config)
        try:
            out, err = run.communicate(timeout=30)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode != 0 and out == ""
    ours = [line for line in err.splitlines() if not line.startswith("make")]
    assert ours == [f"gateway: echo-upstream: cannot listen on 127.0.0.1:{port}: address "
                    "already in use"], err
    assert not (tmp_path / "gateway.db").exists()  # the gateway never started


async def test_the_gateway_starts_once_the_upstream_listens(tmp_path: Path) -> None:
    port = free_port()
    config = demo_config(tmp_path, port)
    listen = yaml.safe_load(config.read_text())["listen"]
    run = make_run(f"127.0.0.1:{port}", config)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://{listen}/pub/x") as response:
                        assert response.status == 200  # the echo answered through it
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("make run never served")
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        run.communicate(timeout=30)
