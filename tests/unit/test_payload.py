"""The payload model: every field checked once; nothing but PayloadError ever escapes; no accepted
payload leads to a path outside the shared root."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from worker_agent.config import Settings
from worker_agent.payload import JobPayload, PayloadError, parse
from worker_agent.policy import allowed_volume_roots, build_spec

GOOD = {"job_id": "job-1", "config_path": "configs/a.yaml"}


def reason_of(raw: Any) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse(raw)
    return caught.value


def test_minimal_legacy_payload_gets_the_default_command() -> None:
    job = parse({**GOOD, "job_name": "demo", "preferred_host": "h1", "unknown": {"x": 1}})
    assert job.command_args("/data") == ["--config", "/data/configs/a.yaml", "--job_id", "job-1"]
    assert job.docker_name() == "opeva-job-job-1"
    assert (job.privileged, job.network_mode, job.pid_mode) == (False, None, None)


@pytest.mark.parametrize(
    "job_id",
    ["", "..", "../x", "a/b", "a/../b", "/etc", ".hidden", "-x", "a..b", "a\x00b", "a b", "é", "x" * 129, 7, None],
)
def test_unsafe_job_id_is_refused_and_not_usable(job_id: Any) -> None:
    error = reason_of({**GOOD, "job_id": job_id})
    assert error.job_id is None
    assert error.reason.startswith("job_id")


@pytest.mark.parametrize(
    "config_path",
    ["/etc/passwd", "../x.yaml", "configs/../../x", "", "configs/", "a\x00b", "x" * 256 + "/a", "\ud800.yaml", 3],
)
def test_bad_config_path_is_refused_with_usable_job_id(config_path: Any) -> None:
    error = reason_of({**GOOD, "config_path": config_path})
    assert error.job_id == "job-1"
    assert error.reason.startswith("config_path")


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"A-B": "x"}}, "env"),
        ({"env": {"A": 1}}, "env"),
        ({"env": {"A": "x" * 40_000}}, "env"),
        ({"env": {f"V{i}": "x" * 30_000 for i in range(10)}}, "env"),
        ({"command": "echo 'unclosed"}, "command"),
        ({"command": ["a"] * 300}, "command"),
        ({"command": ["x" * 5000]}, "command"),
        ({"command": 5}, "command"),
        ({"privileged": "true"}, "privileged"),
        ({"privileged": 1}, "privileged"),
        ({"network_mode": "host; rm -rf /"}, "network_mode"),
        ({"image": "evil image"}, "image"),
        ({"image": ""}, "image"),
        ({"job_name": "n" * 257}, "job_name"),
        ({"volumes": [{"host": "relative", "container": "/x"}]}, "volumes"),
        ({"volumes": [{"host": "/a/../b", "container": "/x"}]}, "volumes"),
        ({"volumes": [{"host": "/a", "container": "/x", "mode": "rwx"}]}, "volumes"),
        ({"volumes": [{"host": "/a", "container": "/x"}] * 65}, "volumes"),
        ({"volumes": "/:/host"}, "volumes"),
        ({"cap_add": ["SYS_ADMIN"]}, "payload"),
        ({"devices": ["/dev/sda:/dev/sda"]}, "payload"),
        ({"security_opt": ["seccomp=unconfined"]}, "payload"),
        ({"ipc_mode": "host"}, "payload"),
    ],
)
def test_each_bad_field_is_refused_naming_it(extra: dict[str, Any], where: str) -> None:
    error = reason_of({**GOOD, **extra})
    assert error.job_id == "job-1"
    assert error.reason.startswith(where), error.reason
    assert len(error.reason) <= 300 and error.reason.isprintable()


def test_empty_refused_options_are_harmless() -> None:
    assert parse({**GOOD, "cap_add": [], "devices": None, "security_opt": []}).job_id == "job-1"


def test_not_an_object_is_refused_without_job_id() -> None:
    for raw in ([GOOD], "job", 3, None):
        assert reason_of(raw).job_id is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("my job/../x", "my-job-..-x"),
        ("a", "opeva-job-job-1"),
        ("---", "opeva-job-job-1"),
        ("x" * 100, "x" * 63),
        ("ok_name.1", "ok_name.1"),
        ("échec", "chec"),
    ],
)
def test_docker_name_is_always_valid(name: str, expected: str) -> None:
    assert parse({**GOOD, "container_name": name}).docker_name() == expected


def test_config_file_must_exist_inside_the_root(tmp_path: Path) -> None:
    shared, outside = tmp_path / "shared", tmp_path / "outside"
    (shared / "configs").mkdir(parents=True)
    outside.mkdir()
    (outside / "x.yaml").write_text("x")
    (shared / "configs" / "a.yaml").write_text("a")
    (shared / "configs" / "out.yaml").symlink_to(outside / "x.yaml")
    (shared / "configs" / "loop.yaml").symlink_to(shared / "configs" / "loop.yaml")

    assert parse(GOOD).config_file(shared) == (shared / "configs" / "a.yaml").resolve()
    for path, words in (
        ("configs/out.yaml", "leaves"),
        ("configs/missing.yaml", "not found"),
        ("configs", "not found"),
        ("configs/loop.yaml", "configs/loop.yaml"),
    ):
        with pytest.raises(PayloadError, match=words) as caught:
            parse({**GOOD, "config_path": path}).config_file(shared)
        assert caught.value.job_id == "job-1"


# --- the rules a hand-written check could easily get wrong ---


def where_of(raw: Any) -> str:
    """The field path a refusal names: the reason's part before ': '."""
    return reason_of(raw).reason.split(": ", 1)[0]


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"attempt_number": True}, "attempt_number"),  # bool is an int in Python, not in the payload
        ({"attempt_number": False}, "attempt_number"),
        ({"attempt_number": 1.0}, "attempt_number"),
        ({"attempt_number": "1"}, "attempt_number"),
        ({"attempt_number": -1}, "attempt_number"),
        ({"attempt_number": 2**31 + 1}, "attempt_number"),
        ({"attempt_token": ""}, "attempt_token"),
        ({"attempt_token": "t" * 513}, "attempt_token"),
        ({"attempt_token": 7}, "attempt_token"),
        ({"attempt_token": "t\ud800"}, "attempt_token"),  # a lone surrogate, as json.loads gives for "\ud800"
        ({"privileged": 0}, "privileged"),
        ({"privileged": "false"}, "privileged"),
        ({"job_name": 5}, "job_name"),
        ({"container_name": True}, "container_name"),
        ({"container_name": "a\x00b"}, "container_name"),
        ({"image": "alpine\n"}, "image"),  # Python's `$` would match before the newline
        ({"network_mode": "bridge\n"}, "network_mode"),
        ({"pid_mode": "private\n"}, "pid_mode"),
        ({"volumes": [{"host": "/a", "container": "/b", "mode": "ro\n"}]}, "volumes.0.mode"),
        ({"volumes": [{"host": "/a", "container": "/b", "mode": None}]}, "volumes.0.mode"),
        ({"volumes": [{"host": "/a", "container": "/b"}, "/c:/d"]}, "volumes.1"),
        ({"volumes": [{"host": "/a", "container": "/b"}, None]}, "volumes.1"),
        ({"volumes": [{"container": "/b"}]}, "volumes.0.host"),
        ({"volumes": [{"host": "/a", "container": "b"}]}, "volumes.0.container"),
        ({"volumes": ({"host": "/a", "container": "/b"},)}, "volumes"),  # strict: a tuple is not a JSON array
        ({"command": ["echo", 1]}, "command.1"),
        ({"command": ["echo", "a\x00"]}, "command.1"),
        ({"command": {"0": "echo"}}, "command"),
        ({"env": {"OK": "x", "BAD": None}}, "env.BAD"),
        ({"env": {f"V{i}": "x" for i in range(257)}}, "env"),
        ({"deucalion_options": []}, "deucalion_options"),
        ({"deucalion_options": {str(i): i for i in range(33)}}, "deucalion_options"),
        # Only the fields whose default is None accept an explicit null.
        ({"volumes": None}, "volumes"),
        ({"env": None}, "env"),
        ({"privileged": None}, "privileged"),
    ],
)
def test_strict_types_and_limits_name_the_exact_field(extra: dict[str, Any], where: str) -> None:
    assert where_of({**GOOD, **extra}) == where


