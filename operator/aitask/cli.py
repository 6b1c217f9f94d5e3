"""The ``aitask`` command: run | plan | simulate | crds | agent | version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from aitask import __version__

# Sub-commands that live in their own modules, each with add_parser(subparsers) and run(args).
_COMMAND_MODULES = ("aitask.commands.plan", "aitask.commands.simulate", "aitask.commands.local")


def _cmd_crds(args: argparse.Namespace) -> int:
    from aitask.api.crdgen import all_crds

    crds = all_crds()
    if args.markdown:
        from aitask.api.crddoc import render

        sys.stdout.write(render())
        return 0
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, crd in crds.items():
            (out / name).write_text(dump_yaml(crd))
        return 0
    sys.stdout.write("---\n".join(dump_yaml(c) for c in crds.values()))
    return 0


def dump_yaml(obj: object) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=120)


def _cmd_run(args: argparse.Namespace) -> int:
    import kopf

    import aitask.handlers  # noqa: F401  (registers the handlers)
    from aitask.handlers import startup
    from aitask.handlers.peering import own_identity
    from aitask.settings import load_settings

    settings = load_settings()
    namespaces = args.namespace or settings.namespaces
    standalone = args.standalone or settings.standalone
    identity = own_identity()
    priority = 0 if standalone else peering_priority(settings.peering_priority)
    startup.WATCH.update(namespaces=list(namespaces), standalone=bool(standalone), identity=identity, priority=priority)
    kopf.configure(verbose=args.verbose)
    operate(
        kopf.operator,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=standalone,
        peering_name=None if standalone else settings.peering_name,
        priority=None if standalone else priority,
        identity=identity,
        liveness_endpoint=args.liveness,
    )
    return 0


def operate(operator: Callable[..., Awaitable[None]], **options: Any) -> None:
    """Run Kopf's operator in a new event loop that stops on SIGTERM/SIGINT from its first moment.

    Kopf installs its own signal handlers only after the start-up activity has run, and by then the
    metrics/health server is already answering: a SIGTERM in that window (a rollout right after a
    start, a quick test) used to take Python's default action and end the process on the spot, with
    no cleanup. Here the loop's handlers raise Kopf's stop flag until Kopf replaces them.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[signal.Signals] = loop.create_future()

        def stopping(sig: signal.Signals) -> None:
            if not stop.done():
                stop.set_result(sig)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping, sig)
        await operator(stop_flag=stop, **options)

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main())


def peering_priority(configured: int | None, now: float | None = None) -> int:
    """Kopf pauses every replica that sees a peer of higher priority, and *all* replicas when two
    share one, so each replica needs its own: the earlier it started, the higher. The active
    replica stays active while newer ones (a rolling update, a scale-up) wait, and the next one
    takes over when it exits (Kopf removes its peering entry) or its entry expires."""
    if configured is not None:
        return configured
    started_ms = int((time.time() if now is None else now) * 1000)
    return 10**13 - started_ms


def _cmd_agent(args: argparse.Namespace) -> int:
    from aitask.agent.main import main as agent_main

    return agent_main(args.agent_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aitask", description="aitask-operator: cost-model placement of AI sub-tasks on Kubernetes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator (Kopf)")
    run.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeat)")
    run.add_argument("--standalone", action="store_true", help="no peering: a single replica (tests, dev)")
    run.add_argument("--liveness", default=None, help="Kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)

    crds = sub.add_parser("crds", help="print the CRDs generated from the API models")
    crds.add_argument("--out-dir", default=None, help="write one file per CRD into this folder")
    crds.add_argument("--markdown", action="store_true", help="print the field reference as Markdown instead")
    crds.set_defaults(func=_cmd_crds)

    agent = sub.add_parser("agent", help="run the NVML GPU exporter (see `aitask agent --help`)", add_help=False)
    agent.add_argument("agent_args", nargs=argparse.REMAINDER)
    agent.set_defaults(func=_cmd_agent)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _args: print(__version__) or 0)

    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        # Everything after `agent` belongs to the agent's own parser (argparse's REMAINDER cannot
        # take arguments that start with an option, such as `--port`).
        from aitask.agent.main import main as agent_main

        return agent_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # `aitask plan ... | head`: the reader left; say nothing more (and no traceback at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    raise SystemExit(main())
