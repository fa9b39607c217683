"""The template miner (processors/miner.py): ids, generalisation, sibling merges and
aliases, the eviction bound, snapshot/restore, seeds."""

from __future__ import annotations

import json
import re

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.masking import Masker
from processors.miner import (
    INDEX_FROM,
    VAR,
    Leaf,
    Miner,
    _fits_outside,
    _fitting,
    pattern_id,
)


def mine(miner: Miner, masker: Masker, line: str):
    return miner.add(masker.mask(line))


def test_id_is_xxh3_of_creation_template() -> None:
    m, k = Miner(), Masker()
    p = mine(m, k, "worker 17 started in 35ms")
    assert p.template == "worker <*> started in <*>"
    assert p.id == xxhash.xxh3_64_hexdigest(b"worker <*> started in <*>")
    assert re.fullmatch(r"[0-9a-f]{16}", p.id)
    assert pattern_id(p.template) == p.id


def test_exact_repeat_and_variable_values_share_a_pattern() -> None:
    m, k = Miner(), Masker()
    a = mine(m, k, "Receiving block blk_1 src: /10.0.0.1:50010 dest: /10.0.0.2:50010")
    b = mine(m, k, "Receiving block blk_-99 src: /10.0.0.9:4000 dest: /10.0.0.8:50010")
    assert a is b
    assert len(m.patterns) == 1


def test_id_stays_when_template_generalises() -> None:
    """A word where earlier lines had a masked variable: the pattern generalises in place."""
    m, k = Miner(), Masker()
    first = mine(m, k, "session opened for user root")
    before = first.id
    second = mine(m, k, "session opened for user 1000")
    assert second is first
    assert first.id == before
    assert first.template == "session opened for user <*>"
    assert mine(m, k, "session opened for user root") is first


def test_one_differing_word_is_a_different_pattern_until_three_values() -> None:
    m, k = Miner(), Masker()
    https = mine(m, k, "host:443 open through proxy p:5070 HTTPS")
    socks = mine(m, k, "host:22 open through proxy p:5070 SOCKS5")
    assert https is not socks  # two values: constants, as a human would read them
    assert https.template.endswith("HTTPS") and socks.template.endswith("SOCKS5")
    third = mine(m, k, "host:80 open through proxy p:5070 DIRECT")
    # three values at one position: a variable; the oldest pattern keeps its id
    assert third is https
    assert https.template.endswith(VAR)
    assert not socks.alive
    assert m.resolve(socks.id) == https.id
    assert m.aliases == {socks.id: https.id}
    assert mine(m, k, "host:8080 open through proxy p:5070 SOCKS5") is https


def test_alias_of_alias_is_flattened() -> None:
    m, k = Miner(), Masker()
    a = mine(m, k, "job one alpha x")
    b = mine(m, k, "job one beta x")
    c = mine(m, k, "job one alpha y")
    d = mine(m, k, "job one beta y")
    assert len({a.id, b.id, c.id, d.id}) == 4
    assert mine(m, k, "job one gamma x") is a      # alpha/beta/gamma: a variable
    assert mine(m, k, "job one gamma y") is c
    assert m.aliases == {b.id: a.id, d.id: c.id}
    assert mine(m, k, "job one delta z") is a      # x/y/z: a variable too
    assert a.template == "job one <*> <*>"
    assert m.aliases == {b.id: a.id, d.id: a.id, c.id: a.id}
    assert {m.resolve(p.id) for p in (a, b, c, d)} == {a.id}


def test_different_lengths_and_first_words_stay_apart() -> None:
    m, k = Miner(), Masker()
    ok = mine(m, k, "Accepted password for root from 1.2.3.4 port 22 ssh2")
    bad = mine(m, k, "Failed password for root from 1.2.3.4 port 22 ssh2")
    inv = mine(m, k, "Failed password for invalid user admin from 1.2.3.4 port 22 ssh2")
    assert len({ok.id, bad.id, inv.id}) == 3


def test_eviction_bound_holds_and_is_counted() -> None:
    m, k = Miner(max_patterns=10), Masker()
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    keep = mine(m, k, "the one pattern that stays in use")
    n = 0
    for a in words:
        for b in words:
            mine(m, k, f"{a} {b} happened")  # distinct first words: distinct leaves
            n += 1
            assert len(m.patterns) <= 10
            m.touch([keep])
    assert keep.alive
    assert m.evicted_total == m.created_total - len(m.patterns)
    assert m.evicted_total > 0
    # the tree holds no more leaves than live patterns need
    leaves = []

    def walk(node: dict) -> None:
        for key, child in node.items():
            if key == "":
                leaves.append(child)
            else:
                walk(child)

    for node in m._root.values():
        walk(node)
    assert all(leaves) and sum(len(leaf) for leaf in leaves) == len(m.patterns)
    assert len(leaves) <= len(m.patterns)
    assert len(m._created) <= 10 + len(m.aliases) + 10


