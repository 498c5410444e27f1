"""Settings: one YAML file plus environment overrides, validated once at start.

Everything else in the package receives a ``Settings`` object and trusts it, so
every check that can be done before the first cycle is done here, with a message
that names the offending key.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.redact import SECRET, mask_url

ENV_PREFIX = "FAILURE_PREDICTOR_"
# Variables with the prefix that are not settings: where `backtest --nab` finds the NAB corpus.
NAB_DIR_ENV = "FAILURE_PREDICTOR_NAB_DIR"
NOT_SETTINGS = frozenset({NAB_DIR_ENV})
# The bootstrap bundle ships inside the package (package data), so the default works from any directory.
BOOTSTRAP_MODEL = Path(__file__).resolve().parent / "bootstrap_model"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels the exporter adds to its own series next to the target labels.
RESERVED_LABELS = ("horizon", "signal", "bound")


class ConfigError(Exception):
    """The configuration cannot be used; the message names every bad key."""


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus-style duration ("90s", "1h30m") or a plain number."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if "".join(n + u for n, u in parts) != text:
                raise ValueError(f"expected a duration like '30s', '5m' or '1h30m', got {value!r}")
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration like '30s' or '5m', got {value!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration string for a whole number of seconds."""
    whole = round(seconds)
    if whole != seconds or whole == 0:
        return f"{round(seconds * 1000)}ms"
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _readable_file(path: Path) -> Path:
    """Files are checked at start, so a typo fails ``check-config``, not the first cycle."""
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file {str(path)!r} is not readable")
    return path


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]


DEFAULT_SIGNALS: dict[str, str] = {
    # Placeholders: {by} is the comma-separated target labels, {rate_window} the
    # configured rate window, {selector} label matchers (with a trailing comma) that the
    # source fills to read only some targets (new pods, one shard), empty otherwise.
    # CPU falls back to cores used when a pod has no limit.
    "cpu": (
        '(sum by ({by}) (rate(container_cpu_usage_seconds_total{{selector}container!="",container!="POD"}[{rate_window}]))'
        ' / sum by ({by}) (kube_pod_container_resource_limits{{selector}resource="cpu"}))'
        ' or sum by ({by}) (rate(container_cpu_usage_seconds_total{{selector}container!="",container!="POD"}[{rate_window}]))'
    ),
    "memory": (
        'sum by ({by}) (container_memory_working_set_bytes{{selector}container!="",container!="POD"})'
        ' / sum by ({by}) (kube_pod_container_resource_limits{{selector}resource="memory"})'
    ),
    "latency": (
        "histogram_quantile(0.99, sum by ({by}, le) (rate(http_request_duration_seconds_bucket{{selector}}[{rate_window}])))"
    ),
    "errors": (
        '(sum by ({by}) (rate(http_requests_total{{selector}code=~"5.."}[{rate_window}]))'
        " or sum by ({by}) (rate(http_requests_total{{selector}}[{rate_window}])) * 0)"
        " / sum by ({by}) (rate(http_requests_total{{selector}}[{rate_window}]))"
    ),
}
CORE_SIGNALS = tuple(DEFAULT_SIGNALS)

