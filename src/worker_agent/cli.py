"""Command line: `job-worker-agent [run]` starts the worker, `job-worker-agent doctor` checks the host,
`job-worker-agent status` shows what the worker on this host is doing.

Every setting is a flag or an env var (config.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from worker_agent import __version__, config, logsetup
from worker_agent.config import ConfigError

EXIT_CONFIG = 2
log = logging.getLogger("worker_agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="job-worker-agent",
        description="Runs OPEVA jobs from the backend's queue in Docker containers, "
        "WORKER_MAX_ACTIVE_JOBS at a time (default 1). "
        "Each option can also be set by the environment variable shown in brackets; a flag wins.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "doctor", "status"],
        help="run: start the worker (default); doctor: check configuration, backend, clock, Docker, image "
        "and shared directory, print a table, exit 0 only when the worker can run jobs; "
        "status: show the worker's jobs (age, log bytes, pending statuses, container), outbox and health, "
        "read from WORKER_STATE_DIR and 127.0.0.1:METRICS_PORT without changing anything; exit 0 when the "
        "worker answered /readyz with 200, 1 when it is not ready or not answering (not running), "
        "2 on an invalid setting",
    )
    parser.add_argument("--json", action="store_true", help="status only: print JSON for scripts instead of a table")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    config.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and args.command != "status":
        parser.error("--json goes with the status command")
    if args.command == "doctor":
        from worker_agent.ops import doctor

        return doctor.main(args)
    try:
        settings = config.load(args)
        if args.command == "status":
            from worker_agent.ops import status

            return status.main(settings, as_json=args.json)
        logsetup.configure(settings.log_level, settings.log_format)
        for line in config.describe(settings):
            log.debug("setting %s", line)
        return _run(settings)
    except ConfigError as exc:
        print(f"job-worker-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _run(settings: config.Settings) -> int:
    from worker_agent.ops import httpserver
    from worker_agent.worker import Worker

    worker = Worker(settings)
    server = None
    if settings.metrics_port:
        try:
            server = httpserver.serve(settings.metrics_port, worker.readiness)
        except OSError as exc:
            raise ConfigError(
                f"invalid METRICS_PORT={settings.metrics_port}: cannot listen: {exc.strerror or exc} "
                "(METRICS_PORT=0 turns the endpoint off)"
            ) from None
        log.info("serving /metrics, /healthz and /readyz on port %d", settings.metrics_port)
    try:
        return worker.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    sys.exit(main())
