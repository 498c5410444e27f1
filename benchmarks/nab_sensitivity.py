"""NAB score of the shipped anomaly_score with one constant of exporter/models/normalize.py changed.

    python benchmarks/nab_sensitivity.py BURST_STEPS 200      # or any name in CONSTANTS below

Shows how much the chosen configuration owes to each of its constants (docs/nab.md's "Every
configuration tried" lists the results); the shipped value is the module's.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the exporter package importable
    sys.path.insert(0, str(ROOT))

import nab  # noqa: E402

from exporter import backtest as bt  # noqa: E402
from exporter.config import BOOTSTRAP_MODEL  # noqa: E402
from exporter.models import normalize  # noqa: E402
from exporter.models.bundle import load_bundle  # noqa: E402
from exporter.sources.files import FilesSource  # noqa: E402

CONSTANTS = (
    "BURST_STEPS",
    "MEMORY_STEPS",
    "MIN_STEPS",
    "EMBED_STEPS",
    "SEASON_GAIN",
    "SEASON_MIN_PERIODS",
    "SEASONS",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("constant", choices=CONSTANTS)
    parser.add_argument("value", type=ast.literal_eval, help="a Python literal: 200, 0.25, ('daily',)")
    args = parser.parse_args(argv)
    shipped = getattr(normalize, args.constant)
    setattr(normalize, args.constant, args.value)
    if args.constant == "EMBED_STEPS":
        bt.EMBED_STEPS = args.value  # the backtest imported the name
    bundle = load_bundle(BOOTSTRAP_MODEL)
    corpus = nab.load_corpus()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nab-") as out:
        source = FilesSource(bt.nab_files(bt.nab_dir()), bt.NAB_COLUMNS)
        bt.run_backtest(source, bundle, Path(out), "nab", bt.DEFAULT_DETECTOR)
        results = nab.score_corpus(corpus, nab.read_results(Path(out), bt.DEFAULT_DETECTOR, corpus))
    scores = " / ".join(f"{result.score:.1f}" for result in results.values())
    print(
        f"{args.constant}={args.value} (shipped {shipped}): {scores} "
        f"(standard / reward_low_FP / reward_low_FN, {time.perf_counter() - started:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
