from __future__ import annotations

from pathlib import Path

import pytest

from worker_agent import config
from worker_agent.cli import build_parser


def load(env: dict[str, str], *argv: str) -> config.Settings:
    return config.load(build_parser().parse_args(list(argv)), env)


def test_defaults_match_the_seed_readme() -> None:
    settings = load({})
    assert settings.server == "http://localhost:8000"
    assert settings.shared_dir == Path("/opt/opeva_shared_data")
    assert (settings.poll_interval, settings.heartbeat_interval, settings.status_poll_interval) == (5, 30, 10)
    assert settings.log_level == "INFO"
    assert settings.worker_id  # the hostname


def test_env_values_are_read_and_a_flag_wins() -> None:
    env = {"OPEVA_SERVER": "https://backend:8000/", "WORKER_ID": "w1", "POLL_INTERVAL": "2.5", "LOG_LEVEL": "debug"}
    settings = load(env, "--poll-interval", "7", "--exit-after-job")
    assert settings.server == "https://backend:8000"
    assert settings.worker_id == "w1"
    assert settings.poll_interval == 7
    assert settings.log_level == "DEBUG"
    assert settings.exit_after_job is True


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"POLL_INTERVAL": "abc"}, "POLL_INTERVAL"),
        ({"WORKER_HEARTBEAT_INTERVAL": "-1"}, "WORKER_HEARTBEAT_INTERVAL"),
        ({"STATUS_POLL_INTERVAL": "0"}, "STATUS_POLL_INTERVAL"),
        ({"STATUS_POLL_INTERVAL": "nan"}, "STATUS_POLL_INTERVAL"),
        ({"OPEVA_SERVER": "backend:8000"}, "OPEVA_SERVER"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"IMAGE_PULL_POLICY": "sometimes"}, "IMAGE_PULL_POLICY"),
        ({"WORKER_EXIT_AFTER_JOB": "maybe"}, "WORKER_EXIT_AFTER_JOB"),
        ({"MAX_LOG_BYTES": "lots"}, "MAX_LOG_BYTES"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(config.ConfigError, match=named):
        load(env)


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(config.ConfigError, match="--poll-interval"):
        load({}, "--poll-interval", "soon")


def test_sizes_and_lists() -> None:
    settings = load({"MAX_LOG_BYTES": "512M", "ALLOWED_IMAGES": "a/*, b:1", "JOB_TIMEOUT": "0"})
    assert settings.max_log_bytes == 512 * 1024**2
    assert settings.allowed_images == ("a/*", "b:1")
    assert settings.job_timeout is None


def test_default_image_allow_list_is_the_worker_image_repository() -> None:
    settings = load({"WORKER_IMAGE": "registry:5000/team/sim:2.1"})
    assert settings.image_allowed_patterns() == (
        "registry:5000/team/sim",
        "registry:5000/team/sim:*",
        "registry:5000/team/sim@*",
    )


def test_token_is_not_shown() -> None:
    lines = config.describe(load({"OPEVA_TOKEN": "s3cr3t-token"}))
    assert "OPEVA_TOKEN=***" in lines
    assert not any("s3cr3t-token" in line for line in lines)


def test_every_option_is_documented_in_help() -> None:
    text = build_parser().format_help()
    for option in config.OPTIONS:
        assert option.env in text and option.flag in text


def test_readme_documents_every_variable() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [option.env for option in config.OPTIONS if f"`{option.env}`" not in readme]
    assert missing == []
