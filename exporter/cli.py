"""The ``failure-predictor`` command: run, demo, train, check-config.

Training and backtest code is imported by its commands alone: it brings XGBoost,
scikit-learn and pandas, which ``run`` does not need (~100 MB of a sidecar's memory).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from exporter import __version__, kernels, logs
from exporter.config import (
    BOOTSTRAP_MODEL,
    ConfigError,
    Settings,
    effective_config,
    load_settings,
    parse_duration,
)
from exporter.models.bundle import BundleError, load_bundle, save_bundle
from exporter.models.registry import activate, list_versions, resolve
from exporter.progress import reporter
from exporter.redact import mask_url
from exporter.service.api import make_server
from exporter.service.daemon import Daemon, check_compatibility
from exporter.service.reload import ModelWatcher
from exporter.sources.prometheus import PrometheusSource

EXIT_USAGE = 2

log = logging.getLogger("exporter")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"error: {mask_url(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BundleError as exc:
        print(f"error: cannot load model bundle: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="failure-predictor",
        description="Predict workload failures from Prometheus series and re-export them as metrics.",
    )
    parser.add_argument("--version", action="version", version=f"failure-predictor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon against Prometheus")
    run.add_argument(
        "--config", "-c", type=Path, help="YAML config file (env FAILURE_PREDICTOR_* overrides keys)"
    )
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser("demo", help="run the daemon on a simulated cluster (no Prometheus needed)")
    demo.add_argument("--targets", type=int, default=40, help="simulated workloads (default 40)")
    demo.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    demo.add_argument("--interval", type=float, default=2.0, help="seconds between cycles (default 2)")
    demo.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=9847, help="listen port (default 9847)")
    demo.add_argument(
        "--cycles", type=int, default=0, help="stop after this many cycles (default: run until Ctrl-C)"
    )
    demo.add_argument(
        "--model",
        type=Path,
        default=BOOTSTRAP_MODEL,
        help="model bundle (default: the bootstrap bundle in the package)",
    )
    demo.set_defaults(handler=cmd_demo)

    train = commands.add_parser(
        "train", help="train a model bundle on Prometheus history, recorded CSVs or the simulator"
    )
    train.add_argument("--source", choices=["prometheus", "files", "simulate"], default="prometheus")
    train.add_argument(
        "--config", "-c", type=Path, help="YAML config: Prometheus, signals, failure definition"
    )
    _add_range(train)
    output = train.add_mutually_exclusive_group(required=True)
    output.add_argument("--out", type=Path, help="write exactly this bundle directory (replaced atomically)")
    output.add_argument("--models-dir", type=Path, help="write <models-dir>/<version>, see 'models'")
    train.add_argument(
        "--activate", action="store_true", help="with --models-dir: make the new version active"
    )
    train.add_argument("--seed", type=int, default=0, help="seed for models and sampling (default 0)")
    train.add_argument("--stride", type=int, default=2, help="use every n-th window (default 2)")
    train.add_argument(
        "--cache-dir", type=Path, help="keep fetched chunks here so an interrupted run resumes"
    )
    train.add_argument("--json", action="store_true", help="print the report as JSON")
    train.add_argument("--targets", type=int, default=48, help="simulate: workloads (default 48)")
    train.add_argument("--days", type=float, default=12.0, help="simulate: days of history (default 12)")
    train.add_argument(
        "--kind", default="bootstrap", choices=["bootstrap", "trained"], help="simulate: manifest kind"
    )
    files = train.add_argument_group("files (the backtest CSV layouts)")
    files.add_argument(
        "--input", type=Path, action="append", help="CSV file or directory of CSVs (repeatable)"
    )
    files.add_argument("--incidents", type=Path, help="incidents CSV/YAML with target,start[,end]")
    files.add_argument("--signal-column", action="append", default=[], metavar="COLUMN=SIGNAL")
    files.add_argument("--step", help="grid step, e.g. 1m (default: the median spacing of each file)")
    split = train.add_argument_group("split (train / calibration / test)")
    split.add_argument("--test-from", help="test on windows from this time on (ISO 8601 or Unix seconds)")
    split.add_argument("--calibrate-from", help="calibrate on windows from this time to --test-from")
    split.add_argument(
        "--fractions",
        default="0.6,0.2",
        help="train,calibration shares when no times are given (default 0.6,0.2)",
    )
    split.add_argument("--gap", help="left out before each cut (default one lookback + horizon), e.g. 90m")
    split.add_argument(
        "--split-by", choices=["time", "target"], default="time", help="cut in time, or by whole targets"
    )
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate an existing bundle on another period")
    evaluate.add_argument(
        "bundle", type=Path, help="bundle directory (or models directory: its active version)"
    )
    evaluate.add_argument(
        "--config", "-c", type=Path, help="YAML config: Prometheus, signals, failure definition"
    )
    _add_range(evaluate)
    evaluate.add_argument(
        "--cache-dir", type=Path, help="keep fetched chunks here so an interrupted run resumes"
    )
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(handler=cmd_evaluate)

    models = commands.add_parser("models", help="list, show or activate bundles in a models directory")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_commands.add_parser("list", help="versions, oldest first; * marks the active one")
    listing.add_argument("directory", type=Path)
    listing.set_defaults(handler=cmd_models_list)
    show = models_commands.add_parser("show", help="print a bundle's manifest")
    show.add_argument("path", type=Path, help="bundle directory, or models directory (its active version)")
    show.set_defaults(handler=cmd_models_show)
    activate_version = models_commands.add_parser("activate", help="point 'active' at a version")
    activate_version.add_argument("directory", type=Path)
    activate_version.add_argument("version")
    activate_version.set_defaults(handler=cmd_models_activate)

    check = commands.add_parser("check-config", help="validate a config file and print the effective config")
    check.add_argument("config", type=Path, nargs="?", help="YAML config file")
    check.add_argument(
        "--offline", action="store_true", help="do not ask Prometheus to check the PromQL syntax"
    )
    check.set_defaults(handler=cmd_check_config)

    backtest = commands.add_parser("backtest", help="score recorded series (CSV or the NAB corpus) per row")
    inputs = backtest.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--input", type=Path, action="append", help="CSV file or directory of CSVs (repeatable)"
    )
    inputs.add_argument("--nab", action="store_true", help="all NAB data files, written in the NAB layout")
    backtest.add_argument(
        "--signal-column",
        action="append",
        default=[],
        metavar="COLUMN=SIGNAL",
        help="read COLUMN as SIGNAL, e.g. value=cpu (repeatable; default: every column is its own signal; "
        "with --nab: value=cpu)",
    )
    backtest.add_argument("--step", help="grid step, e.g. 5m (default: the median spacing of each file)")
    backtest.add_argument(
        "--model",
        type=Path,
        default=BOOTSTRAP_MODEL,
        help="model bundle (default: the bootstrap bundle in the package)",
    )
    backtest.add_argument("--format", choices=["csv", "nab"], help="csv, or nab (the default with --nab)")
    backtest.add_argument("--out", type=Path, required=True, help="output directory")
    backtest.add_argument("--detector", help="detector name in the NAB layout (default failurePredictor)")
    backtest.add_argument(
        "--nab-dir", type=Path, help="NAB corpus (default $FAILURE_PREDICTOR_NAB_DIR or ../shared/data/nab)"
    )
    backtest.set_defaults(handler=cmd_backtest)
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print the effective config; exit 2 when the model or a query would stop ``run``."""
    settings = load_settings(args.config)
    print(yaml.safe_dump(effective_config(settings), sort_keys=False), end="")
    problems = model_problems(settings)
    if not args.offline:
        problems += query_problems(settings)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_USAGE if problems else 0


