"""The control extension: config shape and validation, wiring from a config file, YAML policy
edits picked up without a restart (reload and file watch), a bad file ignored."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from collector.config import ConfigError, load_config
from collector.control.config import ControlConfig
from collector.control.extension import ControlExtension, build_control, resolve_api_key
from collector.pipeline import Pipeline
from collector.state import StateStore
from tests.collector.control.conftest import metric


def config_tree(rate: float = 0.1, **control) -> dict:
    return {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": "127.0.0.1:0"}}}},
        "processors": {"signature": {}, "sampling": {"policy": {"global_rate": rate}}},
        "exporters": {"debug": {}},
        "extensions": {"control": {"interval": "1h", "llm": {"api_key": ""}, **control}},
        "service": {"extensions": ["control"], "pipelines": {"logs": {
            "receivers": ["otlp"], "processors": ["signature", "sampling"],
            "exporters": ["debug"]}}},
    }


def write(path: Path, tree: dict) -> None:
    path.write_text(yaml.safe_dump(tree))


def test_the_extension_config_loads_like_a_collector_extension(tmp_path):
    p = tmp_path / "c.yaml"
    write(p, config_tree(target_kept_bytes_per_day="20GB", llm={
        "base_url": "http://localhost:11434/v1", "model": "llama3.1",
        "api_key": "${env:OPENAI_API_KEY}"}))
    cfg = load_config(p, environ={"OPENAI_API_KEY": "sk-abc"})
    control = cfg.extensions["control"]
    assert isinstance(control, ControlConfig)
    assert control.interval == 3600 and control.target_kept_bytes_per_day == 20 * 10**9
    assert control.llm.api_key == "sk-abc" and control.llm.model == "llama3.1"
    assert cfg.service.extensions == ["control"]


def test_the_api_key_loses_a_secret_files_final_newline(monkeypatch):
    # "sk-…\n" from a Kubernetes secret made every call fail as "cannot connect" (trial).
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc\n")
    assert resolve_api_key(ControlConfig()) == "sk-abc"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda t: t["extensions"]["control"].update(intervall="5m"),
     "extensions.control.intervall: unknown key"),
    (lambda t: t["service"].update(extensions=["control/other"]),
     "service.extensions.0: 'control/other' is not defined"),
    (lambda t: t["extensions"].update({"pprof": {}}), "unknown extension type 'pprof'"),
    (lambda t: t["service"]["pipelines"]["logs"].update(processors=["signature"]),
     "extensions.control: the logs pipeline has no `sampling` processor"),
    (lambda t: t["extensions"]["control"].update(processor="signature"),
     "extensions.control.processor: 'signature' is not a sampling processor"),
])
def test_extension_config_errors_name_the_key(tmp_path, change, problem):
    tree = config_tree()
    change(tree)
    p = tmp_path / "c.yaml"
    write(p, tree)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert problem in str(err.value)


@pytest.fixture
async def running(tmp_path):
    path = tmp_path / "c.yaml"
    write(path, config_tree(0.1, watch_interval="0.1s"))
    config = load_config(path)
    pipeline = Pipeline.from_config(config)
    ext = build_control(config, pipeline.processors, "127.0.0.1", lambda: load_config(path))
    assert isinstance(ext, ControlExtension)
    state = StateStore(tmp_path / "state")
    await ext.start(state)
    yield ext, path
    await ext.stop()
    state.close()


async def test_yaml_edits_apply_on_reload_and_a_bad_file_is_ignored(running):
    ext, path = running
    sampler = ext.sampler
    assert (sampler.policy().version, sampler.policy().global_rate) == (1, 0.1)
    write(path, config_tree(0.3, watch_interval="0.1s"))
    assert await ext.reload_now() == ["_default"]
    assert (sampler.policy().version, sampler.policy().global_rate) == (2, 0.3)
    assert sampler.policy().generated_by == "yaml"

    bad = metric("lipservice_policy_rejected_total", source="yaml", reason="invalid_config")
    path.write_text(path.read_text().replace("global_rate: 0.3", "global_rate: lots"))
    assert await ext.reload_now() == []
    assert path.read_text().count("lots") == 1
    assert sampler.policy().version == 2  # the policy in force stays
    assert metric("lipservice_policy_rejected_total", source="yaml",
                  reason="invalid_config") == bad + 1


async def test_the_file_watch_picks_up_an_edit(running):
    ext, path = running
    sampler = ext.sampler
    await asyncio.sleep(0.2)
    write(path, config_tree(0.5, watch_interval="0.1s", hold="2h"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sampler.policy().global_rate != 0.5:
        await asyncio.sleep(0.05)
    assert (sampler.policy().global_rate, sampler.policy().version) == (0.5, 2)


async def test_sighup_style_request_reloads(running):
    ext, path = running
    write(path, config_tree(0.7, watch_interval="0.1s"))
    ext.request_reload()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ext.sampler.policy().global_rate != 0.7:
        await asyncio.sleep(0.05)
    assert ext.sampler.policy().global_rate == 0.7
