"""``lipservice`` command line.

    lipservice run      [-c FILE] [--set key.path=value ...]
    lipservice validate [-c FILE] [--set key.path=value ...]
    lipservice replay   [-c FILE] [--set ...] [--keep-all] [--rate N] [--service NAME] FILE...

Without ``-c`` the embedded default config is used (config/default.yaml). With that file
only, when ``POSTHOG_API_KEY`` is unset the pipeline exports to its ``file`` exporter
instead of PostHog, and says where in its first lines.

Exit codes: 0 ok; 1 runtime failure (port in use, unwritable path); 2 bad config or usage.
Errors are one line per cause on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from collector.config import Config, ConfigError, FileExporterConfig, load_config

log = logging.getLogger("lipservice")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE",
                   help="YAML config file (default: the embedded config/default.yaml)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set processors.sampling.dry_run=true"
                        " (repeatable; applied after the file)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lipservice")
    except PackageNotFoundError:
        return "(not installed)"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lipservice", description="OpenTelemetry logs sidecar: "
                                 "pattern mining and per-pattern sampling.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the sidecar")
    _add_config_args(run)
    val = sub.add_parser("validate", help="check a config file; starts nothing")
    _add_config_args(val)
    rep = sub.add_parser("replay", help="run log files through the processors and exporters "
                         "in-process and print what would be kept")
    _add_config_args(rep)
    rep.add_argument("files", nargs="+", metavar="FILE",
                     help="plain-text log files (one record per line) or OTLP JSON lines; "
                          "- for stdin")
    rep.add_argument("--keep-all", action="store_true",
                     help="annotate every record (dry run) but drop nothing")
    rep.add_argument("--rate", type=float, default=None, metavar="N",
                     help="pace a virtual clock at N records/s so time windows behave as in "
                          "production (default: wall clock)")
    rep.add_argument("--service", default=None, metavar="NAME",
                     help="service.name for plain-text records (default: the file's stem)")
    rep.add_argument("--top", type=int, default=15, metavar="K",
                     help="patterns listed in the report (default 15)")
    rep.add_argument("--output", default="./lipservice-out/replay.jsonl", metavar="FILE",
                     help="where kept records go when no -c is given (default "
                          "./lipservice-out/replay.jsonl); with -c the config's exporters "
                          "are used")
    return ap


def load(args: argparse.Namespace, extra_sets: list[str] | None = None) -> Config:
    """Load the config named by the arguments, applying the embedded default's rule."""
    sets = list(args.sets) + list(extra_sets or [])
    if args.config is None and not os.environ.get("POSTHOG_API_KEY"):
        sets.insert(0, "service.pipelines.logs.exporters=[file]")
    return load_config(args.config, sets)


def _announce_default(config: Config, args: argparse.Namespace) -> None:
    if args.config is not None:
        return
    if os.environ.get("POSTHOG_API_KEY"):
        log.info("using the embedded default config: exporting to PostHog")
        return
    file_cfg = config.exporters.get("file")
    if isinstance(file_cfg, FileExporterConfig):
        log.info("POSTHOG_API_KEY is not set: writing kept records to %s "
                 "(set POSTHOG_API_KEY to export to PostHog)", Path(file_cfg.path).resolve())


def _run(args: argparse.Namespace) -> int:
    from collector.logs import setup_logging
    from collector.service import Service, StartupError

    # Until the service installs its own handlers, SIGTERM means "exit now": nothing has
    # been accepted yet, so there is nothing to flush.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = load(args)
    tel = config.service.telemetry.logs
    setup_logging(tel.level, tel.encoding)
    _announce_default(config, args)
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        import uvloop  # a dependency except on Windows, where asyncio's loop is used

        uvloop.install()
    except ImportError:
        pass

    async def main() -> int:
        service = Service(config, reload=lambda: load(args))
        try:
            return await service.run()
        except StartupError as err:
            print(f"lipservice: error: {err}", file=sys.stderr)
            return 1

    return asyncio.run(main())


def _validate(args: argparse.Namespace) -> int:
    config = load(args)
    for warning in config.warnings:
        print(f"lipservice: warning: {warning}", file=sys.stderr)
    logs = config.service.pipelines.logs
    ext = config.service.extensions
    print(f"{config.source}: ok (receivers: {', '.join(logs.receivers)}; processors: "
          f"{', '.join(logs.processors) or 'none'}; exporters: {', '.join(logs.exporters)}"
          f"{'; extensions: ' + ', '.join(ext) if ext else ''})")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from collector.logs import setup_logging
    from collector.replay import replay

    setup_logging("warn")
    if args.rate is not None and not args.rate > 0:
        raise ValueError(f"--rate must be a positive number of records/s, got {args.rate:g}")
    # With the embedded default, replay never sends anywhere: kept records go to a file of
    # its own (not the one a running sidecar writes), whether POSTHOG_API_KEY is set or not.
    sets = [] if args.config is not None else [
        "service.pipelines.logs.exporters=[file]", f"exporters.file.path={args.output}"]
    config = load(args, sets)
    # --keep-all: every processor that has a dry_run switch annotates instead of dropping.
    if args.keep_all:
        sets += [f"processors.{name}.dry_run=true" for name, cfg in config.processors.items()
                 if "dry_run" in type(cfg).model_fields]
        config = load(args, sets)
    return asyncio.run(replay(config, args.files, rate=args.rate, service=args.service,
                              top=args.top))


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    handlers = {"run": _run, "validate": _validate, "replay": _replay}
    try:
        code = handlers[args.command](args)
    except ConfigError as err:
        where = f"{err.source}: " if err.source else ""
        for problem in err.problems:
            print(f"lipservice: config error: {where}{problem}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `lipservice replay … | head`: the reader left; stay quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except (OSError, ValueError) as err:
        print(f"lipservice: error: {err}", file=sys.stderr)
        code = 1
    sys.exit(code)