@pytest.mark.parametrize("missing", ["job_id", "config_path"])
def test_a_missing_required_field_is_named(missing: str) -> None:
    raw = dict(GOOD)
    del raw[missing]
    error = reason_of(raw)
    assert error.reason.startswith(f"{missing}: ") and "required" in error.reason.lower()
    assert error.job_id == (None if missing == "job_id" else "job-1")


def test_explicit_null_is_the_default_for_optional_fields() -> None:
    optional = ("job_name", "image", "command", "container_name", "network_mode", "pid_mode")
    nulls = dict.fromkeys((*optional, "attempt_number", "attempt_token", "deucalion_options"))
    job = parse({**GOOD, **nulls})
    assert all(getattr(job, name) is None for name in nulls)
    assert job.command_args("/data") == ["--config", "/data/configs/a.yaml", "--job_id", "job-1"]


def test_limits_are_inclusive_and_count_characters() -> None:
    job = parse(
        {
            **GOOD,
            "job_id": "j" * 128,
            "job_name": "é" * 256,  # 512 bytes: the limit is in characters
            "attempt_number": 2**31,
            "attempt_token": "t" * 512,
            "image": "a" * 255,
            "volumes": [{"host": "/a", "container": "/b"}] * 64,
            "env": {f"V{i}": "é" for i in range(256)},
            "deucalion_options": {str(i): i for i in range(32)},
        }
    )
    assert (len(job.volumes), len(job.env), job.attempt_number) == (64, 256, 2**31)
    assert parse({**GOOD, "attempt_number": 0}).attempt_number == 0