def test_evicted_pattern_comes_back_with_the_same_id() -> None:
    m, k = Miner(max_patterns=1), Masker()
    p = mine(m, k, "first kind of line")
    pid = p.id
    mine(m, k, "second sort of message here")
    assert not p.alive
    again = mine(m, k, "first kind of line")
    assert again is not p and again.id == pid


def test_snapshot_round_trip_through_json() -> None:
    m, k = Miner(), Masker()
    lines = ["user root logged in", "user 42 logged in", "disk sda1 full", "disk sdb2 full",
             "disk sdc3 full", "host:1 open via HTTPS", "host:2 open via SOCKS5"]
    ids = [mine(m, k, line).id for line in lines]
    state = json.loads(json.dumps(m.snapshot()))
    r = Miner()
    r.restore(state)
    assert r.snapshot() == state
    assert [r.resolve(mine(r, Masker(), line).id) for line in lines] == \
        [m.resolve(i) for i in ids]
    assert r.created_total == m.created_total and r.merged_total == m.merged_total


@pytest.mark.parametrize("state", [
    {}, {"version": 99, "patterns": []}, {"version": 1, "patterns": [{"template": "x"}]},
    {"version": 1, "patterns": "nope"}, {"version": 1, "patterns": [], "seq": "x"},
])
def test_restore_rejects_malformed_state_and_keeps_the_current_one(state: dict) -> None:
    m, k = Miner(), Masker()
    p = mine(m, k, "still here 1")
    with pytest.raises(ValueError):
        m.restore(state)
    assert m.patterns[p.id] is p


def test_seed_gives_known_ids_before_traffic() -> None:
    m, k = Miner(), Masker()
    seeded = m.seed(k.mask("Failed password for <*> from <*> port <*> ssh2"))
    assert seeded.id == pattern_id("Failed password for <*> from <*> port <*> ssh2")
    assert mine(m, k, "Failed password for root from 1.2.3.4 port 22 ssh2") is seeded
    assert m.seed(k.mask("Failed password for <*> from <*> port <*> ssh2")) is seeded


def test_invalid_settings_are_rejected() -> None:
    for kwargs in ({"sim_threshold": 0}, {"sim_threshold": 1.5}, {"depth": -1},
                   {"max_children": 0}, {"min_variable_values": 1}, {"max_patterns": 0}):
        with pytest.raises(ValueError):
            Miner(**kwargs)


# --------------------------------------------------------------------------- shared ids


def test_adopt_id_renames_and_the_old_id_becomes_an_alias() -> None:
    m, k = Miner(), Masker()
    p = mine(m, k, "session opened for user root")
    mine(m, k, "session opened for user 1000")  # generalises at once, id kept
    old = p.id
    shared = pattern_id("session opened for user <*>")
    assert old != shared
    assert m.adopt_id(old, shared)
    assert p.id == shared and p.template == "session opened for user <*>"
    assert m.resolve(old) == shared and old not in m.patterns
    assert mine(m, k, "session opened for user root") is p  # creation text still leads here
    assert mine(m, k, "session opened for user 7").id == shared


def test_adopt_id_merges_into_a_live_pattern_with_the_same_template() -> None:
    m, k = Miner(), Masker()
    # two live patterns with one template (rare: e.g. from a restored snapshot)
    m.restore({"version": 1, "patterns": [
        {"id": "a" * 16, "template": "disk <*> full", "count": 3},
        {"id": "b" * 16, "template": "disk <*> full", "count": 2,
         "keys": [pattern_id("disk sda full")]}]})
    a, b = m.patterns["a" * 16], m.patterns["b" * 16]
    assert m.adopt_id(b.id, a.id)
    assert not b.alive and b.live() is a and m.resolve(b.id) == a.id
    assert a.count == 5 and list(m.patterns) == [a.id]
    assert mine(m, k, "disk sda full") is a  # b's creation text now leads to a


def test_adopt_id_leaves_conflicts_alone() -> None:
    m, k = Miner(), Masker()
    a = mine(m, k, "cache warm")
    b = mine(m, k, "queue drained in 5 ms")
    before = m.snapshot()
    assert not m.adopt_id(a.id, b.id)  # another template lives under that id
    assert not m.adopt_id(a.id, a.id)
    assert not m.adopt_id("0" * 16, pattern_id("x"))  # not a live pattern
    assert m.snapshot() == before


_WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", VAR]


