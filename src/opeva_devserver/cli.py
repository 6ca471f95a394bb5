"""``opeva-devserver``: run the reference backend with uvicorn.

Every option also reads a default from ``OPEVA_DEVSERVER_<NAME>`` (e.g. ``OPEVA_DEVSERVER_PORT``,
``OPEVA_DEVSERVER_PROTOCOL``, ``OPEVA_DEVSERVER_HOSTS``); the shared dir falls back to ``OPEVA_SHARED_DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .protocol import CURRENT, LEGACY
from .settings import DEFAULT_JOB_IMAGE, DEFAULT_SHARED_DIR, Settings


def _env(name: str, default: str) -> str:
    return os.environ.get(f"OPEVA_DEVSERVER_{name}", default)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return value


def _host_list(text: str) -> tuple[str, ...] | None:
    """``"w1, w2"`` -> ``("w1", "w2")``; an empty list means no host list (every worker id is accepted)."""
    hosts = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    return hosts or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opeva-devserver",
        description="Reference OPEVA backend for development, demos and integration tests.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default=_env("HOST", "127.0.0.1"), help="address to bind")
    add("--port", type=_port, default=_env("PORT", "8000"), help="port to bind (0: any free port)")
    add(
        "--shared-dir",
        type=Path,
        default=_env("SHARED_DIR", os.environ.get("OPEVA_SHARED_DIR", DEFAULT_SHARED_DIR)),
        help="root of the shared directory tree (configs/, jobs/)",
    )
    add(
        "--db",
        type=Path,
        default=os.environ.get("OPEVA_DEVSERVER_DB"),
        help="SQLite database file (default: <shared-dir>/.opeva-devserver/jobs.sqlite3)",
    )
    add(
        "--payload-mode",
        choices=("legacy", "full"),
        default=_env("PAYLOAD_MODE", "full"),
        help="legacy: next-job sends only job_id, job_name, config_path; full: also image, command, ...",
    )
    add(
        "--host-ttl",
        type=_non_negative,
        default=_env("HOST_TTL", "60"),
        help="seconds without a heartbeat before a host is offline",
    )
    add(
        "--status-ttl",
        type=_non_negative,
        default=_env("STATUS_TTL", "300"),
        help="seconds without a status refresh before a running job is failed",
    )
    add(
        "--offline-grace",
        type=_non_negative,
        default=_env("OFFLINE_GRACE", "120"),
        help="extra seconds after host-ttl before an offline host's jobs are failed or requeued",
    )
    add(
        "--sweep-interval",
        type=_non_negative,
        default=_env("SWEEP_INTERVAL", "5"),
        help="seconds between staleness sweeps (0 disables the sweeper)",
    )
    add(
        "--protocol",
        choices=(CURRENT, LEGACY),
        default=_env("PROTOCOL", CURRENT),
        help=f"{CURRENT}: the OPEVA orchestrator's (setup state, attempt fencing, heartbeat keep-alive, GPU"
        f" routing, /ops/jobs/{{id}}/requeue); {LEGACY}: the older contract exactly, for compatibility tests",
    )
    add(
        "--hosts",
        type=_host_list,
        default=os.environ.get("OPEVA_DEVSERVER_HOSTS"),
        help=f"comma-separated worker ids allowed to heartbeat and to be named as a job's host (the"
        f" orchestrator's AVAILABLE_HOSTS), e.g. 'w1,w2'; other ids get 400. None or empty: every worker"
        f" id is accepted. Protocol {CURRENT} only. Env: OPEVA_DEVSERVER_HOSTS",
    )
    add(
        "--job-image",
        default=_env("JOB_IMAGE", DEFAULT_JOB_IMAGE),
        help="image put in full-mode payloads when the job names none",
    )
    add(
        "--token",
        default=os.environ.get("OPEVA_DEVSERVER_TOKEN"),
        help="bearer token the agent API requires (default: none, no check)",
    )
    add(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        choices=("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"),
        type=str.upper,
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    shared_dir: Path = args.shared_dir.expanduser().absolute()
    db_path: Path | None = args.db.expanduser().absolute() if args.db is not None else None
    return Settings(
        shared_dir=shared_dir,
        db_path=db_path,
        payload_mode=args.payload_mode,
        host_ttl=args.host_ttl,
        status_ttl=args.status_ttl,
        offline_grace=args.offline_grace,
        sweep_interval=args.sweep_interval,
        job_image=args.job_image,
        token=args.token or None,
        protocol=args.protocol,
        hosts=args.hosts,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn  # imported late so that --help works without the devserver extra

    from .app import create_app
    from .store import Store

    try:
        store = Store(
            settings.resolved_db_path,
            settings.shared_dir,
            host_ttl=settings.host_ttl,
            status_ttl=settings.status_ttl,
            offline_grace=settings.offline_grace,
            protocol=settings.protocol,
        )
        app = create_app(store, settings)
    except (OSError, sqlite3.Error) as exc:
        print(
            f"opeva-devserver: cannot use shared dir {settings.shared_dir} / database "
            f"{settings.resolved_db_path}: {exc}",
            file=sys.stderr,
        )
        return 2
    logging.getLogger("opeva_devserver").info(
        "shared dir %s, database %s, protocol %s, hosts %s, payload mode %s, host ttl %ss, status ttl %ss,"
        " offline grace %ss",
        settings.shared_dir,
        settings.resolved_db_path,
        settings.protocol,
        ",".join(settings.hosts) if settings.hosts is not None else "any",
        settings.payload_mode,
        settings.host_ttl,
        settings.status_ttl,
        settings.offline_grace,
    )

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(), lifespan="on")
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.05)
        port = args.port
        for srv in server.servers:
            for sock in getattr(srv, "sockets", ()) or ():
                port = sock.getsockname()[1]
                break
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"opeva-devserver listening on http://{host}:{port}", flush=True)

    threading.Thread(target=announce, name="opeva-devserver-announce", daemon=True).start()
    server.run()
    return 0 if server.started else 1
