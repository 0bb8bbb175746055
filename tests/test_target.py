from __future__ import annotations

import pytest

from brpc._wire.target import format_target, parse_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:4433", ("127.0.0.1", 4433)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("agents.example.com:443", ("agents.example.com", 443)),
    ],
)
def test_parse(target: str, expected: tuple[str, int]) -> None:
    assert parse_target(target) == expected
    assert parse_target(format_target(*expected)) == expected


@pytest.mark.parametrize(
    ("target", "hint"),
    [
        ("localhost", "needs a port"),
        (":443", "needs a port"),
        ("::1:443", "brackets"),
        ("[::1]443", "IPv6 target"),
        ("[nope]:443", "not an IPv6 address"),
        ("host:0", "1 to 65535"),
        ("host:http", "1 to 65535"),
        ("", "host:port"),
        ("http://host:1", "plain 'host:port' .*'http:'.*'host:1'"),
        ("https://[::1]:1", "no scheme .*'https:'.*'\\[::1\\]:1'"),
        ("dns:///host:1", "no scheme .*'dns:'.*'host:1'"),
        ("dns:host:1", "no scheme .*'dns:'.*'host:1'"),
        ("unix:///tmp/sock", "plain 'host:port'"),
    ],
)
def test_bad_targets_say_what_is_wrong(target: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse_target(target)
