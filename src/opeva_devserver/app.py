"""HTTP layer: the agent API of CONTRACT.md and an OPEVA-shaped job-control API."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from . import __doc__ as package_doc
from .models import HeartbeatRequest, JobState, JobStatusRequest, NextJobRequest, RunSimulationRequest
from .settings import Settings, prepare_shared_dir
from .store import JobNotFound, NewJob, StatusReport, Store, TransitionRejected

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def build_payload(job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The next-job answer for ``job`` in the configured payload mode."""
    job_id: str = job["job_id"]
    payload: dict[str, Any] = {
        "job_id": job_id,
        "job_name": job["job_name"],
        "config_path": job["config_path"],
    }
    if settings.payload_mode == "legacy":
        return payload
    payload["image"] = job["image"] or settings.job_image
    payload["command"] = (
        job["command"]
        if job["command"] is not None
        else ["--config", f"/data/{job['config_path']}", "--job_id", job_id]
    )
    payload["container_name"] = job["container_name"] or f"opeva-job-{job_id}"[:63]
    payload["volumes"] = (
        job["volumes"]
        if job["volumes"] is not None
        else [{"host": str(settings.shared_dir.resolve()), "container": "/data", "mode": "rw"}]
    )
    payload["env"] = job["env"] if job["env"] is not None else {}
    return payload


def _unprocessable(reason: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": reason})


def _validation_failed(errors: Any) -> Response:
    """422 listing each problem (where and why) without echoing the input, which may not be valid JSON."""
    detail = [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", "")),
         "type": str(error.get("type", ""))}
        for error in errors
    ]  # fmt: skip
    body = json.dumps({"detail": detail or "invalid request"}, ensure_ascii=True)
    return Response(content=body, status_code=422, media_type="application/json")


def _not_found(what: str = "unknown job") -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": what})


def _conflict(exc: TransitionRejected) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": exc.detail, "status": exc.current})


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _write_config(configs_dir: Path, name: str, config: dict[str, Any]) -> None:
    target = configs_dir / f"{name}.yaml"
    tmp = configs_dir / f".{name}.yaml.{os.getpid()}.{threading.get_ident()}.tmp"
    # JSON is valid YAML; this keeps the server free of a YAML dependency.
    tmp.write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, target)


class _Sweeper:
    """Runs ``store.sweep`` every ``interval`` seconds in a daemon thread."""

    def __init__(self, store: Store, interval: float, clock: Clock, started_at: float) -> None:
        self._store = store
        self._interval = interval
        self._clock = clock
        self._started_at = started_at
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opeva-devserver-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.sweep(self._clock(), since=self._started_at)
            except Exception:
                log.exception("staleness sweep failed")


