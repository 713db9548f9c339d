"""`make bench`: what a relay costs, beside going direct, a byte pipe and LiteLLM's proxy.

    python bench/bench.py                      # the default run (see --help), ~10 minutes
    python bench/bench.py --quick              # ~20 seconds: every path starts and is measured
    python bench/bench.py --workloads 1000x20,1000x20-faults --paths direct,intact,pipe
    python bench/bench.py --profile 15         # also py-spy the daemon for 15 s

One run, one simulated upstream (`intact simulate-upstream`, its own process), and the
paths taken in turn, round after round, on each workload: direct (client to upstream over
TCP), intact (`intact run` on its Unix socket with a config file, Prometheus exporter on),
a byte pipe (an aiohttp proxy on a Unix socket that parses nothing: the floor for a Python
relay) and LiteLLM's proxy (installed into its own virtual environment on first use). The
load comes from a separate process (bench/load.py) so that each relay's CPU, read from
/proc, is its own. See docs/benchmarks.md for what every column means.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
from load import raise_fd_limit  # noqa: E402
from paths import RelayPath, StartError, free_port, port_open, spawn, stop  # noqa: E402
from paths.direct import Direct  # noqa: E402
from paths.intact_daemon import BACKOFF, IntactDaemon  # noqa: E402
from paths.litellm_proxy import LiteLLMProxy  # noqa: E402
from paths.pipe import BytePipe  # noqa: E402
from procstat import machine, tree_cpu_seconds, tree_rss_kib  # noqa: E402
from report import DIRECT, INTACT, LITELLM, PIPE, Measured, Results, Workload  # noqa: E402

LOAD = BENCH / "load.py"
PATH_NAMES = {"direct": DIRECT, "intact": INTACT, "pipe": PIPE, "litellm": LITELLM}
ORDER = [DIRECT, INTACT, PIPE, LITELLM]
DEFAULT_WORKLOADS = "100x50,1000x20,10000x1,100x50-faults,1000x20-faults"
QUICK_WORKLOADS = "20x50,20x50-faults"
SWEEP_STREAMS = (10, 50, 100, 200, 400)
SWEEP_TOK_PER_S = 50.0
FAULT_KINDS = "reset,truncate,error_event"  # interruptions noticed the moment they strike
SIM_TTFT = 0.2
FD_SPARE = 128  # descriptors a relay needs besides its streams (listeners, logs, epoll)


class Simulator:
    """The simulated upstream, restarted on the same port for each workload's pacing."""

    def __init__(self, workdir: Path, seed: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "simulator.log"
        self.seed = seed
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, wl: Workload) -> None:
        self.stop()
        flags = f"--port {self.port} --tok-per-s {wl.tok_per_s:g} --ttft {SIM_TTFT:g}"
        flags += f" --fault-rate {wl.fault_rate:g} --kinds {FAULT_KINDS} --seed {self.seed}"
        cmd = [sys.executable, "-m", "intact", "simulate-upstream", *flags.split()]
        self._proc = spawn(cmd, self.log, lambda: port_open(self.port))

    def stop(self) -> None:
        stop(self._proc)
        self._proc = None


