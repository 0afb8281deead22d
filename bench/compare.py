"""Switchboard and Prosody side by side: every scenario against both, alternating, N rounds.

    python -m bench.compare [--quick] [--rounds 3] [--scenarios login,messages,...]

Provisions both servers in a temporary directory (bench/servers.py), then for each round and
each scenario starts each server afresh, runs ``python -m bench.loadgen`` against it in a
separate process and stops it; the order of the two servers alternates from round to round.
The servers (and Switchboard's Redis) are pinned to one CPU and the generator to another when
the machine has two or more. Prints a Markdown table of medians with the ratio
Switchboard/Prosody and the CPU seconds each side spent, and writes every JSON line to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import proc
from bench.servers import (
    Accounts,
    Prosody,
    Server,
    Switchboard,
    switchboard_has_muc,
    switchboard_has_presence,
)


@dataclass(frozen=True)
class Run:
    """One scenario as run by the comparison: the generator's arguments and what to show."""

    key: str
    args: tuple[str, ...]
    metrics: tuple[tuple[str, str, bool], ...]  # (field, label, higher is better)
    muc: bool = False  # the servers run with their multi-user chat service


def latency_run(
    key: str, pairs: int, rate: int, duration: str, metrics: tuple[tuple[str, str, bool], ...]
) -> Run:
    """A fixed-rate run: ``pairs`` pairs sending ``rate`` messages/s in all."""
    args = ("latency", "--pairs", str(pairs), "--rate", str(rate), "--duration", duration)
    return Run(key, (*args, "--warmup", "1", "-c", "20"), metrics)


def plan(quick: bool) -> list[Run]:
    """The scenarios and their sizes; ``quick`` is a smoke run of a minute or so."""
    if quick:
        login_n, tls_n, idle_n, pairs, dur, users = 400, 200, 500, 100, "3", 300
        rooms, occupants = 5, 10
    else:
        login_n, tls_n, idle_n, pairs, dur, users = 3000, 1000, 3000, 250, "10", 1000
        rooms, occupants = 10, 20
    return [
        Run(
            "login",
            ("login", "-n", str(login_n), "-c", "50"),
            (("logins_per_s", "logins/s", True), ("p99_ms", "login p99 ms", False)),
        ),
        Run(
            "login-tls",
            ("login", "-n", str(tls_n), "-c", "50", "--tls"),
            (("logins_per_s", "logins/s (STARTTLS)", True),),
        ),
        Run(
            "idle",
            ("idle", "-n", str(idle_n), "-c", "50"),
            (("rss_per_session_kib", "RSS KiB per idle session", False),),
        ),
        Run(
            "messages",
            ("messages", "--pairs", str(pairs), "--window", "2", "--duration", dur, "-c", "20"),
            (
                ("msgs_per_s", "messages/s", True),
                ("msgs_per_server_cpu_s", "messages per server CPU-s", True),
            ),
        ),
        latency_run(
            "latency",
            50,
            1000,
            dur,
            (
                ("p50_ms", "p50 ms at 1000 msg/s", False),
                ("p99_ms", "p99 ms at 1000 msg/s", False),
                ("server_cpu_s", "server CPU s at 1000 msg/s", False),
            ),
        ),
        latency_run(
            "latency-2x",
            50,
            2000,
            dur,
            (
                ("p99_ms", "p99 ms at 2000 msg/s", False),
                ("server_cpu_s", "server CPU s at 2000 msg/s (1000: see above)", False),
            ),
        ),
        latency_run(
            "latency-2x-sessions",
            100,
            1000,
            dur,
            (
                ("p99_ms", "p99 ms at 1000 msg/s, 200 sessions", False),
                ("server_cpu_s", "server CPU s at 1000 msg/s, 200 sessions (100: above)", False),
            ),
        ),
        Run(
            "presence",
            (
                "presence",
                "-n",
                str(users),
                "--user-prefix",
                "r",
                "--pool",
                str(users),
                "--contacts",
                "50",
                "--duration",
                "60",
            ),
            (
                ("available_per_s", "available presences/s until all seen (50 contacts)", True),
                ("presence_per_s", "presence stanzas/s, any kind (50 contacts)", True),
            ),
        ),
        Run(
            "muc",
            (
                "muc",
                "--rooms",
                str(rooms),
                "--occupants",
                str(occupants),
                "--window",
                "1",
                "--duration",
                dur,
                "-c",
                "20",
            ),
            (
                ("deliveries_per_s", f"MUC deliveries/s ({rooms} rooms of {occupants})", True),
                ("deliveries_per_server_cpu_s", "MUC deliveries per server CPU-s", True),
                ("deliveries_per_cpu_s_with_aux", "MUC deliveries per CPU-s with Redis", True),
            ),
            muc=True,
        ),
    ]