def test_the_first_field_in_declaration_order_is_reported() -> None:
    # The payload's own key order is the reverse: the order of the checks must not follow it.
    assert where_of({"env": {"A": 1}, "command": 3, **GOOD}) == "command"
    assert where_of({"pid_mode": "x y", "image": "x y", "job_name": 5, **GOOD}) == "job_name"
    assert where_of({"config_path": "/abs", "job_id": "../x"}) == "job_id"
    # A too long list is reported before a bad item; a dict's items before its size.
    assert where_of({**GOOD, "volumes": [3] + [{"host": "/a", "container": "/b"}] * 64}) == "volumes"
    assert where_of({**GOOD, "env": {f"V{i}": 3 for i in range(300)}}) == "env.V0"
    # Host options are refused before any field is looked at.
    error = reason_of({"job_id": 7, "cap_add": ["SYS_ADMIN"]})
    assert (error.reason, error.job_id) == ("payload: cap_add is not allowed", None)


@pytest.mark.parametrize("value", [None, [], {}, "", False, 0])
def test_an_empty_host_option_is_harmless(value: Any) -> None:
    assert parse({**GOOD, "sysctls": value, "runtime": value}).job_id == "job-1"


@pytest.mark.parametrize("value", [True, "runc", ["x"], [""], {"a": None}, 1])
def test_any_other_host_option_is_refused(value: Any) -> None:
    assert reason_of({**GOOD, "runtime": value}).reason == "payload: runtime is not allowed"


def test_a_parsed_payload_is_checked_immutable_and_its_own() -> None:
    raw = {
        **GOOD,
        "command": ["run", "x"],
        "env": {"A": "1"},
        "volumes": [{"host": "//srv//data/", "container": "/in/./x", "extra": 1}, {"host": "/b", "container": "/c"}],
    }
    job = parse(raw)
    assert [(v.host, v.container, v.mode) for v in job.volumes] == [("/srv/data", "/in/x", "rw"), ("/b", "/c", "rw")]
    raw["command"].append("--evil")
    raw["env"]["B"] = "2"
    raw["volumes"].append({"host": "/", "container": "/host"})
    assert (job.command_args("/data"), job.env, len(job.volumes)) == (["run", "x"], {"A": "1"}, 2)
    with pytest.raises(AttributeError):
        job.privileged = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        job.volumes[0].host = "/"  # type: ignore[misc]


# --- property-based: arbitrary JSON and crafted paths ---

_PARTS = st.sampled_from(["configs", "a.yaml", "..", ".", "", "out", "loop", "jobs", "x" * 300, "\x00", "\ud800"])
_PATHS = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "/", "//"]), st.lists(_PARTS))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | _PATHS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_VOLUME = st.fixed_dictionaries(
    {"host": _PATHS | st.sampled_from(["/", "/var/run/docker.sock", "/run/docker.sock"]), "container": _PATHS},
    optional={"mode": st.sampled_from(["rw", "ro", "x"])},
)
_FIELDS = {
    "job_id": st.sampled_from(["job-1", "..", "a/b", "x" * 200, ""]) | st.text(max_size=12) | _JSON,
    "config_path": _PATHS | _JSON,
    "volumes": st.lists(_VOLUME, max_size=3) | _JSON,
    "env": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3) | _JSON,
    "command": st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3) | _JSON,
    "image": st.sampled_from(["opeva-test-busybox:latest", "alpine"]) | _JSON,
    "container_name": st.text(max_size=80) | _JSON,
    "privileged": st.booleans() | _JSON,
    "network_mode": st.sampled_from(["host", "bridge", "container:x", "none"]) | _JSON,
    "pid_mode": st.sampled_from(["host", "container:x"]) | _JSON,
    "cap_add": _JSON,
}
PAYLOADS = st.fixed_dictionaries({}, optional=_FIELDS) | _JSON


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    """A shared root with a config, a symlink out of it, a symlink loop, and a planted docker.sock."""
    root = tmp_path_factory.mktemp("prop")
    shared, outside = root / "shared", root / "outside"
    (shared / "configs").mkdir(parents=True)
    (shared / "jobs").mkdir()
    outside.mkdir()
    (shared / "configs" / "a.yaml").write_text("a")
    (outside / "a.yaml").write_text("secret")
    (shared / "out").symlink_to(outside)
    (shared / "configs" / "out").symlink_to(outside / "a.yaml")
    (shared / "loop").symlink_to(shared / "loop")
    # Volumes opted in under the share (ALLOWED_VOLUME_ROOTS), so that hostile volume paths get checked.
    settings = Settings(
        shared_dir=shared,
        worker_id="w",
        image="opeva-test-busybox:latest",
        allowed_images=("*",),
        allowed_volume_roots=(shared,),
    )
    return shared, settings


