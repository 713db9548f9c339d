"""A network namespace for the upstream, a veth pair to it, and the faults put on that link.

intact stays in the root namespace; the simulated upstream runs in a namespace of its own
and is reached over a veth pair on a private /30 (10.213.x.y, checked against the root
namespace's routes). Every name carries the test process's pid and a random token, so runs
never share anything; `destroy` removes what `create` made, whatever happened in between,
and `sweep_stale` what a run that was killed left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME_PREFIX = "intact-nf-"
"""Namespaces are named intact-nf-<pid of the test process>-<random>."""


class NetnsUnavailable(RuntimeError):
    """Namespaces (or a tool the fault needs) cannot be used here; the message says why."""


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


async def arun(*cmd: str) -> None:
    """`run` without blocking the event loop intact serves from (mid-stream injections)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode().strip()}")


def why_unavailable() -> str | None:
    """None when this process can make network namespaces, else the reason it cannot."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces and veth pairs needs root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = f"{NAME_PREFIX}{os.getpid()}-probe"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


def sweep_stale() -> list[str]:
    """Remove the namespaces of test runs that died without cleaning up (SIGKILLed): those
    whose test process is gone. Their processes are ours (simulators, netem); they go too."""
    removed = []
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        creator = name.removeprefix(NAME_PREFIX).split("-")[0]
        if not name.startswith(NAME_PREFIX) or not creator.isdigit():
            continue
        if os.path.exists(f"/proc/{creator}"):
            continue  # a run in progress (this one, or another's)
        for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run("ip", "netns", "del", name, check=False)
        removed.append(name)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /30 of 10.213.0.0/16 that no route of the root namespace overlaps."""
    routes = []
    for line in run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        dest = line.split()[0] if line.strip() else ""
        with contextlib.suppress(ValueError):
            if dest not in ("default", "broadcast", "local"):
                routes.append(ipaddress.ip_network(dest, strict=False))
    for _ in range(64):
        subnet = ipaddress.ip_network(
            f"10.213.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30"
        )
        if not any(subnet.overlaps(r) for r in routes):
            return subnet
    raise NetnsUnavailable("no free /30 in 10.213.0.0/16 for the veth pair")