def accounts_for(runs: list[Run], quick: bool) -> Accounts:
    plain = 600 if quick else 3100
    users = next((int(r.args[2]) for r in runs if r.key == "presence"), 0)
    return Accounts(plain=plain, roster_users=users, contacts=50)


def wait_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait (at most ``limit`` seconds) until other work on the machine uses less than
    ``threshold`` of a CPU over one second; returns the seconds waited. On a shared machine
    this keeps runs from starting in the middle of someone else's burst."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        busy0 = proc.machine_busy_seconds()
        time.sleep(1.0)
        if proc.machine_busy_seconds() - busy0 < threshold:
            break
    return round(time.monotonic() - t0, 1)


def run_generator(
    server: Server, run: Run, accounts: Accounts, gen_cpus: set[int], timeout: float
) -> dict[str, Any]:
    """Start ``server`` afresh, run one scenario against it, stop it; the JSON result."""
    args = [sys.executable, "-m", "bench.loadgen", *run.args]
    if "--pool" not in run.args:
        args += ["--pool", str(accounts.plain)]
    args += ["--port", str(server.port), "--label", server.name]
    args += [f"--server-pid={name}={pid}" for name, pid in server.processes]
    args += [f"--aux-pid={name}={pid}" for name, pid in server.aux_processes]
    args += [f"--cpu={c}" for c in sorted(gen_cpus)]
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            args, cwd=root, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"scenario": run.key, "server": server.name, "failed": "generator timed out"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"scenario": run.key, "server": server.name, "failed": reason[:300]}
    result: dict[str, Any] = json.loads(lines[-1])
    result["run"] = run.key
    return result


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def limit_of(results: list[dict[str, Any]]) -> str:
    """What bounded a figure: the side whose CPU was (nearly) saturated, by median. The
    server's share counts its helpers (Redis) too: they are pinned to the same CPU."""
    srv = median(
        [
            r.get("server_cpu_pct", 0.0) + 100 * r.get("aux_cpu_s", 0.0) / r["wall_s"]
            if r.get("wall_s")
            else r.get("server_cpu_pct", 0.0)
            for r in results
        ]
    )
    gen = median([r.get("gen_cpu_pct", 0.0) for r in results])
    if srv is None or gen is None:
        return ""
    if srv >= 90:
        return f"server CPU ({srv:.0f} %)"
    if gen >= 90:
        return f"generator CPU ({gen:.0f} %)"
    return f"neither (server {srv:.0f} %, generator {gen:.0f} %)"