def run_load(
    path: RelayPath,
    wl: Workload,
    sim: Simulator,
    *,
    ramp: float,
    warmup: float,
    measure: float,
    tag: str,
    max_tokens: int | None = None,
    streams: int | None = None,
    turns: int = 0,
) -> dict[str, Any]:
    target = path.target()
    spec = {
        "url": target.url,
        "unix_socket": target.unix_socket,
        "api_key": target.api_key,
        "streams": streams or wl.streams,
        "tok_per_s": wl.tok_per_s,
        "ramp_s": ramp,
        "warmup_s": warmup,
        "measure_s": measure,
        "watch_pid": path.pid,
        "sim_pid": sim.pid,
        "max_tokens": max_tokens,
        "tag": tag,
        "faulted": wl.fault_rate > 0,
        "turns": turns,
    }
    budget = ramp + warmup + measure + 180  # the load client may wait 60 s for the streams
    proc = subprocess.run(
        [sys.executable, str(LOAD)],
        input=json.dumps(spec).encode(),
        capture_output=True,
        timeout=budget,
    )
    if proc.returncode:
        raise RuntimeError(f"load client failed: {proc.stderr.decode()[-1500:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def settle(pids: Sequence[int | None], limit: float = 60.0) -> bool:
    """Wait until the relays and the simulator are idle again (at most ``limit`` s), so one
    phase's tail (a relay still draining streams its app left) is not charged to the next.
    False if they were still busy when the limit passed."""
    deadline = time.monotonic() + limit
    live = [p for p in pids if p]
    while time.monotonic() < deadline:
        before = sum(tree_cpu_seconds(p) for p in live)
        time.sleep(0.3)
        if sum(tree_cpu_seconds(p) for p in live) - before < 0.3 * 0.05:
            return True
    return False


def phase_lengths(wl: Workload, args: argparse.Namespace) -> tuple[int, float, float, float]:
    """(rounds, ramp, warm-up, measured seconds per round) for a workload."""
    rounds = 1 if wl.streams >= 5000 else args.rounds
    ramp = max(0.2, wl.streams / args.ramp_rate)
    warmup = args.warmup
    if wl.tok_per_s < 5:
        warmup = max(warmup, 2.5 / wl.tok_per_s)  # a few chunks per stream before the window
    return rounds, ramp, warmup, args.duration / rounds


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.sim = Simulator(workdir, args.seed)
        self.paths: list[RelayPath] = []
        self.unavailable: dict[str, str] = {}
        self.rest_rss: dict[str, int] = {}
        self.results: Results = {}
        self.sweep: dict[str, list[tuple[float, float]]] = {}
        self.notes: list[str] = []
        self.profile: str = ""

    # -- paths ----------------------------------------------------------------------------

    def start_paths(self, names: Sequence[str], max_streams: int) -> None:
        makers = {
            DIRECT: Direct,
            INTACT: lambda: IntactDaemon(self.workdir, max_streams),
            PIPE: lambda: BytePipe(self.workdir),
            LITELLM: lambda: LiteLLMProxy(self.workdir),
        }
        for name in names:
            path: RelayPath = makers[name]()
            print(f"starting {name} ...", flush=True)
            try:
                path.start(self.sim.url)
            except (StartError, OSError) as exc:
                self.unavailable[name] = str(exc)
                print(f"  {name} is left out: {exc}", flush=True)
                continue
            self.paths.append(path)

    def stop_paths(self) -> None:
        for path in self.paths:
            with contextlib.suppress(Exception):
                path.stop()
        self.sim.stop()

    def restart_light_relays(self) -> None:
        """A fresh intact and byte pipe for every workload: a Python process keeps the memory
        a bigger workload made it take, so RSS before -> peak would say nothing. (LiteLLM
        takes up to a minute to start and is kept running: its RSS is not per workload.)"""
        for path in list(self.paths):
            if path.name in (INTACT, PIPE):
                path.stop()
                try:
                    path.start(self.sim.url)
                except (StartError, OSError) as exc:
                    self.drop(path, f"did not restart: {exc}")

    def paths_for(self, wl: Workload) -> list[RelayPath]:
        chosen = []
        for p in self.paths:
            if p.name == LITELLM and wl.streams > self.args.litellm_max_streams:
                continue
            chosen.append(p)
        return chosen

    def prime(self, wl: Workload) -> None:
        """A few short streams through every path after the simulator (re)started: pools
        reconnect and a path that cannot serve is left out before it is measured."""
        for path in list(self.paths):
            try:
                r = run_load(
                    path,
                    wl,
                    self.sim,
                    ramp=0.1,
                    warmup=0.0,
                    measure=30.0,
                    tag="prime",
                    max_tokens=3,
                    streams=4,
                    turns=2,
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                self.drop(path, f"failed its first requests: {exc}")
                continue
            if not r["outcomes"].get("complete") and not wl.fault_rate:
                self.drop(path, f"no stream completed when primed: {r['outcomes']}")
            elif path.pid and path.name not in self.rest_rss:
                self.rest_rss[path.name] = tree_rss_kib(path.pid)

    def drop(self, path: RelayPath, why: str) -> None:
        print(f"  {path.name} is left out: {why}", flush=True)
        self.unavailable[path.name] = why
        self.paths.remove(path)
        with contextlib.suppress(Exception):
            path.stop()

    # -- workloads ------------------------------------------------------------------------

    def run_workload(self, wl: Workload) -> None:
        rounds, ramp, warmup, measure = phase_lengths(wl, self.args)
        print(f"\n== {wl.describe()}: {rounds} round(s) of {measure:g} s per path", flush=True)
        self.sim.start(wl)
        if self.results:
            self.restart_light_relays()
        self.prime(wl)
        paths = self.paths_for(wl)
        by_path = self.results.setdefault(wl, {})
        for rnd in range(rounds):
            shift = rnd % max(1, len(paths))
            for path in paths[shift:] + paths[:shift]:  # alternate the order per round
                own_before = self.intact_recovery(path)
                try:
                    r = run_load(
                        path,
                        wl,
                        self.sim,
                        ramp=ramp,
                        warmup=warmup,
                        measure=measure,
                        tag=f"{wl.name}-{rnd}",
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    self.notes.append(f"{wl.name}, {path.name}, round {rnd + 1}: {exc}")
                    print(f"  {path.name}: {exc}", flush=True)
                    continue
                m = by_path.setdefault(path.name, Measured())
                m.add(r)
                own_after = self.intact_recovery(path)
                if own_before and own_after:
                    s0, n0 = m.intact_recovery
                    m.intact_recovery = (
                        s0 + own_after[0] - own_before[0],
                        n0 + own_after[1] - own_before[1],
                    )
                print(f"  {path.name:<9} round {rnd + 1}: {self.line(r)}", flush=True)
                self.settle(f"{wl.name}, {path.name}")

    def settle(self, after: str) -> None:
        started = time.monotonic()
        if not settle([p.pid for p in self.paths] + [self.sim.pid]):
            self.notes.append(f"after {after} the processes were still busy a minute later")
        elif time.monotonic() - started > 5:
            print(f"  (waited {time.monotonic() - started:.0f} s for the processes to go idle)")

    def intact_recovery(self, path: RelayPath) -> tuple[float, int] | None:
        if isinstance(path, IntactDaemon):
            return path.recovery_totals()
        return None

    @staticmethod
    def line(r: dict[str, Any]) -> str:
        w = r["window_s"] or 1.0
        late = sorted(r["late_ms"])
        p99 = late[min(len(late) - 1, int(0.99 * len(late)))] if late else math.nan
        cpu = f"relay {r['cpu_s'] / w * 100:.0f}% " if r["cpu_s"] else ""
        return (
            f"{r['chunks'] / w:,.0f} chunks/s, {cpu}sim {r['sim_cpu_s'] / w * 100:.0f}% "
            f"client {r['client_cpu_s'] / w * 100:.0f}% others {r['others_cpu_s'] / w * 100:.0f}%"
            f" of a core, lateness p99 {p99:.1f} ms, {dict(r['outcomes'])}"
            + (
                f", waited {r['gate_s']:.0f} s for 99% of streams to flow"
                if r["gate_s"] > 1
                else ""
            )
        )

    # -- the highest chunk rate within 10 ms of added p99 ---------------------------------

    def run_sweep(self) -> None:
        steps = self.args.sweep
        if not steps:
            return
        wl0 = Workload(steps[0], SWEEP_TOK_PER_S)
        print(f"\n== sweep: streams x {SWEEP_TOK_PER_S:g} tokens/s until added p99 > 10 ms")
        self.sim.start(wl0)
        self.prime(wl0)
        racing = [p for p in self.paths if p.name != DIRECT]
        direct = next((p for p in self.paths if p.name == DIRECT), None)
        if direct is None:
            self.notes.append("sweep skipped: it needs the direct path as its reference")
            return
        for streams in steps:
            if not racing:
                break
            wl = Workload(streams, SWEEP_TOK_PER_S)
            ramp = max(0.2, streams / self.args.ramp_rate)
            measured: dict[str, dict[str, Any]] = {}
            for path in [direct, *racing]:
                try:
                    measured[path.name] = run_load(
                        path,
                        wl,
                        self.sim,
                        ramp=ramp,
                        warmup=1.0,
                        measure=self.args.sweep_seconds,
                        tag=f"sweep{streams}",
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    self.notes.append(f"sweep {wl.name}, {path.name}: {exc}")
                self.settle(f"sweep {wl.name}, {path.name}")
            ref = measured.get(DIRECT)
            if ref is None:
                break
            ref_p99 = report.summary(ref["late_ms"])["p99"]
            for path in list(racing):
                r = measured.get(path.name)
                rate = r["chunks"] / r["window_s"] if r else math.nan
                added = report.summary(r["late_ms"])["p99"] - ref_p99 if r else math.inf
                self.sweep.setdefault(path.name, []).append((rate, added))
                print(
                    f"  {wl.name:>8} {path.name:<9} {rate:>9,.0f} chunks/s, "
                    f"added p99 {added:+.1f} ms",
                    flush=True,
                )
                if not added <= report.ADDED_P99_LIMIT_MS:
                    racing.remove(path)

    # -- profile --------------------------------------------------------------------------

    def run_profile(self, seconds: float, wl: Workload) -> None:
        daemon = next((p for p in self.paths if p.name == INTACT), None)
        if daemon is None or daemon.pid is None:
            self.notes.append("profile skipped: intact is not running")
            return
        try:
            py_spy = ensure_py_spy()
        except StartError as exc:
            self.notes.append(f"profile skipped: {exc}")
            return
        print(f"\n== profile: py-spy on intact for {seconds:g} s at {wl.describe()}")
        self.sim.start(wl)
        self.prime(wl)
        out = self.workdir / "profile.txt"
        ramp = max(0.2, wl.streams / self.args.ramp_rate)
        # --native shows C frames too (the cyclic GC, orjson, socket calls); it has to pause
        # the process for each sample, so the profiled phase runs a little slower.
        cmd = f"record --rate 200 --format raw --nolineno --native --duration {seconds:g}"
        cmd += f" --pid {daemon.pid} --output {out}"
        load = threading.Thread(
            target=run_load,
            args=(daemon, wl, self.sim),
            kwargs={"ramp": ramp, "warmup": 1.0, "measure": seconds + 2, "tag": "prof"},
        )
        load.start()
        time.sleep(ramp + 1.0)  # profile the steady state, not the ramp
        spy = subprocess.run([str(py_spy), *cmd.split()], capture_output=True, timeout=120)
        load.join()
        err = spy.stderr
        if not out.exists():
            self.notes.append(f"profile failed: {err.decode()[-600:]}")
            return
        self.profile = profile_summary(out.read_text())
        print(self.profile)


def ensure_py_spy() -> Path:
    """py-spy (from PyPI) in the bench's cache venv; StartError if it cannot be had."""
    from paths.litellm_proxy import cache_dir

    venv = cache_dir() / "py-spy"
    exe = venv / "bin" / "py-spy"
    if exe.exists():
        return exe
    for cmd in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", "py-spy==0.4.3"],
    ):
        if subprocess.run(cmd, capture_output=True).returncode:
            raise StartError(f"could not install py-spy ({' '.join(cmd[-2:])})")
    return exe


def profile_summary(raw: str, top: int = 15) -> str:
    """Top functions by self time (leaf frames) and time by package, from py-spy's raw
    (collapsed stack) output."""
    leaf: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frame = stack.rsplit(";", 1)[-1]
        n = int(count)
        total += n
        leaf[frame] += n
        where = frame[frame.find("(") + 1 : frame.rfind(")")]
        by_file[_package(where)] += n
    if not total:
        return "(no samples)"
    rows = [[f"{n / total * 100:.1f}%", f"`{frame}`"] for frame, n in leaf.most_common(top)]
    files = [[f"{n / total * 100:.1f}%", name] for name, n in by_file.most_common(8)]
    return (
        f"{total} samples of the daemon's busy time (idle samples excluded)\n\n"
        + report.table(["self", "function (file)"], rows)
        + "\n\n"
        + report.table(["self", "where"], files)
    )


def _package(path: str) -> str:
    for marker in ("site-packages/", "/daemon/", "lib/python3"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            if marker == "lib/python3":
                return "stdlib " + rest.split("/", 2)[-1].split("/")[0]
            parts = rest.split("/")
            return "/".join(parts[:2]) if parts[0] == "intact" and len(parts) > 2 else parts[0]
    return path or "?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds: 20 streams, short windows, no sweep, no LiteLLM",
    )
    parser.add_argument(
        "--workloads",
        default=None,
        help=f"comma-separated NxR[-faults] (default {DEFAULT_WORKLOADS})",
    )
    parser.add_argument(
        "--paths",
        default="direct,intact,pipe,litellm",
        help="comma-separated: direct,intact,pipe,litellm",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=6.0,
        help="measured seconds per path per workload, split over the rounds",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternations of the paths per workload (1 at >= 5,000 streams)",
    )
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds after the ramp")
    parser.add_argument(
        "--ramp-rate",
        type=float,
        default=250.0,
        help="streams started per second while ramping up",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.032,
        help="interruption rate of -faults workloads (default 3.2%%)",
    )
    parser.add_argument(
        "--sweep",
        default=",".join(map(str, SWEEP_STREAMS)),
        help="stream counts (x 50 tokens/s) of the max-rate sweep; '' skips it",
    )
    parser.add_argument("--sweep-seconds", type=float, default=2.5)
    parser.add_argument(
        "--litellm-max-streams",
        type=int,
        default=100,
        help="LiteLLM is left out of larger workloads",
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy the daemon this long (at the 1000x20 workload)",
    )
    parser.add_argument("--profile-workload", default="1000x20")
    parser.add_argument("--markdown", metavar="FILE", help="also write the report here")
    parser.add_argument("--json", metavar="FILE", help="also write the key numbers as JSON")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="keep configs and logs here (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.workloads = args.workloads or QUICK_WORKLOADS
        args.duration, args.rounds, args.warmup = min(args.duration, 2.0), 2, 0.5
        args.sweep = ""
        if args.paths == parser.get_default("paths"):
            args.paths = "direct,intact,pipe"
    try:
        args.workloads = [
            Workload.parse(w, args.fault_rate)
            for w in (args.workloads or DEFAULT_WORKLOADS).split(",")
        ]
    except ValueError as exc:
        parser.error(str(exc))
    try:
        args.paths = [PATH_NAMES[p.strip()] for p in args.paths.split(",") if p.strip()]
    except KeyError as exc:
        parser.error(f"unknown path {exc}; choose from {', '.join(PATH_NAMES)}")
    args.sweep = [int(s) for s in args.sweep.split(",") if s.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    biggest = max([w.streams for w in args.workloads] + args.sweep)
    # Children inherit the limit. A relay holds two descriptors per stream (app + upstream),
    # so an unprivileged hard limit of 20,000 allows a little under 10,000 streams.
    fds = raise_fd_limit(biggest * 2 + FD_SPARE)
    most = (fds - FD_SPARE) // 2
    notes = []
    if biggest > most:
        notes.append(
            f"the open-file limit ({fds}; the hard limit cannot be raised without "
            f"CAP_SYS_RESOURCE) allows {most:,} streams through a relay: larger workloads "
            f"ran with {most:,}"
        )
        print("note: " + notes[-1])
        args.workloads = [
            dataclasses.replace(w, streams=min(w.streams, most)) for w in args.workloads
        ]
        args.sweep = [min(n, most) for n in args.sweep]
    host = machine()
    print(
        f"machine: {host['cpu']}, {host['nproc']} cores, {host['memory']}, "
        f"Python {host['python']}, Linux {host['kernel']}; open-file limit {fds}"
    )
    with contextlib.ExitStack() as stack:
        if args.workdir:
            tmp = args.workdir
            Path(tmp).mkdir(parents=True, exist_ok=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="intact-bench-"))
        bench = Bench(args, Path(tmp))
        bench.notes += notes
        try:
            bench.start_paths(args.paths, biggest)
            for wl in args.workloads:
                bench.run_workload(wl)
            bench.run_sweep()
            if args.profile:
                bench.run_profile(args.profile, Workload.parse(args.profile_workload, 0.0))
        finally:
            bench.stop_paths()
    text = render(bench, args, host, time.monotonic() - started)
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_json(bench.results), indent=1) + "\n")
    return 0 if all(r for r in bench.results.values()) else 1


def render(bench: Bench, args: argparse.Namespace, host: dict[str, str], took: float) -> str:
    order = [n for n in ORDER if n in args.paths]
    notes = {p.name: p.note for p in bench.paths}
    out = [
        f"Machine: {host['cpu']}, {host['nproc']} cores, {host['memory']} RAM, "
        f"Python {host['python']}, Linux {host['kernel']}. Took {took / 60:.1f} min.",
        "",
        report.table(
            ["path", "what", "RSS at rest MiB"],
            [
                [
                    n,
                    notes.get(n, bench.unavailable.get(n, "")),
                    f"{bench.rest_rss[n] / 1024:,.0f}" if n in bench.rest_rss else "",
                ]
                for n in order
            ],
        ),
    ]
    out += [
        "",
        "### Summary",
        "",
        report.summary_table(bench.results, bench.rest_rss, bench.sweep, order),
    ]
    for wl, by_path in bench.results.items():
        out += ["", f"### {wl.describe()}", "", report.workload_table(wl, by_path, order)]
        if wl.fault_rate:
            out += [
                "",
                report.fault_table(
                    wl, by_path, order, backoff_ms=BACKOFF * 1000, ttft_ms=SIM_TTFT * 1000
                ),
            ]
    if bench.sweep:
        out += ["", f"### Highest chunk rate (streams x {SWEEP_TOK_PER_S:g} tokens/s)", ""]
        out += [report.max_rate_table(bench.sweep, order)]
    out += [
        "",
        "### Targets (issue 13)",
        "",
        report.targets(bench.results, BACKOFF * 1000, SIM_TTFT * 1000),
    ]
    if bench.profile:
        out += ["", "### Profile of intact", "", bench.profile]
    for name, why in bench.unavailable.items():
        out += ["", f"{name} was not measured: {why}"]
    out += [f"note: {n}" for n in bench.notes]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