def check(raw: Any, shared: Path, config: Settings) -> None:
    """parse + build_spec raise nothing but PayloadError; an accepted payload's paths are all inside."""
    root = shared.resolve()
    try:
        job = parse(raw)
        spec = build_spec(job, config)
    except PayloadError:
        return
    event("accepted")
    assert isinstance(job, JobPayload)
    log_path = Path(os.path.normpath(root / "jobs" / job.job_id / "logs" / f"{job.job_id}.log"))
    assert log_path.parent.parent == root / "jobs" / job.job_id
    assert job.config_file(shared).is_relative_to(root)
    volume_roots = allowed_volume_roots(config)
    for mount in spec.mounts:
        assert any(Path(mount.host).resolve().is_relative_to(r) for r in volume_roots), mount
        assert not Path(mount.host).resolve().is_socket()
    assert not spec.privileged and spec.network_mode != "host" and spec.pid_mode != "host"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=PAYLOADS)
def test_any_input_raises_only_payload_error(raw: Any, share: tuple[Path, Settings]) -> None:
    check(raw, *share)


_STEPS = st.sampled_from(["configs", "a.yaml", "out", "..", ".", "loop", "jobs", "docker.sock"])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_near_valid_payloads_never_lead_outside(data: st.DataObject, share: tuple[Path, Settings]) -> None:
    """Mostly-valid payloads, so that many are accepted, with hostile paths mixed in."""
    shared, config = share
    relative = st.lists(_STEPS, min_size=1, max_size=4).map("/".join)
    bases = [str(shared), f"{shared}/out", f"{shared}/loop", f"{shared}/configs", str(shared.parent), "/", "/run"]
    host = st.builds(lambda base, tail: base + tail, st.sampled_from(bases), st.just("") | relative.map("/{}".format))
    volume = st.fixed_dictionaries(
        {"host": host, "container": st.sampled_from(["/data", "/data/x", "/in", "/", "/in/../data"])},
        optional={"mode": st.sampled_from(["rw", "ro"])},
    )
    raw = data.draw(
        st.fixed_dictionaries(
            {
                "job_id": st.sampled_from(["job-1", "a", "A.b_c-9"]) | st.sampled_from(["../x", "a/..", ""]),
                "config_path": st.just("configs/a.yaml") | st.just("configs/a.yaml") | relative,
            },
            optional={
                "volumes": st.lists(volume, max_size=2),
                "image": st.sampled_from(["opeva-test-busybox:latest", "x/y@sha256:00"]),
                "privileged": st.sampled_from([False, False, True]),
                "network_mode": st.sampled_from(["bridge", "none", "host", "container:w"]),
                "pid_mode": st.sampled_from(["host", "container:w", "private"]),
                "env": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), st.text(max_size=5)),
                "command": st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3),
                "container_name": st.text(max_size=70),
            },
        )
    )
    check(raw, shared, config)


@settings(max_examples=300, deadline=None)
@given(
    job_id=st.text(min_size=1, max_size=140),
    config_path=st.text(min_size=1, max_size=40),
)
def test_accepted_ids_and_paths_stay_inside(job_id: str, config_path: str, share: tuple[Path, Settings]) -> None:
    shared, _ = share
    root = shared.resolve()
    try:
        job = parse({"job_id": job_id, "config_path": config_path})
    except PayloadError:
        return
    assert "/" not in job.job_id and job.job_id not in (".", "..")
    assert (root / "jobs" / job.job_id).resolve().parent == root / "jobs"
    with contextlib.suppress(PayloadError):
        assert job.config_file(shared).is_relative_to(root)