def model_problems(settings: Settings) -> list[str]:
    """``run`` loads model.path before anything else: check it loads, and fits the config."""
    try:
        bundle = load_bundle(resolve(settings.model.path))
    except BundleError as exc:
        return [f"model.path: {exc}"]
    for problem in check_compatibility(bundle, settings):
        print(f"warning: model and config differ: {problem}", file=sys.stderr)
    return []


def query_problems(settings: Settings) -> list[str]:
    """Every signal query, the failure query and the owner query, parsed by the configured Prometheus itself."""
    from exporter.sources.prometheus import PrometheusClient, QueryFailed

    seconds = min(settings.prometheus.timeout, 5.0)
    quick = settings.prometheus.model_copy(update={"retries": 0, "timeout": seconds, "deadline": seconds})
    client = PrometheusClient(quick)
    queries = {f"signals.{name}": query for name, query in settings.queries.items()}
    if settings.failure_query is not None:
        queries["failure.query"] = settings.failure_query
    if settings.reads_owners:
        queries["anomaly.owners.query"] = settings.owner_query
    problems = []
    try:
        for key, query in queries.items():
            error = client.syntax_error(query)
            if error is not None:
                problems.append(f"{key}: PromQL does not parse: {error}\n  query: {query}")
    except QueryFailed as exc:
        print(
            f"warning: the PromQL syntax was not checked: cannot ask Prometheus at "
            f"{mask_url(settings.prometheus.url)} ({exc.reason}: {exc}); use --offline to skip this check",
            file=sys.stderr,
        )
    finally:
        client.close()
    return problems


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logs.configure(settings.log_level, settings.prometheus.secrets)
    model_path = settings.model.path
    serving = resolve(model_path)
    bundle = load_bundle(serving)
    log.info(
        "starting",
        extra={
            "prometheus": mask_url(settings.prometheus.url),
            "model": bundle.manifest.version,
            "kernels": kernels.MODE,
        },
    )
    if kernels.AHEAD_OF_TIME is None:
        log.warning(
            "kernels not built ahead of time: numba compiles them on first use, ~130 MB more memory",
            extra={"reason": kernels.JIT_REASON},
        )
    daemon = Daemon(settings, PrometheusSource(settings), bundle, watcher=ModelWatcher(model_path, serving))
    schedule_refits(daemon, settings, model_path)
    make_server(daemon, settings.listen.address, settings.listen.port).run()
    return 0


