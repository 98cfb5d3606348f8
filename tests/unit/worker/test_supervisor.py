"""The supervisor's pure parts: what each child is told, and when a crash is a crash loop."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from usage_ingest.errors import ConfigurationError
from usage_ingest.settings import ENV_PREFIX, LogFormat, SaslMechanism, SecurityProtocol, Settings
from usage_ingest.worker.supervisor import (
    CrashHistory,
    RestartPolicy,
    Supervisor,
    child_environment,
    metrics_port_of,
)


def test_a_child_loads_exactly_the_parents_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = Settings(
        kafka_bootstrap_servers="k1:9092,k2:9092",
        database_url=SecretStr("postgresql://u:p%40ss@db:5432/billing"),
        group_id="billing",
        kafka_security_protocol=SecurityProtocol.SASL_SSL,
        kafka_sasl_mechanism=SaslMechanism.SCRAM_SHA_512,
        kafka_sasl_username="ingest",
        kafka_sasl_password=SecretStr("s3cret with spaces"),
        shutdown_grace_s=12.5,
        log_format=LogFormat.JSON,
        metrics_port=9500,
    )
    # A variable the parent's flags overrode, and one for a setting that is unset (None).
    base = {"PATH": "/bin", f"{ENV_PREFIX}GROUP_ID": "other", f"{ENV_PREFIX}KAFKA_SSL_CAFILE": "x"}
    env = child_environment(parent, 1, base)
    assert env["PATH"] == "/bin"
    assert f"{ENV_PREFIX}KAFKA_SSL_CAFILE" not in env
    assert env[f"{ENV_PREFIX}METRICS_PORT"] == "9501"

    for key in [k for k in env if k.startswith(ENV_PREFIX)]:
        monkeypatch.setenv(key, env[key])
    child = Settings()
    assert child == parent.model_copy(update={"metrics_port": 9501})


def test_metrics_ports_are_base_plus_index_and_zero_stays_off() -> None:
    assert [metrics_port_of(9464, i) for i in range(3)] == [9464, 9465, 9466]
    assert [metrics_port_of(0, i) for i in range(3)] == [0, 0, 0]


def test_metrics_ports_past_the_last_port_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="at most 65534"):
        Supervisor(Settings(metrics_port=65535), 2)
    Supervisor(Settings(metrics_port=0), 256)  # off: any number of processes


def test_backoff_doubles_up_to_the_cap_and_a_crash_loop_gives_up() -> None:
    history = CrashHistory(
        RestartPolicy(initial_backoff_s=1, max_backoff_s=4, max_restarts=5, window_s=60)
    )
    delays = [history.next_delay(now=t, ran_for_s=0.1) for t in range(6)]
    assert delays == [1, 2, 4, 4, 4, None]


def test_crashes_outside_the_window_are_forgotten_and_a_stable_run_resets_the_backoff() -> None:
    history = CrashHistory(
        RestartPolicy(initial_backoff_s=1, max_backoff_s=30, max_restarts=2, window_s=60)
    )
    assert history.next_delay(now=0, ran_for_s=1) == 1
    assert history.next_delay(now=10, ran_for_s=1) == 2
    # The third crash is 61 s after the first: only two in the window, and the child had run
    # long enough to count as stable, so the backoff starts again.
    assert history.next_delay(now=61, ran_for_s=60) == 1
    assert history.next_delay(now=62, ran_for_s=1) is None