@dataclass
class UpstreamNamespace:
    """The namespace, its veth pair and addresses, and the processes started in it."""

    name: str
    root_veth: str
    ns_veth: str
    root_addr: str
    ns_addr: str
    processes: list[Spawned] = field(default_factory=list)
    rules: list[tuple[str, ...]] = field(default_factory=list)

    @classmethod
    def create(cls) -> UpstreamNamespace:
        token = secrets.token_hex(3)
        subnet = _free_subnet()
        root_addr, ns_addr = (str(h) for h in subnet.hosts())
        name = f"{NAME_PREFIX}{os.getpid()}-{token}"
        ns = cls(name, f"inf{token}r", f"inf{token}s", root_addr, ns_addr)
        try:
            run("ip", "netns", "add", ns.name)
            run("ip", "link", "add", ns.root_veth, "type", "veth", "peer", "name", ns.ns_veth)
            run("ip", "link", "set", ns.ns_veth, "netns", ns.name)
            run("ip", "addr", "add", f"{root_addr}/30", "dev", ns.root_veth)
            run("ip", "link", "set", ns.root_veth, "up")
            run("ip", "-n", ns.name, "addr", "add", f"{ns_addr}/30", "dev", ns.ns_veth)
            run("ip", "-n", ns.name, "link", "set", ns.ns_veth, "up")
            run("ip", "-n", ns.name, "link", "set", "lo", "up")
        except BaseException:
            ns.destroy()
            raise
        return ns

    def exec_argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    async def spawn(self, *cmd: str, ready: str, within: float = 20.0) -> Spawned:
        """Start ``cmd`` inside the namespace; return once it printed a line containing
        ``ready`` (``ip netns exec`` execs, so the process id is the command's own)."""
        proc = await asyncio.create_subprocess_exec(
            *self.exec_argv(*cmd),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        spawned = Spawned(proc)
        self.processes.append(spawned)
        async with asyncio.timeout(within):
            while ready not in (line := await spawned.readline()):
                if not line:
                    raise RuntimeError(f"{cmd[0]} exited before ready: {spawned.output()}")
        spawned.drain()
        return spawned

    async def iptables(self, action: str, *rule: str) -> None:
        """``iptables -A|-I|-D CHAIN rule`` in the namespace; rules added are removed by
        `destroy` even if the test never gets to it."""
        await arun(*self.exec_argv("iptables", "-w", action, *rule))
        if action in ("-A", "-I"):
            self.rules.append(rule)
        elif rule in self.rules:
            self.rules.remove(rule)

    async def aclose(self) -> None:
        """Kill what was started in the namespace, then `destroy` it."""
        for spawned in self.processes:
            await spawned.kill()
        self.destroy()

    def destroy(self) -> None:
        for spawned in self.processes:  # normally gone already (aclose)
            if spawned.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(spawned.proc.pid, signal.SIGKILL)
        for rule in reversed(self.rules):
            run(*self.exec_argv("iptables", "-w", "-D", *rule), check=False)
        run("ip", "netns", "del", self.name, check=False)
        # The namespace's end takes its veth and the peer with it; make sure of the peer.
        if run("ip", "link", "show", self.root_veth, check=False).returncode == 0:
            run("ip", "link", "del", self.root_veth, check=False)


class Spawned:
    """A process started in the namespace, its output kept (the last 200 lines)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: deque[str] = deque(maxlen=200)
        self._drain: asyncio.Task[None] | None = None

    async def readline(self) -> str:
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode(errors="replace")
        if line:
            self.lines.append(line)
        return line

    def drain(self) -> None:
        """Keep reading its output, so a chatty process never blocks on a full pipe."""

        async def read_all() -> None:
            while await self.readline():
                pass

        self._drain = asyncio.create_task(read_all())

    def output(self) -> str:
        return "".join(self.lines)

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL unless told) and wait for the end of process and output."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        await asyncio.wait_for(self.proc.wait(), 10)
        if self._drain is not None:
            await asyncio.wait_for(self._drain, 10)


@dataclass(frozen=True)
class Netem:
    """``netem delay DELAY JITTER loss LOSS reorder REORDER`` on both ends of the link."""

    delay: float = 0.2
    jitter: float = 0.05
    loss: float = 0.05
    reorder: float = 0.1

    def tc_args(self) -> list[str]:
        return [
            "netem",
            "delay",
            f"{self.delay * 1000:g}ms",
            f"{self.jitter * 1000:g}ms",
            "loss",
            f"{self.loss * 100:g}%",
            "reorder",
            f"{self.reorder * 100:g}%",
        ]

    def describe(self) -> str:
        return " ".join(self.tc_args())


async def apply_netem(ns: UpstreamNamespace, netem: Netem, port: int, seed: int) -> Spawned | None:
    """Put ``netem`` on the link, both directions.

    With sch_netem in the kernel: ``tc qdisc add dev <veth> root netem ...`` on each end
    (returns None). Without it (some VM kernels): the same delay, loss and reordering from
    userspace_netem.py, fed by an iptables NFQUEUE rule on the upstream's port (returns
    that process; `netem_counts` stops it and reads what it did).
    """
    if shutil.which("tc") is None:
        why_not_tc = "tc (iproute2) is not installed"
    else:
        tc = ["qdisc", "add", "dev"]
        first = run("tc", *tc, ns.root_veth, "root", *netem.tc_args(), check=False)
        if first.returncode == 0:
            await arun(*ns.exec_argv("tc", *tc, ns.ns_veth, "root", *netem.tc_args()))
            return None
        if "unknown" not in first.stderr.lower():
            raise RuntimeError(f"tc netem failed: {first.stderr.strip()}")
        why_not_tc = "this kernel has no sch_netem"
    if shutil.which("iptables") is None:
        raise NetnsUnavailable(
            f"{why_not_tc}, and iptables (for the NFQUEUE fallback) is not installed "
            "(apt-get install iproute2 iptables)"
        )
    queue = 1 + secrets.randbelow(60000)
    emulator = await ns.spawn(
        sys.executable,
        str(HERE / "userspace_netem.py"),
        f"--queue={queue}",
        f"--delay={netem.delay}",
        f"--jitter={netem.jitter}",
        f"--loss={netem.loss}",
        f"--reorder={netem.reorder}",
        f"--seed={seed}",
        ready="ready",
    )
    to_queue = ["-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
    await ns.iptables("-A", "INPUT", "-p", "tcp", "--dport", str(port), *to_queue)
    await ns.iptables("-A", "OUTPUT", "-p", "tcp", "--sport", str(port), *to_queue)
    return emulator


async def netem_counts(emulator: Spawned) -> dict[str, int]:
    """Stop userspace_netem.py and read the counts it prints on SIGTERM."""
    await emulator.kill(signal.SIGTERM)
    counts: dict[str, int] = json.loads(emulator.output().strip().splitlines()[-1])
    return counts
