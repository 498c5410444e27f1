.PHONY: demo test bootstrap-model null-forest benchmark lint chart-sync

# Install into .venv and run the daemon on a simulated cluster: http://127.0.0.1:9847/
# Options go through ARGS: make demo ARGS="--cycles 5 --port 9900"
demo:
	./scripts/demo $(ARGS)

# Install everything (Debian Prometheus/Alertmanager when missing, the package into .venv) and run
# all tests; pytest options go through ARGS: make test ARGS="-x tests/test_demo.py"
test:
	./scripts/test $(ARGS)

# Rebuild the shipped bootstrap model, package data of exporter (deterministic; ~4 min).
bootstrap-model:
	failure-predictor train --source simulate --out exporter/bootstrap_model --targets 96 --days 12 --seed 0

# Rebuild the anomaly normaliser's shipped null forest (package data; deterministic, a test checks it).
null-forest:
	python3 -c "from exporter.models.normalize import NULL_FOREST, fit_null_forest; fit_null_forest().save(NULL_FOREST)"

benchmark:
	python3 benchmarks/cycle.py --targets 1000 10000

lint:
	ruff check . && ruff format --check .

# Refresh the chart's copies of rules/ and grafana/ (Helm cannot read outside the chart; a test enforces they match).
chart-sync:
	cp rules/failure-predictor.rules.yml helm/failure-predictor/files/
	cp grafana/dashboards/*.json helm/failure-predictor/files/dashboards/
