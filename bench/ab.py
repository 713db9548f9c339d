"""A/B of intact variants: CPU per relayed chunk and RSS, alternating, beside the byte pipe.

    python bench/ab.py --workload 1000x20 --rounds 4 \\
        base=/tmp/base/daemon  new=daemon  new-nogc=daemon:INTACT_GC=off

Each variant is ``name=SOURCE_DIR[:VAR=VALUE,...]``: an ``intact run`` whose ``intact``
package is imported from SOURCE_DIR (a checkout's ``daemon`` directory) with the extra
environment variables. The byte pipe runs too unless ``--no-pipe``. All of them stay up
for the whole run; every round measures each in turn (the order rotates per round) against
one simulator, so a change is judged against its neighbours in time on a shared machine.
Prints one line per measurement and a summary: median and range of CPU us/chunk per
variant, and each one's ratio to the pipe's (median of per-round ratios).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench import FD_SPARE, Simulator, phase_lengths, run_load, settle  # noqa: E402
from load import raise_fd_limit  # noqa: E402
from paths import RelayPath  # noqa: E402
from paths.intact_daemon import IntactDaemon  # noqa: E402
from paths.pipe import BytePipe  # noqa: E402
from report import Workload  # noqa: E402


def parse_variant(text: str, workdir: Path, streams: int) -> RelayPath:
    """``name=SOURCE_DIR[:VAR=VALUE,...]``, or ``name=pipe[:VAR=VALUE,...]`` for another
    byte pipe (e.g. with other environment variables)."""
    name, _, rest = text.partition("=")
    src, _, extra = rest.partition(":")
    env = dict(os.environ)
    if src != "pipe":
        env["PYTHONPATH"] = str(Path(src).resolve())
    for pair in filter(None, extra.split(",")):
        key, _, value = pair.partition("=")
        env[key] = value
    if src == "pipe":
        return BytePipe(workdir, name=name, env=env)
    return IntactDaemon(workdir, streams, name=name, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="name=SOURCE_DIR[:VAR=VALUE,...]")
    parser.add_argument("--workload", default="1000x20")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured per round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--ramp-rate", type=float, default=250.0)
    parser.add_argument("--no-pipe", action="store_true")
    parser.add_argument(
        "--parallel", action="store_true", help="load every path at once (N streams each)"
    )
    parser.add_argument("--fault-rate", type=float, default=0.032)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="keep configs and logs here")
    parser.add_argument(
        "--sim-src", help="SOURCE_DIR of the simulator's intact (default: the installed one)"
    )
    args = parser.parse_args(argv)
    wl = Workload.parse(args.workload, args.fault_rate)
    raise_fd_limit(wl.streams * 2 * (len(args.variants) + 1) + FD_SPARE)
    if args.sim_src:  # the variants set their own PYTHONPATH; load.py does not import intact
        os.environ["PYTHONPATH"] = str(Path(args.sim_src).resolve())
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="intact-ab-")))
        sim = Simulator(workdir, args.seed)
        sim.start(wl)
        paths: list[RelayPath] = [parse_variant(v, workdir, wl.streams) for v in args.variants]
        if not args.no_pipe:
            paths.append(BytePipe(workdir))
        try:
            for p in paths:
                p.start(sim.url)
            ns = argparse.Namespace(
                rounds=args.rounds,
                ramp_rate=args.ramp_rate,
                warmup=args.warmup,
                duration=args.seconds * args.rounds,
            )
            _, ramp, warmup, measure = phase_lengths(wl, ns)
            results: dict[str, list[dict[str, Any]]] = {p.name: [] for p in paths}
            for rnd in range(args.rounds):
                shift = rnd % len(paths)
                order = paths[shift:] + paths[:shift]
                if args.parallel:
                    # Every path at once, each with its own load client: whatever else the
                    # machine runs meanwhile weighs on all of them alike.
                    with concurrent.futures.ThreadPoolExecutor(len(order)) as pool:
                        futures = [
                            pool.submit(
                                run_load,
                                p,
                                wl,
                                sim,
                                ramp=ramp,
                                warmup=warmup,
                                measure=measure,
                                tag="ab",
                            )
                            for p in order
                        ]
                        runs = [(p, f.result()) for p, f in zip(order, futures, strict=True)]
                else:
                    runs = []
                    for p in order:
                        runs.append(
                            (
                                p,
                                run_load(
                                    p, wl, sim, ramp=ramp, warmup=warmup, measure=measure, tag="ab"
                                ),
                            )
                        )
                        settle([q.pid for q in paths] + [sim.pid])
                for p, r in runs:
                    results[p.name].append(r)
                    us = r["cpu_s"] / max(1, r["chunks"]) * 1e6
                    w = r["window_s"] or 1.0
                    print(
                        f"round {rnd + 1} {p.name:<12} {us:6.1f} us/chunk "
                        f"{r['chunks'] / w:8,.0f} chunks/s  relay {r['cpu_s'] / w * 100:3.0f}%"
                        f"  rss {r['rss_before_kib'] // 1024}->{r['rss_peak_kib'] // 1024} MiB"
                        f"  others {r['others_cpu_s'] / w * 100:3.0f}%  {r['outcomes']}",
                        flush=True,
                    )
                if args.parallel:
                    settle([q.pid for q in paths] + [sim.pid])
        finally:
            for p in paths:
                p.stop()
            sim.stop()
    print("\nsummary (CPU us/chunk: median [min-max]; vs pipe: median of per-round ratios)")
    pipe = results.get("byte pipe")
    for name, rs in results.items():
        us = [r["cpu_s"] / max(1, r["chunks"]) * 1e6 for r in rs]
        line = f"{name:<12} {statistics.median(us):6.1f} [{min(us):.1f}-{max(us):.1f}]"
        if pipe and name != "byte pipe":
            ratios = [
                (a["cpu_s"] / max(1, a["chunks"])) / (b["cpu_s"] / max(1, b["chunks"]))
                for a, b in zip(rs, pipe, strict=False)
                if b["cpu_s"]
            ]
            line += f"  {statistics.median(ratios):.2f}x pipe"
        peak = max(r["rss_peak_kib"] for r in rs) // 1024
        line += f"  peak RSS {peak} MiB"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
