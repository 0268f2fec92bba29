"""Where the request path spends its time: a py-spy flame graph of the gateway under wrk load.

    .venv/bin/python scripts/profile.py                    # the full pipeline, embedded, 20 s
    .venv/bin/python scripts/profile.py --route open       # auth: none
    .venv/bin/python scripts/profile.py --variant production --seconds 30

It starts what ``scripts/bench.py`` starts (nginx as the upstream, one gateway worker with the
benchmark's config and key, pinned to core 0; wrk on core 1), runs wrk at ``--connections``
against ``--route`` and records the gateway with ``py-spy record`` (native frames off, idle
frames off) at 1 000 samples per second. It writes ``profile-out/<route>.svg`` (the flame
graph), ``profile-out/<route>.txt`` (the collapsed stacks) and prints the ten functions with the
most samples of their own (self time) and the ten with the most in total (self and callees,
below the event loop), as the README's Benchmark section shows them. A sample is wall time
the process was not idle: a line that makes a system call (a socket write) holds the time the
kernel spent, and with the upstream on the same core, the time it ran meanwhile.

py-spy is installed into the running venv when missing. Exit code 2 when something failed to
start.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # scripts/bench.py: the same servers, config and key

OUT = bench.REPO / "profile-out"


def ensure_py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return found


def frame_name(frame: str) -> str:
    """``function (path/to/file.py:line)`` as ``function (file.py)``: one name per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})" if where else name


def top_frames(collapsed: Path, count: int = 10) -> tuple[list[tuple[str, float]],
                                                         list[tuple[str, float]]]:
    """The ``count`` functions with the most self samples and the most total samples, as
    percentages of all samples (a function on a stack twice is counted once for total)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        hits = int(number)
        samples += hits
        frames = [frame_name(f) for f in stack.split(";")]
        own[frames[-1]] += hits
        for frame in set(frames):
            total[frame] += hits

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100 * hits / max(1, samples)) for name, hits in counter.most_common(count)]

    # the start-up chain (runpy, the CLI, the event loop's run) is on every stack it is on:
    # leave out what holds as many samples as the loop itself
    loop = max((hits for name, hits in total.items() if name.startswith("Runner.run")),
               default=0)
    for name in [name for name, hits in total.items() if hits >= loop]:
        del total[name]
    return share(own), share(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", choices=("full", "open"), default="full")
    parser.add_argument("--variant", choices=sorted(bench.VARIANTS), default="embedded")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    py_spy = ensure_py_spy()
    nginx, wrk = bench.ensure_tools()
    pin = bench.choose_pinning(True)
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gw-profile-") as tmp:
        workdir = Path(tmp)
        ports = bench.Ports(*bench.free_ports(4))
        started: list[subprocess.Popen[bytes]] = []
        backends = bench.VARIANTS[args.variant](workdir)
        try:
            config = workdir / "gateway.yaml"
            config.write_text(yaml.safe_dump(bench.gateway_config(ports, backends),
                                             sort_keys=False))
            bench.start_nginx(nginx, workdir, ports, pin, started)
            key = bench.create_key(config)
            bench.start_gateway(config, ports, pin, workdir / "logs" / "gateway.log", started)
            gateway_pid = started[-1].pid
            path, headers = ("/api/ping", ["-H", f"Authorization: Bearer {key}"]) \
                if args.route == "full" else ("/open/ping", [])
            url = f"http://{bench.HOST}:{ports.gateway}{path}"
            load = subprocess.Popen(
                [*pin.client, wrk, "-t1", f"-c{args.connections}", f"-d{args.seconds + 4}s",
                 *headers, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            svg, collapsed = OUT / f"{args.route}.svg", OUT / f"{args.route}.txt"
            for output, form in ((collapsed, "raw"), (svg, "flamegraph")):
                subprocess.run(
                    [py_spy, "record", "--pid", str(_python_pid(gateway_pid)), "--rate", "1000",
                     "--duration", str(args.seconds // 2), "--format", form, "--output",
                     str(output), "--nonblocking"],
                    check=True, capture_output=True)
            print(load.communicate()[0].decode().strip().splitlines()[-2])  # Requests/sec
        finally:
            for process in reversed(started):
                bench.stop(process)
            if backends.cleanup is not None:
                backends.cleanup()
    own, total = top_frames(collapsed)
    print(f"\n{svg} ({args.route}, {args.variant})\n\n| self % | function |\n|---|---|")
    for name, percent in own:
        print(f"| {percent:.1f} | `{name}` |")
    print("\n| total % | function |\n|---|---|")
    for name, percent in total:
        print(f"| {percent:.1f} | `{name}` |")
    return 0


def _python_pid(pid: int) -> int:
    """The gateway process: ``taskset`` execs it, so its pid is the one started."""
    return pid


if __name__ == "__main__":
    sys.exit(main())
