"""failure-predictor: predicts workload failures from Prometheus series and re-exports them as metrics.

``__version__`` is the one version source: pyproject.toml reads it (dynamic version), and the
Dockerfile label, Chart.yaml, ``--version`` and ``failure_predictor_build_info`` must agree with it
(tests/test_version.py).
"""

__version__ = "0.1.0"