# True (returns a sample) while a target is failed: its containers restarted,
# its 5xx ratio is above 5 %, or its scrape target is down.
DEFAULT_FAILURE_QUERY = (
    "(sum by ({by}) (increase(kube_pod_container_status_restarts_total[{rate_window}])) > 0)"
    ' or ((sum by ({by}) (rate(http_requests_total{code=~"5.."}[{rate_window}]))'
    " / sum by ({by}) (rate(http_requests_total[{rate_window}]))) > 0.05)"
    " or (min by ({by}) (up) == 0)"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasicAuth(_Strict):
    username: str
    password: str | None = None
    password_file: ReadableFile | None = None

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password or password_file")
        return self


class PrometheusSettings(_Strict):
    """How to reach Prometheus or any API speaking its HTTP query protocol.

    ``timeout`` bounds one attempt from connecting to the last byte of the answer (wall
    clock, not per read: a proxy dripping one byte a second is cut off), ``deadline`` the
    whole query, every retry and backoff included, so a cycle's query stage never exceeds it.
    """

    url: str = "http://localhost:9090"
    timeout: Duration = 10.0
    deadline: Duration = 30.0
    retries: int = Field(default=2, ge=0, le=10)
    backoff: Duration = 0.5
    bearer_token: str | None = None
    bearer_token_file: ReadableFile | None = None
    basic_auth: BasicAuth | None = None
    ca_file: ReadableFile | None = None
    insecure_skip_verify: bool = False
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"expected an http(s) URL like http://prometheus:9090, got {url!r}")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _one_auth(self) -> PrometheusSettings:
        schemes = [self.bearer_token, self.bearer_token_file, self.basic_auth]
        if sum(s is not None for s in schemes) > 1:
            raise ValueError("set at most one of bearer_token, bearer_token_file, basic_auth")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file (the client certificate for mTLS), or neither")
        if self.cert_file is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"cert_file and key_file are not a usable PEM certificate and key: {exc}"
                ) from None
        return self

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured value that must never be printed (see exporter/redact.py)."""
        parsed = urlparse(self.url)
        found = [parsed.username, parsed.password, self.bearer_token, *self.headers.values()]
        if self.basic_auth is not None:
            found.append(self.basic_auth.password)
        return tuple(value for value in found if value)


class ModelSettings(_Strict):
    path: Path = BOOTSTRAP_MODEL


# kube-state-metrics' owner series, joined into one instant query: each pod's owner, and the
# owners of the ReplicaSets (Deployments) and Jobs (CronJobs) that own pods. {selector} takes
# anomaly.owners.selector (e.g. a cluster="eu-1" matcher), as the signal queries take theirs.
DEFAULT_OWNER_QUERY = (
    "kube_pod_owner{{selector}} or kube_replicaset_owner{{selector}} or kube_job_owner{{selector}}"
)


class OwnerSettings(_Strict):
    """Where the owner of each pod is read from, when ``anomaly.workload_source`` uses it."""

    query: str = DEFAULT_OWNER_QUERY
    # Label matchers every owner selector gets through {selector}: the cluster or namespaces the
    # signal queries read (owners of other clusters' pods with the same names must not match).
    selector: str = ""
    # Owners change rarely: the query runs this often, in the cycle a pod appears that the last
    # answer was not asked for (a rollout's new pods), and once more in the next cycle when it did
    # not name such a pod; never more than once per cycle (sources/owners.py).
    refresh: Duration = 300.0
    namespace_label: str = "namespace"  # the target label (and owner series label) holding the namespace

    @field_validator("query")
    @classmethod
    def _non_empty(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("the owner query is empty (use workload_source: pattern to not read owners)")
        return query

    @field_validator("selector")
    @classmethod
    def _matchers(cls, selector: str) -> str:
        text = selector.strip().rstrip(",")
        if any(c in text for c in "{}"):
            raise ValueError(
                f"expected label matchers like 'cluster=\"eu-1\"' without braces, got {selector!r}"
            )
        return text

    @field_validator("namespace_label")
    @classmethod
    def _label(cls, name: str) -> str:
        if not _LABEL_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid Prometheus label name")
        return name


class AnomalyRefitSettings(_Strict):
    """The anomaly detector: scheduled refits on recent history (off by default) and the
    per-target statistics behind ``anomaly_score`` (models/normalize.py)."""

    refit_every: Duration | None = None
    fit_window: Duration = 7 * 86400.0
    # History replayed into the statistics at start and for targets seen for the first time;
    # 0 turns the warm start off. A day covers the daily profile's first choice.
    warmup: Annotated[float, BeforeValidator(lambda v: 0.0 if v in (0, "0") else parse_duration(v))] = 86400.0
    warmup_chunk: Duration = 21600.0  # history read per query during the warm start
    seasons: tuple[Literal["daily", "weekly"], ...] = ("daily",)
    # A new target starts from the statistics of its workload: this target label with
    # workload_pattern's first group kept (pod "cart-7d9f8b6c4-x2k4q" -> "cart"). "" turns it off.
    workload_label: str = "pod"
    workload_pattern: str = r"^(.+?)(?:-[a-f0-9]{6,10})?-[a-z0-9]{5}$"
    # Who names a pod's workload: "pattern" (workload_pattern only), "kube_pod_owner" (its
    # owning Deployment, StatefulSet, DaemonSet, Job or CronJob from kube-state-metrics; pods the
    # answer does not name have none) or "auto" (the owner where known, else the pattern). When
    # the owner query fails or answers nothing, both fall back to the pattern (sources/owners.py).
    workload_source: Literal["auto", "kube_pod_owner", "pattern"] = "auto"
    owners: OwnerSettings = Field(default_factory=OwnerSettings)
    bands: bool = True  # export signal_expected{bound="lower|mean|upper"}
    time_to_limit: tuple[str, ...] = ("cpu", "memory")  # signals exported as signal_time_to_limit_seconds

    @field_validator("workload_pattern")
    @classmethod
    def _one_group(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        if compiled.groups < 1:
            raise ValueError("needs a capturing group for the workload's name")
        return pattern


class RetrainSettings(_Strict):
    """Retrain the classifier on a schedule; the result serves only if it is not worse."""

    every: Duration | None = None
    window: Duration = 14 * 86400.0


class FailureSettings(_Strict):
    """What counts as a failure when training: a PromQL expression and/or an incidents file."""

    query: str | None = DEFAULT_FAILURE_QUERY
    incidents_file: ReadableFile | None = None

    @model_validator(mode="after")
    def _some_definition(self) -> FailureSettings:
        if self.query is None and self.incidents_file is None:
            raise ValueError("set a failure query, an incidents_file, or both")
        if self.query is not None and not self.query.strip():
            raise ValueError("the failure query is empty (use null to rely on incidents_file only)")
        return self


class ListenSettings(_Strict):
    address: str = "0.0.0.0"
    port: int = Field(default=9847, ge=1, le=65535)


class ApiSettings(_Strict):
    """The HTTP API: request limits, bearer-token protection and TLS for the one port."""

    max_batch: int = Field(default=1000, ge=1, le=100_000)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    history_points: int = Field(default=60, ge=1, le=10_000)
    token: str | None = None
    token_file: ReadableFile | None = None
    protect_metrics: bool = False
    tls_cert_file: ReadableFile | None = None
    tls_key_file: ReadableFile | None = None

    @field_validator("token")
    @classmethod
    def _usable_token(cls, token: str | None) -> str | None:
        if token is not None and (not token.strip() or token != token.strip()):
            raise ValueError("the token must be non-empty and have no surrounding whitespace")
        return token

    @model_validator(mode="after")
    def _consistent(self) -> ApiSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set at most one of token, token_file")
        if self.token_file is not None and not self.token_file.read_text().strip():
            raise ValueError(f"token_file {str(self.token_file)!r} is empty")
        if self.protect_metrics and self.token is None and self.token_file is None:
            raise ValueError("protect_metrics needs a token or token_file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        if self.tls_cert_file is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.tls_cert_file, self.tls_key_file)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"tls_cert_file and tls_key_file are not a usable PEM certificate and key: {exc}"
                ) from None
        return self


# failure_probability_contribution (exact SHAP) is computed for targets at this risk or above.
RiskName = Literal["minimal", "low", "medium", "high", "critical"]


class ShardSettings(_Strict):
    """Score only this replica's share of the targets, so several replicas split a large cluster.

    Every replica keeps the targets whose stable hash (SHA-1 of the target label values) modulo
    ``count`` is ``index``; together they score every target exactly once. PromQL cannot hash,
    so each replica reads the newest steps of every target (to learn who exists) and the
    window's history only for its own, through the ``{selector}`` placeholder of the signal
    queries (README "Sharding"). The Helm chart's StatefulSet sets
    ``FAILURE_PREDICTOR_SHARD__INDEX`` from each pod's ordinal.

    ``by`` (a target label, e.g. ``pod``) assigns targets by the last character of that label's
    value instead, which PromQL can match: every query of a replica then selects its own targets
    (``by=~".*[...]"`` through ``{selector}``), so Prometheus sends each replica about 1/count of
    the series. Kubernetes names ReplicaSet pods with a random last character from 27; they are
    dealt round-robin first (4 shards get 7/7/7/6 of them). StatefulSet pods end in their ordinal
    and spread less evenly.
    """

    index: int = Field(default=0, ge=0)
    count: int = Field(default=1, ge=1, le=1024)
    by: str | None = None

    @model_validator(mode="after")
    def _index_in_range(self) -> ShardSettings:
        if self.index >= self.count:
            raise ValueError(f"index ({self.index}) must be below count ({self.count})")
        return self


class Settings(_Strict):
    """The daemon's whole configuration; see README.md for every key."""

    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    interval: Duration = 60.0
    lookback: Duration = 3600.0
    step: Duration = 60.0
    rate_window: Duration = 300.0
    target_labels: tuple[str, ...] = ("namespace", "pod")
    signals: dict[str, str | None] = Field(default_factory=dict)
    horizon: Duration = 1800.0
    model: ModelSettings = Field(default_factory=ModelSettings)
    failure: FailureSettings = Field(default_factory=FailureSettings)
    anomaly: AnomalyRefitSettings = Field(default_factory=AnomalyRefitSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    listen: ListenSettings = Field(default_factory=ListenSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    max_targets: int = Field(default=10_000, ge=1)
    shard: ShardSettings = Field(default_factory=ShardSettings)
    stale_after: Duration = 300.0
    full_refresh: Duration = 1800.0
    reread_steps: int = Field(default=2, ge=1, le=100)
    explain_min_risk: RiskName = "low"
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")

    @field_validator("target_labels")
    @classmethod
    def _label_names(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if not labels:
            raise ValueError("at least one target label is needed")
        for name in labels:
            if not _LABEL_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid Prometheus label name")
            if name in RESERVED_LABELS:
                raise ValueError(
                    f"{name!r} is reserved: the exporter adds the labels {list(RESERVED_LABELS)} itself"
                )
        if len(set(labels)) != len(labels):
            raise ValueError("target labels must be unique")
        return labels

    @field_validator("signals")
    @classmethod
    def _signal_names(cls, signals: dict[str, str | None]) -> dict[str, str | None]:
        for name, query in signals.items():
            if not _LABEL_NAME.match(name):
                raise ValueError(f"signal name {name!r} must be a valid identifier")
            if query is not None and not query.strip():
                raise ValueError(f"signal {name!r} has an empty query (use null to disable it)")
        return signals

    @model_validator(mode="after")
    def _window_shape(self) -> Settings:
        points = self.lookback / self.step
        if points < 2:
            raise ValueError(f"lookback ({self.lookback:g}s) must cover at least 2 steps of {self.step:g}s")
        if points > 11_000:
            raise ValueError("lookback / step exceeds Prometheus's 11,000 points per series")
        if self.stale_after < self.interval:
            raise ValueError("stale_after must be at least one interval")
        if not self.queries:
            raise ValueError("every signal is disabled: at least one signal is needed")
        if self.shard.by is not None:
            if self.shard.by not in self.target_labels:
                raise ValueError(
                    f"shard.by ({self.shard.by!r}) must be one of the target labels {list(self.target_labels)}"
                )
            plain = sorted(s for s, query in self.signal_templates.items() if "{selector}" not in query)
            if plain:
                raise ValueError(
                    f"shard.by selects each replica's series through {{selector}}: add it to {plain}"
                )
        anomaly = self.anomaly
        if anomaly.workload_source == "kube_pod_owner":
            wanted = {
                "anomaly.workload_label": anomaly.workload_label,
                "anomaly.owners.namespace_label": anomaly.owners.namespace_label,
            }
            for key, label in wanted.items():
                if label not in self.target_labels:
                    raise ValueError(
                        f"workload_source kube_pod_owner maps pods by namespace and name: {key} "
                        f"({label!r}) must be one of the target labels {list(self.target_labels)}"
                    )
        refits = self.anomaly.refit_every is not None or self.retrain.every is not None
        if refits and (self.model.path / "manifest.json").exists():
            raise ValueError(
                "scheduled refits write new versions: model.path must be a models directory "
                f"(with an 'active' link), not the single bundle {str(self.model.path)!r}"
            )
        return self

    @property
    def queries(self) -> dict[str, str]:
        """Effective PromQL per signal: defaults, then user overrides, placeholders filled."""
        return {name: self.fill(query) for name, query in self.signal_templates.items()}

    @property
    def signal_templates(self) -> dict[str, str]:
        """The enabled signals' PromQL before placeholders are filled (the source fills {selector})."""
        merged: dict[str, str | None] = {**DEFAULT_SIGNALS, **self.signals}
        return {name: query for name, query in merged.items() if query is not None}

    @property
    def reads_owners(self) -> bool:
        """Whether the owner query runs: a source other than the pattern, and targets it can map
        (``auto`` with target labels lacking the namespace or pod label keeps to the pattern)."""
        anomaly = self.anomaly
        labels = {anomaly.workload_label, anomaly.owners.namespace_label}
        return (
            anomaly.workload_source != "pattern"
            and bool(anomaly.workload_label)
            and labels <= set(self.target_labels)
        )

    @property
    def owner_query(self) -> str:
        """The owner query with {selector} filled from anomaly.owners.selector."""
        selector = self.anomaly.owners.selector
        return self.anomaly.owners.query.replace("{selector}", f"{selector}," if selector else "")

    @property
    def failure_query(self) -> str | None:
        """The failure definition's PromQL with placeholders filled, if there is one."""
        return None if self.failure.query is None else self.fill(self.failure.query)

    def fill(self, query: str, selector: str = "") -> str:
        """Replace {by} with the target labels, {rate_window} with the rate window and {selector}
        with ``selector`` (label matchers ending in a comma, or nothing: every target)."""
        by = ",".join(self.target_labels)
        filled = query.replace("{by}", by).replace("{rate_window}", format_duration(self.rate_window))
        return filled.replace("{selector}", selector)


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay FAILURE_PREDICTOR_A__B=value onto raw["a"]["b"]; values parse as YAML scalars."""
    merged = dict(raw)
    for key, text in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or len(key) == len(ENV_PREFIX) or key in NOT_SETTINGS:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[path[-1]] = _env_value(text)
    return merged


def _env_value(text: str) -> Any:
    """YAML scalars and lists ("5m", "3", "[job, instance]"); anything else stays text."""
    if not text.strip():
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, dict) else value


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, overlay the environment, validate; raise ConfigError naming each bad key."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(raw).__name__}")
    raw = apply_env(raw, os.environ if environ is None else environ)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """One line per problem: the dotted key, what is wrong, and the offending value."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def effective_config(settings: Settings) -> dict[str, Any]:
    """The settings as plain YAML-able data, durations as strings, secrets masked."""
    data = settings.model_dump(mode="json")
    for key in ("interval", "lookback", "step", "rate_window", "horizon", "stale_after", "full_refresh"):
        data[key] = format_duration(data[key])
    for section, key in (
        ("anomaly", "refit_every"),
        ("anomaly", "fit_window"),
        ("anomaly", "warmup_chunk"),
        ("retrain", "every"),
        ("retrain", "window"),
    ):
        if data[section][key] is not None:
            data[section][key] = format_duration(data[section][key])
    data["anomaly"]["owners"]["refresh"] = format_duration(data["anomaly"]["owners"]["refresh"])
    if data["anomaly"]["warmup"]:
        data["anomaly"]["warmup"] = format_duration(data["anomaly"]["warmup"])
    prometheus = data["prometheus"]
    for key in ("timeout", "deadline", "backoff"):
        prometheus[key] = format_duration(prometheus[key])
    prometheus["url"] = mask_url(prometheus["url"])
    prometheus["headers"] = dict.fromkeys(prometheus["headers"], SECRET)
    if prometheus["bearer_token"]:
        prometheus["bearer_token"] = SECRET
    if prometheus["basic_auth"] and prometheus["basic_auth"]["password"]:
        prometheus["basic_auth"]["password"] = SECRET
    if data["api"]["token"]:
        data["api"]["token"] = SECRET
    data["signals"] = settings.queries
    data["failure"]["query"] = settings.failure_query
    return data