def schedule_refits(daemon: Daemon, settings: Settings, models_dir: Path) -> None:
    """Anomaly refits and classifier retraining, when the config asks for them."""
    from exporter.training.refit import Refitter

    refitter = Refitter(settings, models_dir, lambda: daemon.state.bundle)
    daemon.on_stop.append(refitter.close)
    if settings.anomaly.refit_every is not None:
        daemon.schedule(refitter.refit_anomaly, settings.anomaly.refit_every, "anomaly-refit")
    if settings.retrain.every is not None:
        daemon.schedule(refitter.retrain, settings.retrain.every, "retrain")


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.demo import run_demo

    logs.configure("warning")
    return run_demo(load_bundle(args.model), args)


def _add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", help="how far back from now, e.g. 14d (default 14d)")
    parser.add_argument("--start", help="range start: ISO 8601 or Unix seconds")
    parser.add_argument("--end", help="range end: ISO 8601 or Unix seconds (default now)")


def _command_line() -> str:
    return " ".join(["failure-predictor", *sys.argv[1:]])


def cmd_train(args: argparse.Namespace) -> int:
    from exporter.training import workflow
    from exporter.training.history import HistoryError
    from exporter.training.incidents import IncidentsError

    logs.configure("warning")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.activate and args.models_dir is None:
        raise ConfigError("--activate needs --models-dir")
    from exporter.sources.files import FilesError, FilesSource

    try:
        split = _split_options(args)
        if args.source == "simulate":
            print(f"simulating {args.targets} targets x {args.days:g} days ...", file=sys.stderr)
            bundle = workflow.train_from_simulation(
                args.targets, args.days, args.seed, args.kind, _command_line(), reporter("windows"), split
            )
        elif args.source == "files":
            if not args.input or args.incidents is None:
                raise ValueError("--source files needs --input PATH (repeatable) and --incidents FILE")
            step = parse_duration(args.step) if args.step else None
            source = FilesSource(args.input, signal_columns(args.signal_column), step)
            options = workflow.TrainingOptions(stride=args.stride, seed=args.seed, split=split)
            bundle = workflow.train_from_files(
                source,
                args.incidents,
                load_settings(args.config),
                options,
                _command_line(),
                reporter("windows"),
            )
        else:
            settings = load_settings(args.config)
            span = workflow.time_range(args.since, args.start, args.end)
            bundle = workflow.train_from_prometheus(
                settings,
                span,
                args.seed,
                args.stride,
                args.cache_dir,
                _command_line(),
                reporter("chunks"),
                split,
            )
    except (ValueError, HistoryError, IncidentsError, FilesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    target = args.out if args.out is not None else args.models_dir / bundle.manifest.version
    save_bundle(bundle, target)
    if args.activate:
        activate(args.models_dir, bundle.manifest.version)
    print_report(bundle.manifest.metrics, args.json, f"wrote {target} ({bundle.manifest.version})")
    return 0


def _split_options(args: argparse.Namespace):
    """The --test-from / --calibrate-from / --fractions / --gap / --split-by options, checked."""
    from exporter.training.dataset import SplitOptions
    from exporter.training.incidents import parse_time

    try:
        fractions = tuple(float(part) for part in args.fractions.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 2:
        raise ValueError(f"--fractions takes TRAIN,CALIBRATION shares, e.g. 0.6,0.2; got {args.fractions!r}")
    times = {}
    for name in ("test_from", "calibrate_from"):
        value = getattr(args, name)
        times[name] = parse_time(value, f"--{name.replace('_', '-')}") if value is not None else None
    gap = parse_duration(args.gap) if args.gap else None
    return SplitOptions(fractions=fractions, gap=gap, by=args.split_by, **times)


def signal_columns(pairs: list[str]) -> dict[str, str]:
    """``COLUMN=SIGNAL`` options as a mapping; raises ValueError naming a malformed one."""
    columns = {}
    for pair in pairs:
        column, _, signal = pair.partition("=")
        if not column.strip() or not signal.strip():
            raise ValueError(f"--signal-column takes COLUMN=SIGNAL, e.g. value=cpu; got {pair!r}")
        columns[column.strip()] = signal.strip()
    return columns


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Unwind like Ctrl-C, so a bundle being written removes its staging directory."""
    raise SystemExit(128 + signum)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from exporter.training import workflow
    from exporter.training.history import HistoryError
    from exporter.training.incidents import IncidentsError

    logs.configure("warning")
    bundle = load_bundle(resolve(args.bundle))
    settings = load_settings(args.config)
    try:
        span = workflow.time_range(args.since, args.start, args.end)
        report = workflow.evaluate_on_prometheus(bundle, settings, span, args.cache_dir, reporter("chunks"))
    except (ValueError, HistoryError, IncidentsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print_report(report, args.json, f"evaluated {bundle.manifest.version}")
    return 0


def print_report(report: dict, as_json: bool, headline: str) -> None:
    from exporter.training.evaluate import format_report

    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(headline)
    print(format_report(report))


def cmd_models_list(args: argparse.Namespace) -> int:
    versions = list_versions(args.directory)
    if not versions:
        print(f"no bundles in {args.directory}")
    for version in versions:
        pr_auc = version.metrics.get("pr_auc")
        quality = f"PR-AUC {pr_auc:.3f}" if isinstance(pr_auc, int | float) else ""
        print(
            f"{'*' if version.active else ' '} {version.name:<34} {version.kind:<10} {version.trained_at}  {quality}"
        )
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    bundle = load_bundle(resolve(args.path))
    manifest = asdict(bundle.manifest)
    manifest["metrics"] = {k: v for k, v in manifest["metrics"].items() if k != "reliability"}
    manifest["reference"] = f"<training distribution of {len(manifest['features'])} features>"
    print(json.dumps(manifest, indent=2))
    return 0


def cmd_models_activate(args: argparse.Namespace) -> int:
    activate(args.directory, args.version)
    print(f"active: {args.version}")
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from exporter import backtest as bt
    from exporter.sources.files import FilesError, FilesSource

    try:
        try:
            columns = signal_columns(args.signal_column)
        except ValueError as exc:
            raise bt.BacktestError(str(exc)) from None
        try:
            step = parse_duration(args.step) if args.step else None
        except ValueError as exc:
            raise bt.BacktestError(f"--step: {exc}") from None
        if args.nab:
            paths = bt.nab_files(args.nab_dir or bt.nab_dir())
            source = FilesSource(paths, columns or bt.NAB_COLUMNS, step)
        else:
            source = FilesSource(args.input, columns, step)
        bundle = load_bundle(resolve(args.model))
        output_format = args.format or ("nab" if args.nab else "csv")
        detector = args.detector or bt.DEFAULT_DETECTOR
        summary = bt.run_backtest(source, bundle, args.out, output_format, detector, reporter("backtest"))
    except (bt.BacktestError, FilesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    where = args.out / detector if output_format == "nab" else summary.outputs[0]
    print(f"backtest: {summary.files} file(s), {summary.rows:,} rows in {summary.seconds:.1f}s -> {where}")
    return 0
