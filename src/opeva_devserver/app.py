"""HTTP layer: the agent API (orchestrator 1.0, or docs/contract.md's 2026-04 with --protocol) and OPEVA-shaped job
control and operator APIs."""

from __future__ import annotations

import contextlib
import dataclasses
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
from pydantic import BaseModel

from . import __doc__ as package_doc
from .models import (
    HeartbeatRequest,
    JobState,
    JobStatusRequest,
    LegacyJobStatusRequest,
    LegacyNextJobRequest,
    LegacyRunSimulationRequest,
    NextJobRequest,
    RequeueRequest,
    RunSimulationRequest,
)
from .protocol import ATTEMPT_FENCING, CURRENT, STALE_ATTEMPT_CODE, STALE_ATTEMPT_MESSAGE, unknown_host_detail
from .settings import Settings, prepare_shared_dir
from .store import (
    JobNotFound,
    NewJob,
    Requeue,
    StaleAttempt,
    StatusReport,
    Store,
    TransitionRejected,
    UnknownStatus,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def build_payload(job: dict[str, Any], settings: Settings, attempt_token: str | None = None) -> dict[str, Any]:
    """The next-job answer for ``job`` in the configured payload mode and protocol.

    ``attempt_token`` is given for a fenced attempt: the payload then carries what the worker must echo in
    every status report, whatever the payload mode (a fencing worker cannot report without it).
    """
    payload: dict[str, Any] = {
        "job_id": job["job_id"],
        "job_name": job["job_name"],
        "config_path": job["config_path"],
    }
    if settings.payload_mode == "full":
        payload.update(_full_payload_fields(job, settings))
        if settings.protocol == CURRENT:
            payload.update(
                attempt_number=job["attempt_number"],
                source_config_path=job["config_path"],
                preferred_host=job["preferred_host"],
                target_worker_profile=job["target_worker_profile"],
            )
    if attempt_token is not None:
        payload.update(
            attempt_number=job["attempt_number"],
            attempt_token=attempt_token,
            attempt_protocol=ATTEMPT_FENCING,
        )
    return payload


def _full_payload_fields(job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    job_id: str = job["job_id"]
    return {
        "image": job["image"] or settings.job_image,
        "command": (
            job["command"]
            if job["command"] is not None
            else ["--config", f"/data/{job['config_path']}", "--job_id", job_id]
        ),
        "container_name": job["container_name"] or f"opeva-job-{job_id}"[:63],
        "volumes": (
            job["volumes"]
            if job["volumes"] is not None
            else [{"host": str(settings.shared_dir.resolve()), "container": "/data", "mode": "rw"}]
        ),
        "env": job["env"] if job["env"] is not None else {},
    }


def _status_report(body: BaseModel) -> StatusReport:
    """The store's view of a job-status body of either protocol (fields a body lacks stay None)."""
    names = {field.name for field in dataclasses.fields(StatusReport)}
    return StatusReport(**body.model_dump(include=names))


def _unknown_host(settings: Settings, name: str) -> bool:
    return settings.hosts is not None and name not in settings.hosts


def _bad_request(reason: str) -> JSONResponse:
    return JSONResponse(status_code=400, content={"detail": reason})


def _stale_attempt() -> JSONResponse:
    # Same shape as the orchestrator's: a worker tells "my attempt is over" from any other 409 by the code.
    detail = {"code": STALE_ATTEMPT_CODE, "message": STALE_ATTEMPT_MESSAGE}
    return JSONResponse(status_code=409, content={"detail": detail})


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


@dataclasses.dataclass(frozen=True)
class _Deps:
    store: Store
    settings: Settings
    clock: Clock


def create_app(store: Store, settings: Settings, clock: Clock = time.time) -> FastAPI:
    if store.protocol != settings.protocol:
        raise ValueError(f"store speaks protocol {store.protocol}, settings say {settings.protocol}")
    prepare_shared_dir(settings.shared_dir)

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

    deps = _Deps(store, settings, clock)
    if settings.protocol == CURRENT:
        _add_agent_routes(app, deps)
        _add_submit_route(app, deps)
        _add_ops_routes(app, deps)
    else:
        _add_legacy_agent_routes(app, deps)
        _add_legacy_submit_route(app, deps)
    _add_shared_routes(app, deps)
    _add_error_handlers(app)
    return app


# -- agent API ------------------------------------------------------------------------------------------------
# Next-job and job-status bodies differ by protocol, so each protocol registers its own endpoint functions over
# the shared logic below; the OpenAPI schema then shows the bodies the server really accepts.


def _hand_out(deps: _Deps, worker_id: str, fencing: bool) -> Response:
    claim = deps.store.claim_next(worker_id, deps.clock(), fencing=fencing)
    if claim is None:
        return Response(status_code=204)
    job = claim.job
    log.info("job %s dispatched to %s (attempt %s)", job["job_id"], worker_id, job.get("attempt_number"))
    return JSONResponse(build_payload(job, deps.settings, claim.attempt_token))


def _apply_report(deps: _Deps, report: StatusReport) -> Response:
    try:
        new_status = deps.store.report_status(report, deps.clock())
    except JobNotFound:
        return _not_found()
    except UnknownStatus:
        return _bad_request(f"unknown status {report.status!r}")
    except StaleAttempt:
        return _stale_attempt()
    except TransitionRejected as exc:
        return _conflict(exc)
    return JSONResponse({"ok": True, "status": new_status})


def _add_agent_routes(app: FastAPI, deps: _Deps) -> None:
    @app.post("/api/agent/next-job", tags=["agent"], responses={204: {"description": "no work"}})
    def next_job(body: NextJobRequest) -> Response:
        fencing = ATTEMPT_FENCING in {capability.strip() for capability in body.capabilities}
        return _hand_out(deps, body.worker_id, fencing)

    @app.post("/api/agent/job-status", tags=["agent"])
    def job_status(body: JobStatusRequest) -> Response:
        return _apply_report(deps, _status_report(body))

    @app.post("/api/agent/heartbeat", tags=["agent"])
    def heartbeat(body: HeartbeatRequest) -> Response:
        if _unknown_host(deps.settings, body.worker_id):
            return _bad_request(unknown_host_detail("worker_id", body.worker_id, deps.settings.hosts or ()))
        deps.store.heartbeat(body.worker_id, body.info, deps.clock())
        return JSONResponse({"ok": True})


def _add_legacy_agent_routes(app: FastAPI, deps: _Deps) -> None:
    @app.post("/api/agent/next-job", tags=["agent"], responses={204: {"description": "no work"}})
    def next_job_2026_04(body: LegacyNextJobRequest) -> Response:
        return _hand_out(deps, body.worker_id, fencing=False)

    @app.post("/api/agent/job-status", tags=["agent"])
    def job_status_2026_04(body: LegacyJobStatusRequest) -> Response:
        return _apply_report(deps, _status_report(body))

    @app.post("/api/agent/heartbeat", tags=["agent"])
    def heartbeat_2026_04(body: HeartbeatRequest) -> dict[str, bool]:
        deps.store.heartbeat(body.worker_id, body.info, deps.clock())
        return {"ok": True}


# -- job submission -------------------------------------------------------------------------------------------


def _submit(deps: _Deps, body: LegacyRunSimulationRequest, profile: str | None = None) -> Response:
    """Queue a job for ``body``; the answer names what was queued (and, in 1.0, the compute profile)."""
    shared_dir = deps.settings.shared_dir
    configs_dir = shared_dir / "configs"
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
    job = deps.store.create_job(
        NewJob(
            job_id=job_id,
            config_path=config_path,
            job_name=job_name,
            target_host=body.target_host,
            target_worker_profile=profile,
            image=body.image,
            command=body.command,
            container_name=body.container_name,
            volumes=None if body.volumes is None else [v.model_dump() for v in body.volumes],
            env=body.env,
        ),
        deps.clock(),
    )
    log.info("job %s queued (%s, target_host=%s)", job_id, config_path, body.target_host)
    answer = {
        "job_id": job_id,
        "status": job["status"],
        "job_name": job_name,
        "config_path": config_path,
        "target_host": body.target_host,
    }
    if deps.settings.protocol == CURRENT:
        answer["target_worker_profile"] = profile
    return JSONResponse(answer)


def _add_submit_route(app: FastAPI, deps: _Deps) -> None:
    @app.post("/run-simulation", tags=["jobs"])
    def run_simulation(body: RunSimulationRequest) -> Response:
        if body.target_host is not None and _unknown_host(deps.settings, body.target_host):
            return _bad_request(unknown_host_detail("target_host", body.target_host, deps.settings.hosts or ()))
        if body.target_host is not None and body.target_worker_profile is not None:
            # A profile chooses among hosts; with a named host there is nothing left to choose.
            return _bad_request("target_worker_profile only applies when no target_host is given")
        return _submit(deps, body, body.target_worker_profile)


def _add_legacy_submit_route(app: FastAPI, deps: _Deps) -> None:
    @app.post("/run-simulation", tags=["jobs"])
    def run_simulation_2026_04(body: LegacyRunSimulationRequest) -> Response:
        return _submit(deps, body)


# -- operators (1.0) ------------------------------------------------------------------------------------------


def _add_ops_routes(app: FastAPI, deps: _Deps) -> None:
    @app.post("/ops/jobs/{job_id}/requeue", tags=["ops"])
    def requeue(job_id: str, body: RequeueRequest | None = None) -> Response:
        request = body or RequeueRequest()
        if deps.store.get_job(job_id) is None:
            return _not_found()
        host = request.preferred_host
        if host is not None and _unknown_host(deps.settings, host):
            return _bad_request(unknown_host_detail("preferred_host", host, deps.settings.hosts or ()))
        try:
            new_status = deps.store.requeue(
                job_id, deps.clock(), Requeue(request.force, request.preferred_host, request.require_host)
            )
        except JobNotFound:
            return _not_found()
        except TransitionRejected as exc:
            return _conflict(exc)
        log.info("job %s requeued by an operator (force=%s, preferred_host=%s)", job_id, request.force, host)
        return JSONResponse({"message": "job requeued", "job_id": job_id, "status": new_status})


# -- routes both protocols share ------------------------------------------------------------------------------


def _add_shared_routes(app: FastAPI, deps: _Deps) -> None:
    store, settings, clock = deps.store, deps.settings, deps.clock
    shared_dir = settings.shared_dir

    @app.get("/status/{job_id}", tags=["agent"])
    def job_status_get(job_id: str) -> Response:
        job = store.get_job(job_id)
        if job is None:
            return _not_found()
        keys = ("job_id", "status", "worker_id", "exit_code", "error", "updated_at", "status_updated_at")
        answer = {key: job[key] for key in keys}
        if settings.protocol == CURRENT and job.get("attempt_number"):
            answer["attempt_number"] = job["attempt_number"]  # lets a worker see its attempt was replaced
        return JSONResponse(answer)

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
        answer: dict[str, Any] = {"ok": True, "backend": "opeva-devserver", "payload_mode": settings.payload_mode}
        if settings.protocol == CURRENT:
            answer["protocol"] = settings.protocol
        return answer


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(JobNotFound)
    async def _job_not_found(_: Request, __: JobNotFound) -> Response:
        return _not_found()

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> Response:
        return _validation_failed(exc.errors())

    @app.exception_handler(UnicodeError)
    async def _bad_text(_: Request, __: UnicodeError) -> Response:
        return _unprocessable("strings must be valid Unicode (no lone surrogates)")