def _qualifies(pattern: list[str], probe: list[str], threshold: float) -> bool:
    same = sum(a == b for a, b in zip(pattern, probe, strict=True))
    wild = sum(a == VAR and b != VAR for a, b in zip(pattern, probe, strict=True))
    return same + wild == len(probe) or same / len(probe) >= threshold


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_WORDS), min_size=6, max_size=6), min_size=40,
                max_size=100),
       st.lists(st.lists(st.sampled_from(_WORDS), min_size=6, max_size=6), min_size=1,
                max_size=20),
       st.sampled_from([0.3, 0.5, 0.7, 1.0]),
       st.lists(st.sets(st.integers(0, 5), max_size=3), min_size=1, max_size=5))
def test_leaf_index_finds_what_a_full_scan_finds(stored: list[list[str]],
                                                 probes: list[list[str]], threshold: float,
                                                 diffs: list[set[int]]) -> None:
    """A leaf past INDEX_FROM patterns is searched through its (position, token) index:
    the candidates hold every pattern that can pass the threshold or fit exactly, so the
    best pattern and its differing positions are those a scan of every pattern gives; the
    sibling candidates hold every pattern that fits outside the differing positions; the
    index follows creations, merges and evictions."""
    m = Miner(sim_threshold=threshold, depth=0, max_patterns=80)  # depth 0: one leaf
    for tokens in stored:
        m.add(tokens)
    leaf = m._find_leaf(stored[0])
    assert leaf is not None
    if leaf.index is None:  # built once the leaf passed INDEX_FROM patterns
        assert len(leaf) <= INDEX_FROM
        return
    expected_index: dict = {}
    for p in leaf:
        for key in enumerate(p.tokens):
            expected_index.setdefault(key, set()).add(p)
    assert {(i, tok): set(leaf.posting(i, tok)) for i, by_token in enumerate(leaf.index)
            for tok in by_token} == expected_index
    assert {k: set(g) for k, g in leaf.by_vars.items()} == {
        k: {p for p in leaf if p.tokens.count(VAR) == k}
        for k in {p.tokens.count(VAR) for p in leaf}}
    plain = Leaf(leaf)  # no index: _best scans all of it
    for probe in probes:
        candidates = set(m._candidates(leaf, probe))
        assert {p for p in leaf if _qualifies(p.tokens, probe, threshold)} <= candidates
        assert m._best(leaf, probe) == m._best(plain, probe)
        for diff in diffs:
            fitting = set(_fitting(leaf, probe, sorted(diff)))
            assert {q for q in leaf if _fits_outside(q.tokens, probe, sorted(diff))} <= fitting


def test_leaf_index_finds_an_exact_fit_through_wildcards() -> None:
    """A pattern that is mostly ``<*>`` fits a message that shares few of its positions
    with it; the index must still offer it (it outranks any partial match)."""
    m = Miner(sim_threshold=0.5, depth=0)
    for i in range(INDEX_FROM + 10):
        m.add([f"w{i}", f"x{i}", f"y{i}", f"z{i}", "tail", f"v{i}"])
    star = m.add([VAR, VAR, VAR, VAR, "tail", VAR])
    probe = ["p", "q", "r", "s", "tail", "t"]
    leaf = m._find_leaf(probe)
    assert leaf is not None and leaf.index is not None
    assert m._best(leaf, probe) == (star, [])
    assert m.add(probe) is star
    # fits by two constants, where no other pattern has those words
    two = m.add(["p2", VAR, VAR, VAR, "zz", VAR])
    assert two is not star
    probe = ["p2", "q", "r", "s", "zz", "t"]
    assert m._best(leaf, probe) == (two, [])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("pq"), st.sampled_from("rs"),
                          st.sampled_from("abcdef")), min_size=1, max_size=150),
       st.integers(2, 12))
def test_aliases_stay_flat_bounded_and_pointing_at_live_patterns(
        stream: list[tuple[str, str, str]], max_patterns: int) -> None:
    """Under merges and evictions in any order: every alias names a live pattern (flat,
    never an alias of an alias), there are at most max_patterns of them, and the reverse
    map used to drop an evicted pattern's aliases matches them exactly."""
    m = Miner(depth=1, max_patterns=max_patterns)  # one varying word: siblings merge
    for words in stream:
        m.add([*words, "z"])
        assert set(m.aliases.values()) <= set(m.patterns)
        assert not set(m.aliases) & set(m.patterns)
        assert len(m.aliases) <= max_patterns
        inverse: dict[str, set[str]] = {}
        for k, v in m.aliases.items():
            inverse.setdefault(v, set()).add(k)
        assert m._alias_of == inverse
    state = json.loads(json.dumps(m.snapshot()))
    again = Miner(depth=1, max_patterns=max_patterns)
    again.restore(state)
    assert again.aliases == m.aliases and again._alias_of == m._alias_of
