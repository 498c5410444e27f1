"""The ``failure-predictor`` command: run, demo, train, check-config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from exporter import logs
from exporter.config import ConfigError, effective_config, format_duration, load_settings
from exporter.models.bundle import BundleError, ModelBundle, load_bundle, save_bundle
from exporter.progress import reporter
from exporter.service.api import make_server
from exporter.service.daemon import Daemon
from exporter.sources.prometheus import PrometheusSource

EXIT_USAGE = 2
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = Path("models/default")

log = logging.getLogger("exporter")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
        "--model", type=Path, default=DEFAULT_MODEL, help="model bundle (default models/default)"
    )
    demo.set_defaults(handler=cmd_demo)

    train = commands.add_parser("train", help="train a model bundle")
    train.add_argument("--source", choices=["simulate"], default="simulate", help="history to learn from")
    train.add_argument(
        "--out", type=Path, required=True, help="bundle directory to write (replaced atomically)"
    )
    train.add_argument("--targets", type=int, default=48, help="simulated workloads (default 48)")
    train.add_argument("--days", type=float, default=12.0, help="days of simulated history (default 12)")
    train.add_argument("--seed", type=int, default=0, help="seed for simulation and models (default 0)")
    train.add_argument(
        "--kind", default="bootstrap", choices=["bootstrap", "trained"], help="recorded in the manifest"
    )
    train.set_defaults(handler=cmd_train)

    check = commands.add_parser("check-config", help="validate a config file and print the effective config")
    check.add_argument("config", type=Path, nargs="?", help="YAML config file")
    check.set_defaults(handler=cmd_check_config)
    return parser


def resolve_model(path: Path) -> Path:
    """A relative bundle path is looked up in the working directory, then next to the package."""
    if path.is_absolute() or path.exists():
        return path
    beside_package = PACKAGE_ROOT / path
    return beside_package if beside_package.exists() else path


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    print(yaml.safe_dump(effective_config(settings), sort_keys=False), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logs.configure(settings.log_level)
    bundle = load_bundle(resolve_model(settings.model.path))
    log.info("starting", extra={"prometheus": settings.prometheus.url, "model": bundle.manifest.version})
    daemon = Daemon(settings, PrometheusSource(settings), bundle)
    make_server(daemon, settings.listen.address, settings.listen.port).run()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.demo import run_demo

    logs.configure("warning")
    return run_demo(load_bundle(resolve_model(args.model)), args)


def cmd_train(args: argparse.Namespace) -> int:
    from exporter.sources.simulate import simulate_history
    from exporter.training.train import TrainingOptions, build_dataset, train_bundle

    logs.configure("info")
    options = TrainingOptions(seed=args.seed)
    step = 60.0
    steps = int(args.days * 86400 / step)
    print(f"simulating {args.targets} targets x {args.days:g} days ...", file=sys.stderr)
    history = simulate_history(targets=args.targets, steps=steps, seed=args.seed, step=step)
    dataset = build_dataset(history.frame, history.failed, options, progress=reporter("features"))
    command = " ".join(["failure-predictor", "train", *sys.argv[2:]]) if sys.argv[1:2] == ["train"] else ""
    info = {"source": "simulate", "targets": args.targets, "days": args.days, "command": command}
    print("fitting classifier and anomaly detector ...", file=sys.stderr)
    bundle = train_bundle(dataset, history.frame.signals, step, options, args.kind, info)
    save_bundle(bundle, args.out)
    print_metrics(bundle, args.out)
    return 0


def print_metrics(bundle: ModelBundle, path: Path) -> None:
    metrics = {k: v for k, v in bundle.manifest.metrics.items() if k != "reliability"}
    horizon = format_duration(bundle.manifest.horizon_seconds)
    print(f"wrote {path} ({bundle.manifest.version}, horizon {horizon}); held-out test metrics:")
    print(json.dumps(metrics, indent=2))