def create_app(store: Store, settings: Settings, clock: Clock = time.time) -> FastAPI:
    prepare_shared_dir(settings.shared_dir)
    shared_dir = settings.shared_dir
    configs_dir = shared_dir / "configs"

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = None
        if settings.sweep_interval > 0:
            # Silence while this server was down is not the workers' fault: judge from our start time.
            sweeper = _Sweeper(store, settings.sweep_interval, clock, clock())
            sweeper.start()
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.stop()

    app = FastAPI(
        title="opeva-devserver",
        description=(package_doc or "").strip(),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.settings = settings

    if settings.token:
        expected = f"Bearer {settings.token}".encode()

        @app.middleware("http")
        async def require_token(request: Request, call_next: Any) -> Any:
            agent_call = request.url.path.startswith(("/api/agent/", "/status/"))
            given = request.headers.get("authorization", "").encode()
            if agent_call and not hmac.compare_digest(given, expected):
                return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)
            return await call_next(request)

    # -- agent API ----------------------------------------------------------------------------------------

    @app.post("/api/agent/next-job", tags=["agent"], responses={204: {"description": "no work"}})
    def next_job(body: NextJobRequest) -> Response:
        job = store.claim_next(body.worker_id, clock())
        if job is None:
            return Response(status_code=204)
        log.info("job %s dispatched to %s", job["job_id"], body.worker_id)
        return JSONResponse(build_payload(job, settings))

    @app.post("/api/agent/job-status", tags=["agent"])
    def job_status(body: JobStatusRequest) -> Response:
        report = StatusReport(
            job_id=body.job_id,
            status=body.status,
            worker_id=body.worker_id,
            container_id=body.container_id,
            container_name=body.container_name,
            exit_code=body.exit_code,
            error=body.error,
            details=body.details,
        )
        try:
            new_status = store.report_status(report, clock())
        except JobNotFound:
            return _not_found()
        except TransitionRejected as exc:
            return _conflict(exc)
        return JSONResponse({"ok": True, "status": new_status})

    @app.post("/api/agent/heartbeat", tags=["agent"])
    def heartbeat(body: HeartbeatRequest) -> dict[str, bool]:
        store.heartbeat(body.worker_id, body.info, clock())
        return {"ok": True}

    @app.get("/status/{job_id}", tags=["agent"])
    def job_status_get(job_id: str) -> Response:
        job = store.get_job(job_id)
        if job is None:
            return _not_found()
        keys = ("job_id", "status", "worker_id", "exit_code", "error", "updated_at", "status_updated_at")
        return JSONResponse({key: job[key] for key in keys})

    # -- job control ------------------------------------------------------------------------------------

    @app.post("/run-simulation", tags=["jobs"])
    def run_simulation(body: RunSimulationRequest) -> Response:
        job_id = uuid.uuid4().hex
        if body.config is not None:
            name = body.config_name or job_id
            try:
                _write_config(configs_dir, name, body.config)
            except (OSError, TypeError, ValueError) as exc:
                return _unprocessable(f"could not save the config: {exc}")
            config_path = f"configs/{name}.yaml"
        else:
            assert body.config_path is not None
            config_path = body.config_path
            candidate = shared_dir / config_path
            if not _inside(candidate, configs_dir):
                return _unprocessable(f"config_path {config_path} resolves outside configs/")
            if not candidate.is_file():
                return _unprocessable(f"config_path {config_path} does not exist in the shared dir")
        job_name = body.job_name or Path(config_path).stem
        job = store.create_job(
            NewJob(
                job_id=job_id,
                config_path=config_path,
                job_name=job_name,
                target_host=body.target_host,
                image=body.image,
                command=body.command,
                container_name=body.container_name,
                volumes=None if body.volumes is None else [v.model_dump() for v in body.volumes],
                env=body.env,
            ),
            clock(),
        )
        log.info("job %s queued (%s, target_host=%s)", job_id, config_path, body.target_host)
        return JSONResponse(
            {
                "job_id": job_id,
                "status": job["status"],
                "job_name": job_name,
                "config_path": config_path,
                "target_host": body.target_host,
            }
        )

    @app.get("/jobs", tags=["jobs"])
    def jobs(
        status: JobState | None = None,
        limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    ) -> list[dict[str, Any]]:
        return store.list_jobs(status=status, limit=limit)

    @app.get("/job-info/{job_id}", tags=["jobs"])
    def job_info(job_id: str) -> Response:
        job = store.get_job(job_id)
        return _not_found() if job is None else JSONResponse(job)

    @app.post("/stop/{job_id}", tags=["jobs"])
    def stop(job_id: str) -> Response:
        try:
            new_status = store.request_stop(job_id, clock())
        except JobNotFound:
            return _not_found()
        except TransitionRejected as exc:
            return _conflict(exc)
        log.info("stop of job %s: now %s", job_id, new_status)
        return JSONResponse({"job_id": job_id, "status": new_status})

    @app.get("/queue", tags=["jobs"])
    def queue() -> list[dict[str, Any]]:
        return store.queue()

    @app.get("/hosts", tags=["jobs"])
    def hosts() -> list[dict[str, Any]]:
        return store.hosts(clock())

    @app.get("/file-logs/{job_id}", tags=["jobs"], response_class=PlainTextResponse)
    def file_logs(job_id: str) -> Response:
        if store.get_job(job_id) is None:
            return _not_found()
        job_dir = shared_dir / "jobs" / job_id
        log_file = job_dir / "logs" / f"{job_id}.log"
        if job_dir.is_symlink() or not _inside(log_file, job_dir) or not log_file.is_file():
            return _not_found("no log file for this job")
        try:
            text = log_file.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return _not_found("no log file for this job")
        return PlainTextResponse(text)

    @app.get("/health", tags=["meta"])
    def health() -> dict[str, Any]:
        return {"ok": True, "backend": "opeva-devserver", "payload_mode": settings.payload_mode}

    @app.exception_handler(JobNotFound)
    async def _job_not_found(_: Request, __: JobNotFound) -> Response:
        return _not_found()

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> Response:
        return _validation_failed(exc.errors())

    @app.exception_handler(UnicodeError)
    async def _bad_text(_: Request, __: UnicodeError) -> Response:
        return _unprocessable("strings must be valid Unicode (no lone surrogates)")

    return app
