"""Masking rules (processors/masking.py): every variable shape, the ordering traps, the
context rules, and the caches giving the same answer as a fresh classification."""

from __future__ import annotations

import pytest

from processors.masking import VAR, Masker, classify_token


def masked(text: str) -> str:
    return " ".join(Masker().mask(text))


@pytest.mark.parametrize(("text", "expected"), [
    # ordering traps: a digits rule run first would cut these apart
    ("2023-10-09 12:00:01,123", "<*>"),
    ("at 2023-10-09 12:00:01,123 done", "at <*> done"),
    ("10.0.0.1:8080", "<*>"),
    ("from 10.0.0.1:8080 to 10.0.0.2", "from <*> to <*>"),
    ("id 123e4567-e89b-12d3-a456-426614174000 ok", "id <*> ok"),
    ("flags 0x1f set", "flags <*> set"),
    ("user=42", "user=<*>"),
    ("took 35ms", "took <*>"),
    ("open /var/log/app.log failed", "open <*> failed"),
    # each shape
    ("n 42 f -3.5 e 1.5e-3", "n <*> f <*> e <*>"),
    ("at 2023-10-09T12:00:01.123Z", "at <*>"),
    ("at 12:00:01", "at <*>"),
    ("on 09/10/2023", "on <*>"),
    ("at Sun Jul 24 02:38:22 2005 end", "at <*> end"),
    ("ip6 fe80::1ff:fe23:4567:890a", "ip6 <*>"),
    ("ip6 [2001:db8::1]:8080 up", "ip6 <*> up"),
    ("mac 00:1A:2B:3C:4D:5E", "mac <*>"),
    ("get https://example.com/a?b=1 ok", "get <*> ok"),
    ("mail bob@example.com now", "mail <*> now"),
    (r"load C:\Windows\system32\x.dll", "load <*>"),
    ("cd ./build/out", "cd <*>"),
    ("hex deadbeef00 ok", "hex <*> ok"),
    ("size 1.5GB left 99%", "size <*> left <*>"),
    ("waited 35 ms", "waited <*>"),
    ("sent 2034 bytes (1.98 KB) total", "sent <*> total"),
    ("sent 785 bytes total", "sent <*> total"),
    ("lifetime <1 sec", "lifetime <*>"),
    ("uid=0 euid=0 logname= tty=ssh", "uid=<*> euid=<*> logname= tty=<*>"),
    ("ready=true,policy=3,mode=off", "ready=<*>,policy=<*>,mode=<*>"),
    ("isOverlap:true", "isOverlap:<*>"),
    ("ApplicableState: 112, CurrentState:112", "ApplicableState: <*>, CurrentState:<*>"),
    ("state: RUNNING", "state: <*>"),
    ("user 'bob smith' logged in", "user '<*>' logged in"),
    ('msg "a b c" end', 'msg "<*>" end'),
    ("block blk_-6952295868487656571 done", "block <*> done"),
    ("found rdd_2_2 locally", "found <*> locally"),
    ("generating core.114", "generating <*>"),
    ("from host8.topspot.net:22", "from <*>"),
    ("from lns-vlq-45-tou-82.adsl.proxad.net", "from <*>"),
    ("flag true then null", "flag <*> then <*>"),
    ("Fan speeds ( 3552 3534 **** 3515 )", "Fan speeds ( <*> **** <*> )"),
    ("(TID 1301)", "(TID <*>)"),
    ("connection from 1.2.3.4 () at x", "connection from <*> at x"),
    ("connection from 1.2.3.4 (a.b.example.com) at x", "connection from <*> at x"),
])
def test_mask_table(text: str, expected: str) -> None:
    assert masked(text) == expected


@pytest.mark.parametrize("text", [
    "Failed password for root from <*> port <*> ssh2",
    "jk2_init() Found child",
    "BIOS-e820 usable region",
    "Connection reset by peer",
    "May I help",        # a month name with no number next to it stays a word
    "timeout in ms",     # a unit word with no number before it stays a word
    "<*> b c",
    "NameSystem.addStoredBlock: blockMap updated:",
    "com.android.systemui started",
])
def test_constants_stay(text: str) -> None:
    assert masked(text) == text


def test_var_token_passes_through() -> None:
    assert classify_token(VAR) == VAR
    assert masked("a <*> b") == "a <*> b"


def test_blank_and_empty_messages() -> None:
    assert Masker().mask("") == []
    assert Masker().mask(" \t\n ") == []


def test_token_cap() -> None:
    m = Masker(max_tokens=3)
    assert m.mask("a b c d e f") == ["a", "b", "c"]
    with pytest.raises(ValueError):
        Masker(max_tokens=0)


def test_long_token_is_a_variable_and_not_cached() -> None:
    m = Masker()
    blob = "x" * 10_000
    assert m.mask(f"payload {blob} end") == ["payload", VAR, "end"]
    assert blob not in m._masked


def test_caches_agree_with_fresh_classification() -> None:
    """Tokens answered from the token and kind caches mask exactly as a fresh masker
    does, also when the caches are cleared mid-stream."""
    lines = [f"user{i % 7} blk_{i * 7919} took {i}ms from 10.0.{i % 250}.1:{1000 + i} ssh{i % 3}"
             f" 0x{i:x} v{i % 5}.{i % 3}" for i in range(400)]
    warm = Masker(cache_size=50)  # small cache: exercises the clearing path as well
    for line in lines:
        assert warm.mask(line) == Masker().mask(line), line
