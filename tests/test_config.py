"""Flag parsing: durations, addresses, source lists and error messages."""

from __future__ import annotations

import argparse

import pytest

from exporter.config import DEFAULT_PORT, parse_args, parse_duration, parse_listen_address, parse_sources


@pytest.mark.parametrize(
    "text, seconds",
    [("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("0s", 0.0), ("1d", 86400.0)],
)
def test_duration_forms(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5 s", "-1s", "5sec", "1m5", "ms5"])
def test_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        parse_duration(text)


def test_listen_address_forms():
    assert parse_listen_address(":9999") == ("", 9999)
    assert parse_listen_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen_address("[::1]:8080") == ("::1", 8080)


@pytest.mark.parametrize("text", ["9999", "host:", "host:0", "host:70000", "host:http", "host:\u0661\u0669", "host:\u00b2"])
def test_listen_address_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid listen address"):
        parse_listen_address(text)


def test_sources_forms():
    assert parse_sources("auto") == ()
    assert parse_sources("tracefs,netlink") == ("tracefs", "netlink")
    assert parse_sources(" poll , poll ") == ("poll",)


def test_sources_rejects_unknown():
    with pytest.raises(argparse.ArgumentTypeError, match="ebpf"):
        parse_sources("tracefs,ebpf")


def test_defaults():
    config = parse_args([])
    assert config.listen_port == DEFAULT_PORT
    assert config.listen_host == ""
    assert config.telemetry_path == "/metrics"
    assert config.leftover_grace == 5.0
    assert config.poll_interval == 1.0
    assert config.topology_max == 200
    assert config.sources == ()


@pytest.mark.parametrize(
    "flag, fragment",
    [
        ("--poll.interval=0s", "--poll.interval"),
        ("--leftover.grace=five", "--leftover.grace"),
        ("--topology.max=0", "--topology.max"),
        ("--topology.max=\u00b2", "whole number"),
        ("--log.format=xml", "--log.format"),
        ("--events.source=bpf", "--events.source"),
        ("--web.listen-address=nowhere", "--web.listen-address"),
        ("--web.telemetry-path=metrics", "--web.telemetry-path"),
        ("--kubernetes=maybe", "--kubernetes"),
    ],
)
def test_invalid_flag_names_flag(flag, fragment, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args([flag])
    assert exited.value.code == 2
    assert fragment in capsys.readouterr().err