def table(runs: list[Run], results: list[dict[str, Any]], names: list[str]) -> str:
    """Markdown table of medians, the ratio and the CPU spent."""
    rows = [
        "| figure | Prosody | Switchboard | Switchboard/Prosody | server CPU s P / S "
        "(+Redis) | limited by P / S |",
        "|---|---:|---:|---:|---|---|",
    ]
    for run in runs:
        per = {
            n: [r for r in results if r.get("run") == run.key and r.get("server") == n]
            for n in names
        }
        for field, label, _better in run.metrics:
            med = {n: median([r[field] for r in per[n] if r.get(field) is not None]) for n in names}
            p, s = med.get("prosody"), med.get("switchboard")
            ratio = _fmt(s / p) if p and s is not None else "n/a"
            cpu_p = median([r.get("server_cpu_s", 0.0) for r in per.get("prosody", [])])
            cpu_s = median([r.get("server_cpu_s", 0.0) for r in per.get("switchboard", [])])
            aux = median([r.get("aux_cpu_s", 0.0) for r in per.get("switchboard", [])])
            cpu = f"{_fmt(cpu_p)} / {_fmt(cpu_s)}" + (f" (+{_fmt(aux)})" if aux else "")
            lim = f"{limit_of(per.get('prosody', []))} / {limit_of(per.get('switchboard', []))}"
            others = median(
                [
                    r.get("others_cpu_s", 0.0) / r["wall_s"]
                    for n in names
                    for r in per[n]
                    if r.get("wall_s")
                ]
            )
            if others is not None and others > 0.1:
                lim += f"; other load {100 * others:.0f} %"
            failed = [r["failed"] for n in names for r in per[n] if "failed" in r]
            if failed:
                lim += f"; failed: {failed[0]}"
            rows.append(f"| {label} | {_fmt(p)} | {_fmt(s)} | {ratio} | {cpu} | {lim} |")
    return "\n".join(rows)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def prosody_version() -> str:
    ctl = shutil.which("prosodyctl")
    if ctl is None:
        return "not installed"
    try:
        out = subprocess.run([ctl, "about"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.stdout.strip().splitlines()[:1]
    return first[0] if first else "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run")
    p.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --quick)")
    p.add_argument("--scenarios", default="", help="comma-separated subset of the scenarios")
    p.add_argument("--servers", default="prosody,switchboard")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for the servers")
    p.add_argument("--gen-cpu", type=int, default=1, help="CPU for the generator")
    p.add_argument(
        "--switchboard-tree", default="", help="run the core from this source tree instead"
    )
    p.add_argument(
        "--switchboard-loop",
        default="",
        choices=("", "asyncio", "uvloop"),
        help="run the core on this event loop (bench/launch_core.py)",
    )
    p.add_argument(
        "--switchboard-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the core (repeatable)",
    )
    p.add_argument("--out", default="", help="write every JSON line to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="before each run, wait up to this many seconds for the machine to be idle",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    runs = plan(a.quick)
    if a.scenarios:
        wanted = {s.strip() for s in a.scenarios.split(",")}
        unknown = wanted - {r.key for r in runs}
        if unknown:
            raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {[r.key for r in runs]}")
        runs = [r for r in runs if r.key in wanted]
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 3)
    if not 1 <= rounds <= 10:
        raise SystemExit("--rounds must be between 1 and 10")
    names = [n.strip() for n in a.servers.split(",") if n.strip()]
    two_cpus = (os.cpu_count() or 1) >= 2
    server_cpus = {a.server_cpu} if two_cpus else set()
    gen_cpus = {a.gen_cpu} if two_cpus else set()
    proc.raise_fd_limit()
    accounts = accounts_for(runs, a.quick)
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    # Prosody runs as its own user and must reach its directory below this one.
    workdir.chmod(0o755)
    servers: dict[str, Server] = {}
    results: list[dict[str, Any]] = []
    out = open(a.out, "a") if a.out else None
    started = time.monotonic()
    try:
        print(f"# machine: {machine()}", flush=True)
        print(
            f"# {prosody_version()}; servers on CPU {server_cpus or 'any'}, "
            f"generator on CPU {gen_cpus or 'any'}; work in {workdir}",
            flush=True,
        )
        for name in names:
            if name == "prosody":
                server: Server = Prosody(workdir / name)
            elif name == "switchboard":
                env = dict(kv.split("=", 1) for kv in a.switchboard_env)
                tree = Path(a.switchboard_tree) if a.switchboard_tree else None
                server = Switchboard(
                    workdir / name, extra_env=env, tree=tree, loop=a.switchboard_loop
                )
            else:
                raise SystemExit(f"unknown server {name!r}: prosody or switchboard")
            server.provision(accounts)
            servers[name] = server
        presence_ok = switchboard_has_presence()
        muc_ok = switchboard_has_muc()
        for rnd in range(rounds):
            order = names if rnd % 2 == 0 else list(reversed(names))
            for run in runs:
                for name in order:
                    server = servers[name]
                    missing = name == "switchboard" and (
                        (run.key == "presence" and not presence_ok) or (run.muc and not muc_ok)
                    )
                    if missing:
                        result = {
                            "run": run.key,
                            "server": name,
                            "failed": f"not measurable: this tree has no {run.key} support",
                        }
                    else:
                        waited = wait_quiet(a.quiet_wait) if a.quiet_wait > 0 else 0.0
                        server.start(server_cpus, muc=run.muc)
                        try:
                            result = run_generator(server, run, accounts, gen_cpus, 300)
                        finally:
                            server.stop()
                        result.setdefault("run", run.key)
                        result["quiet_wait_s"] = waited
                    result["round"] = rnd + 1
                    results.append(result)
                    line = json.dumps(result)
                    print(line, flush=True)
                    if out is not None:
                        out.write(line + "\n")
                        out.flush()
        print(f"\n# {rounds} round(s), medians, {time.monotonic() - started:.0f} s in all\n")
        print(table(runs, results, names), flush=True)
    finally:
        for server in servers.values():
            server.close()
        if out is not None:
            out.close()
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
