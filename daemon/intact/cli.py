"""Command line: `intact run | reload | status | top | demo | simulate-upstream | chaos-proxy |
check-config | config-reference`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from intact import __version__
from intact.config import (
    ConfigError,
    Overrides,
    build_config,
    load_toml,
    reference_markdown,
    resolve,
    to_dict,
)

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intact",
        description="Sidecar daemon that keeps streaming LLM responses intact.",
    )
    parser.add_argument("--version", action="version", version=f"intact {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", metavar="FILE", help="TOML config file")
    run.add_argument("--socket", metavar="PATH", help="Unix socket path apps connect to")
    run.add_argument(
        "--upstream",
        metavar="URL",
        help="base URL of one OpenAI-compatible upstream (named 'default')",
    )
    run.add_argument(
        "--api-key-env", metavar="NAME", help="environment variable holding the --upstream API key"
    )
    run.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="admin listener for /metrics, /healthz, /readyz (default "
        "127.0.0.1:9464; 'off' disables)",
    )
    run.add_argument(
        "--resume",
        choices=("prefill", "prefix", "instruct", "restart"),
        help="resume mode of the --upstream upstream (default prefill)",
    )

    sim = sub.add_parser(
        "simulate-upstream", help="run the simulated OpenAI-compatible upstream alone"
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument(
        "--fault-rate", type=float, default=0.0, help="chance a request is faulted (0..1)"
    )
    sim.add_argument(
        "--continuation-fault-rate",
        type=float,
        default=None,
        help="chance a continuation request is faulted (default: --fault-rate)",
    )
    sim.add_argument(
        "--kinds", default=None, help="comma-separated fault kinds to draw from (default: all)"
    )
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--tok-per-s", type=float, default=60.0)
    sim.add_argument("--ttft", type=float, default=0.25, help="seconds to first token")
    sim.add_argument(
        "--repeat-prob",
        type=float,
        default=0.1,
        help="chance a continuation repeats the tail of the partial text",
    )
    sim.add_argument(
        "--restart-prob",
        type=float,
        default=0.0,
        help="chance a continuation starts the answer over",
    )
    sim.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After seconds of http_429 faults"
    )
    sim.add_argument("--api-key", default=None, help="require this API key")

    chaos = sub.add_parser(
        "chaos-proxy",
        help="put the simulator's named faults in front of any OpenAI-compatible server",
        description="Forward every request to --upstream byte for byte and break chat "
        "completions, text completions, Anthropic Messages and OpenAI Responses streams on "
        "purpose (header x-chaos-fault: KIND[@N] scripts one request; "
        "GET /chaos/stats counts faults; POST /chaos/faults scripts the next requests).",
    )
    chaos.add_argument(
        "--upstream",
        metavar="URL",
        required=True,
        help="server requests are forwarded to: /v1/x goes to URL/v1/x",
    )
    chaos.add_argument("--host", default="127.0.0.1")
    chaos.add_argument("--port", type=int, required=True)
    chaos.add_argument(
        "--fault-rate", type=float, default=0.0, help="chance a completion request is faulted"
    )
    chaos.add_argument(
        "--kinds",
        default=None,
        help="comma-separated fault kinds to draw from (default: all: "
        "reset,stall,error_event,truncate,http_429,http_500,http_503,connect_drop)",
    )
    chaos.add_argument("--seed", type=int, default=None, help="seed of every random decision")
    chaos.add_argument(
        "--max-position",
        type=int,
        default=64,
        help="mid-stream faults strike after 0..N content chunks (Messages and Responses: SSE "
        "events; clamped to the last)",
    )
    chaos.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After seconds of http_429 faults"
    )
    chaos.add_argument(
        "--stall-max", type=float, default=300.0, help="longest a stall holds a connection"
    )
    chaos.add_argument(
        "--fault-log", metavar="PATH", default=None, help="append each decision as a JSON line"
    )

    demo = sub.add_parser("demo", help="simulated upstream + daemon + load, with a live view")
    demo.add_argument(
        "--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)"
    )
    demo.add_argument("--concurrency", type=int, default=16)
    demo.add_argument(
        "--fault-rate",
        type=float,
        default=0.032,
        help="interruption rate of the simulated upstream (default 3.2%%)",
    )
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--tok-per-s", type=float, default=120.0)
    demo.add_argument(
        "--down-at",
        type=float,
        default=None,
        help="switch the simulated upstream to 'down' after this many seconds",
    )
    demo.add_argument(
        "--down-for",
        type=float,
        default=20.0,
        help="how long the upstream stays down (with --down-at)",
    )
    demo.add_argument(
        "--metrics-addr",
        default="127.0.0.1:0",
        help="admin listener of the demo daemon (default: a free port)",
    )
    demo.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="daemon config file (its upstreams are replaced by the simulator)",
    )
    demo.add_argument(
        "--api",
        choices=("chat", "messages", "responses"),
        default="chat",
        help="the API the demo's apps stream from: chat completions, Anthropic Messages (the "
        "anthropic SDK) or OpenAI Responses (default chat)",
    )
    demo.add_argument(
        "--no-live", action="store_true", help="print periodic lines instead of the live view"
    )

    for name, help_text in (
        ("status", "print a running daemon's state as JSON (from its admin listener)"),
        ("top", "show a running daemon live: streams, breakers, budgets, apps"),
        ("reload", "make a running daemon re-read its config and API keys (as SIGHUP does)"),
    ):
        watch = sub.add_parser(name, help=help_text)
        watch.add_argument(
            "--admin",
            metavar="URL",
            help="the daemon's admin listener (default: from server.metrics_addr of the "
            "config, i.e. http://127.0.0.1:9464)",
        )
        watch.add_argument(
            "--config", metavar="FILE", help="config whose server.metrics_addr to use"
        )
        watch.add_argument(
            "--timeout", type=float, default=2.0, help="seconds to wait for the admin listener"
        )
        if name == "top":
            watch.add_argument(
                "--interval", type=float, default=1.0, help="seconds between refreshes"
            )
            watch.add_argument("--once", action="store_true", help="print one frame and exit")

    check = sub.add_parser("check-config", help="validate a config file and print it resolved")
    check.add_argument("file")

    sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_CONFIG
    try:
        if args.command == "run":
            return _run(args)
        if args.command in ("status", "top", "reload"):
            return _watch(args)
        if args.command == "simulate-upstream":
            return _simulate(args)
        if args.command == "chaos-proxy":
            return _chaos_proxy(args)
        if args.command == "demo":
            from intact.demo.run import run_demo

            return run_demo(args)
        if args.command == "check-config":
            from intact.resilience.worst_case import describe

            cfg = build_config(load_toml(args.file))
            print(json.dumps(to_dict(cfg), indent=2))
            # What the config promises, for people (stderr: stdout stays machine-readable).
            print(describe(cfg), file=sys.stderr)
            return 0
        if args.command == "config-reference":
            sys.stdout.write(reference_markdown())
            return 0
    except ConfigError as exc:
        print(f"intact: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_CONFIG


def _run(args: argparse.Namespace) -> int:
    from intact.daemon import serve_until_signalled
    from intact.telemetry.runtime import start_telemetry
    from intact.unix_socket import SocketInUseError, UnsafeSocketDirError

    overrides = Overrides(
        config=args.config,
        socket=args.socket,
        upstream=args.upstream,
        api_key_env=args.api_key_env,
        metrics_addr=args.metrics_addr,
        resume=args.resume,
    )
    cfg = resolve(overrides)

    async def _main() -> None:
        tel = start_telemetry(cfg)
        try:
            await serve_until_signalled(
                cfg,
                telemetry=tel.telemetry,
                metrics_handler=tel.metrics_handler,
                load_config=lambda: resolve(overrides),  # the same sources, read again
            )
        finally:
            tel.shutdown()

    try:
        asyncio.run(_main())
    except (SocketInUseError, UnsafeSocketDirError) as exc:
        print(f"intact: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"intact: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _watch(args: argparse.Namespace) -> int:
    """`intact status` (one JSON document) and `intact top` (live)."""
    from intact.status import AdminUnreachable, admin_url, build_status, read_admin

    try:
        admin = args.admin or admin_url(resolve(Overrides(config=args.config)))
        if args.command == "reload":
            from intact.status import request_reload

            ok, detail = request_reload(admin, timeout=args.timeout)
            print(detail, file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
        if args.command == "status":
            status = build_status(admin, read_admin(admin, timeout=args.timeout))
            print(json.dumps(status, indent=2))
            return 0
        try:
            from intact.top import run_top
        except ImportError as exc:
            print(
                f"intact top needs the demo extra ({exc.name} is missing): "
                "pip install 'intact[demo]'; `intact status` works without it",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        return run_top(admin, interval=args.interval, once=args.once)
    except AdminUnreachable as exc:
        print(f"intact {args.command}: {exc}", file=sys.stderr)
        return 1


def _simulate(args: argparse.Namespace) -> int:
    from intact.simulator import (
        ALL_FAULT_KINDS,
        SimulatedUpstream,
        SimulatorSettings,
        serve_forever,
    )

    kinds = (
        tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        if args.kinds
        else ALL_FAULT_KINDS
    )
    try:
        settings = SimulatorSettings(
            tok_per_s=args.tok_per_s,
            ttft=args.ttft,
            fault_rate=args.fault_rate,
            continuation_fault_rate=args.continuation_fault_rate,
            kinds=kinds,
            seed=args.seed,
            repeat_prob=args.repeat_prob,
            restart_prob=args.restart_prob,
            retry_after=args.retry_after,
            api_key=args.api_key,
        )
    except ValueError as exc:
        print(f"intact simulate-upstream: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def ready(sim: SimulatedUpstream) -> None:
        print(f"intact simulated upstream listening on {sim.base_url}", flush=True)

    try:
        asyncio.run(serve_forever(settings, args.host, args.port, on_ready=ready))
    except KeyboardInterrupt:
        pass
    return 0


def _chaos_proxy(args: argparse.Namespace) -> int:
    from intact.chaos import ChaosProxy, ChaosSettings, FaultOdds, serve_until_signalled
    from intact.chaos.proxy import describe
    from intact.simulator.faults import ALL_FAULT_KINDS

    kinds = (
        tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        if args.kinds
        else ALL_FAULT_KINDS
    )
    try:
        settings = ChaosSettings(
            upstream=args.upstream,
            odds=FaultOdds(fault_rate=args.fault_rate, kinds=kinds, max_position=args.max_position),
            seed=args.seed,
            retry_after=args.retry_after,
            stall_max=args.stall_max,
            fault_log=args.fault_log,
        )
    except ValueError as exc:
        print(f"intact chaos-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def ready(proxy: ChaosProxy) -> None:
        print(describe(proxy), flush=True)

    try:
        asyncio.run(serve_until_signalled(settings, args.host, args.port, on_ready=ready))
    except OSError as exc:
        print(f"intact chaos-proxy: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
