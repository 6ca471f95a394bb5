"""SLURM_* settings: defaults, parsing, and a ConfigError naming the variable for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_agent.config import ConfigError
from worker_agent.executors.slurm_script import ResourceLimits, Resources
from worker_agent.executors.slurm_settings import SETTINGS, SlurmSettings, load


def test_defaults() -> None:
    settings = load({}, "/srv/share")
    assert settings == SlurmSettings(shared_dir="/srv/share")
    assert settings.local and settings.container_runtime == "apptainer" and settings.staging == "shared"
    assert settings.run_dir == "" and settings.resources == Resources() and settings.limits == ResourceLimits()


def test_shared_dir_defaults_to_the_workers_share() -> None:
    assert load({"OPEVA_SHARED_DIR": "/mnt/opeva/"}).shared_dir == "/mnt/opeva"
    assert load({"OPEVA_SHARED_DIR": "/mnt/opeva", "SLURM_SHARED_DIR": "/lustre/opeva"}).shared_dir == "/lustre/opeva"
    assert load({"SLURM_SHARED_DIR": ""}, Path("/srv/share")).shared_dir == "/srv/share"


def test_values(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("key")
    settings = load(
        {
            "SLURM_SSH_HOST": "login.deucalion.example",
            "SLURM_SSH_USER": "opeva",
            "SLURM_SSH_PORT": "2200",
            "SLURM_SSH_KEY": str(key),
            "SLURM_PARTITION": "normal-x86",
            "SLURM_ACCOUNT": "f202400001",
            "SLURM_TIME": "2:00:00",
            "SLURM_CPUS_PER_TASK": "4",
            "SLURM_MEM": "8G",
            "SLURM_GPUS": "0",
            "SLURM_ALLOWED_PARTITIONS": "normal-a100-40, dev-x86",
            "SLURM_MAX_TIME": "2-00:00:00",
            "SLURM_MAX_MEM": "64G",
            "SLURM_MODULES": "Apptainer/1.2, CUDA",
            "SLURM_EXTRA_ARGS": "--qos=normal --exclusive",
            "SLURM_CONTAINER_RUNTIME": "singularity",
            "SLURM_STAGING": "copy",
            "SLURM_LOST_GRACE": "120",
        },
        "/srv/share",
    )
    assert not settings.local
    assert (settings.ssh_host, settings.ssh_user, settings.ssh_port, settings.ssh_key) == (
        "login.deucalion.example",
        "opeva",
        2200,
        str(key),
    )
    assert settings.resources == Resources("normal-x86", "f202400001", 120, 4, 8192, 0)
    assert settings.limits.partitions == {"normal-a100-40", "dev-x86"}
    assert (settings.limits.max_time_minutes, settings.limits.max_mem_mb) == (2880, 65536)
    assert settings.modules == ("Apptainer/1.2", "CUDA")  # in the order given
    assert settings.extra_args == ("--qos=normal", "--exclusive")
    assert (settings.container_runtime, settings.staging, settings.lost_grace) == ("singularity", "copy", 120.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLURM_SSH_HOST", "-oProxyCommand=evil"),
        ("SLURM_SSH_PORT", "70000"),
        ("SLURM_SSH_PORT", "ssh"),
        ("SLURM_SSH_KEY", "/nonexistent/key"),
        ("SLURM_SSH_KNOWN_HOSTS", "/nonexistent/known_hosts"),
        ("SLURM_PARTITION", "debug;rm"),
        ("SLURM_TIME", "0"),
        ("SLURM_TIME", "an hour"),
        ("SLURM_CPUS_PER_TASK", "-1"),
        ("SLURM_MEM", "lots"),
        ("SLURM_ALLOWED_ACCOUNTS", "a,b c,$d"),
        ("SLURM_MAX_GPUS", "two"),
        ("SLURM_EXTRA_ARGS", "--qos=normal oops"),
        ("SLURM_EXTRA_ARGS", "--comment='unterminated"),
        ("SLURM_CONTAINER_RUNTIME", "lxc"),
        ("SLURM_STAGING", "rsync"),
        ("SLURM_SHARED_DIR", "relative/path"),
        ("SLURM_RUN_DIR", "/with space"),
        ("SLURM_SIF_DIR", "/a:b"),
        ("SLURM_LOST_GRACE", "0"),
        ("SLURM_POLL_INTERVAL", "nan"),
        ("SLURM_TEMPLATE", "/nonexistent.tmpl"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load({name: value}, "/srv/share")


def test_a_default_above_its_cap_is_refused() -> None:
    with pytest.raises(ConfigError, match="SLURM_MEM: 8192M is above SLURM_MAX_MEM=4096M"):
        load({"SLURM_MEM": "8G", "SLURM_MAX_MEM": "4G"}, "/srv/share")


def test_a_share_path_the_batch_script_cannot_hold_must_be_overridden() -> None:
    with pytest.raises(ConfigError, match="SLURM_SHARED_DIR"):
        load({"OPEVA_SHARED_DIR": "/mnt/my share"})


def test_every_setting_has_help_and_a_known_field() -> None:
    names = [setting.env for setting in SETTINGS]
    assert len(names) == len(set(names))
    for setting in SETTINGS:
        assert setting.env.startswith("SLURM_") and setting.help.endswith(".")
        group, _, field = setting.target.rpartition(".")
        owner = {"": SlurmSettings(), "resources": Resources(), "limits": ResourceLimits()}[group]
        assert hasattr(owner, field), setting.env
