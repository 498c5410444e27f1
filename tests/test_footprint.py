"""What serving costs in memory: the daemon's path imports no training library.

XGBoost imports scikit-learn and scipy with it, pyod imports scikit-learn, and pandas is
~40 MB on its own; a sidecar that only scores needs none of them (bundle.py, ubjson.py,
normalize.py's shipped null forest, matrix.py's compiled decoder).
"""

from __future__ import annotations

import json
import subprocess
import sys

SERVE = """
import json, sys
import numpy as np
from exporter.cli import build_parser
from exporter.config import BOOTSTRAP_MODEL, Settings
from exporter.models.bundle import load_bundle
from exporter.service.daemon import Daemon
from exporter.sources.matrix import decode_matrix
from exporter.sources.simulate import SimulatedCluster, SimulateSource

build_parser()
bundle = load_bundle(BOOTSTRAP_MODEL)
settings = Settings(step=60, lookback=3600)
daemon = Daemon(settings, SimulateSource(SimulatedCluster(targets=5, seed=0), window=60), bundle)
daemon.run_cycle()
daemon.exposition.render()
body = b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"pod":"a"},"values":[[1,"0.5"]]}]}}'
assert decode_matrix(body).values.tolist() == [0.5]
print(json.dumps(sorted(name for name in ("xgboost", "sklearn", "pyod", "pandas") if name in sys.modules)))
"""


def test_scoring_a_cycle_imports_no_training_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SERVE], capture_output=True, text=True, timeout=300, check=True
    )

    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
