"""Read weeks of history from Prometheus into feature rows, in bounded chunks.

Two passes over the range, each split into chunks of ``chunk_steps``:

1. the failure definition, into a per-target "failed" timeline (booleans are
   small: 1,000 targets x 14 days at 60 s is 20 MB);
2. the signals, one range query per signal per chunk (each chunk starts one
   window early so the first rows have full windows), turned into feature rows
   at once; the raw JSON of a chunk is dropped before the next is read.

No query asks for more than Prometheus's 11,000 points per series. Rows are
capped (``max_rows``, a uniform sample per chunk, which keeps the base rate), so
memory stays bounded at thousands of targets over weeks. A chunk's rows can be
cached on disk, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.config import Settings
from exporter.features import feature_names
from exporter.sources.prometheus import (
    Answer,
    Chunk,
    PrometheusClient,
    QueryFailed,
    align,
    answer_of,
    plan_chunks,
    read_range,
)
from exporter.training.dataset import Dataset, TrainingOptions, window_rows
from exporter.training.incidents import Incident
from exporter.training.labels import failure_starts, horizon_labels

log = logging.getLogger(__name__)


class HistoryError(Exception):
    """History could not be read; the message says which query and chunk."""


class HistoryReader:
    """Turns a time range of a Prometheus into a training Dataset."""

    def __init__(
        self,
        settings: Settings,
        options: TrainingOptions,
        client: PrometheusClient | None = None,
        chunk_steps: int = 1440,
        cache_dir: Path | None = None,
        max_rows: int = 2_000_000,
    ) -> None:
        self.settings = settings
        self.max_rows = max_rows
        self._rows_per_chunk = max_rows
        self.options = options
        self.client = client or PrometheusClient(settings.prometheus)
        self.chunk_steps = chunk_steps
        self.cache_dir = cache_dir
        self.signals = tuple(settings.queries)

    def read(
        self,
        start: float,
        end: float,
        incidents: tuple[Incident, ...] = (),
        progress: Callable[[int, int], None] | None = None,
    ) -> Dataset:
        step = self.settings.step
        timestamps = np.arange(np.ceil(start / step) * step, end + step / 2, step)
        chunks = plan_chunks(len(timestamps), self.chunk_steps, self.options.window_steps)
        self._rows_per_chunk = max(1, self.max_rows // len(chunks))
        total = len(chunks) * 2
        failed = self._failed(timestamps, chunks, incidents, lambda done: progress and progress(done, total))
        parts = []
        keys: dict[tuple[str, ...], int] = {}
        for number, chunk in enumerate(chunks, start=len(chunks) + 1):
            parts.append(self._chunk_rows(timestamps, chunk, failed, keys))
            if progress:
                progress(number, total)
        return self._dataset(parts, keys, failed, timestamps)

    def _failed(
        self, timestamps: np.ndarray, chunks: list[Chunk], incidents: tuple[Incident, ...], done: Callable
    ) -> dict[tuple[str, ...], np.ndarray]:
        """Per target key, a bool timeline of when it was failed (only targets that ever were)."""
        failed: dict[tuple[str, ...], np.ndarray] = {}
        query = self.settings.failure_query
        for number, chunk in enumerate(chunks, start=1):
            if query is not None:
                keys, mask = self._cached(
                    "failed", timestamps, chunk, lambda c=chunk: self._failed_chunk(query, timestamps, c)
                )
                for key, row in zip(keys, mask["failed"], strict=True):
                    failed.setdefault(key, np.zeros(len(timestamps), bool))[chunk.first : chunk.last + 1] |= (
                        row
                    )
            done(number)
        for incident in incidents:
            key = tuple(incident.labels.get(label, "") for label in self.settings.target_labels)
            inside = (timestamps >= incident.start) & (timestamps < incident.end)
            failed.setdefault(key, np.zeros(len(timestamps), bool))[inside] = True
        return failed

    def _failed_chunk(
        self, query: str, timestamps: np.ndarray, chunk: Chunk
    ) -> tuple[dict[str, np.ndarray], list[tuple[str, ...]]]:
        times = timestamps[chunk.first : chunk.last + 1]
        answer = self._query("failure definition", query, times[0], times[-1])
        values, keys, _ = align({"failed": answer}, ("failed",), times, max_targets=len(answer.keys) or 1)
        return {"failed": np.isfinite(values[:, :, 0])}, keys

    def _query(self, what: str, query: str, start: float, end: float) -> Answer:
        try:
            answer = answer_of(
                self.client.query_range(query, start, end, self.settings.step), self.settings.target_labels
            )
        except QueryFailed as exc:
            raise HistoryError(
                f"{what} query failed for [{start:.0f}, {end:.0f}] ({exc.reason}): {exc}"
            ) from exc
        return answer

    def _chunk_rows(
        self,
        timestamps: np.ndarray,
        chunk: Chunk,
        failed: dict[tuple[str, ...], np.ndarray],
        keys: dict[tuple[str, ...], int],
    ) -> dict[str, np.ndarray]:
        chunk_keys, rows = self._cached(
            "rows", timestamps, chunk, lambda: self._read_chunk(timestamps, chunk, failed)
        )
        ids = np.array([keys.setdefault(key, len(keys)) for key in chunk_keys], dtype=np.int64)
        rows["target"] = ids[rows["target"]] if len(ids) else rows["target"]
        return rows

    def _cached(
        self, kind: str, timestamps: np.ndarray, chunk: Chunk, compute: Callable
    ) -> tuple[list[tuple[str, ...]], dict[str, np.ndarray]]:
        """Arrays of one chunk, from the cache when an earlier run stored them."""
        path = self._cache_path(kind, timestamps, chunk)
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            return [tuple(key) for key in arrays.pop("keys").tolist()], arrays
        arrays, keys = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(path.name + ".tmp.npz")
            labels = np.array(keys, dtype=str).reshape(len(keys), len(self.settings.target_labels))
            np.savez(staging, keys=labels, **arrays)
            staging.rename(path)
        return keys, arrays

    def _read_chunk(
        self, timestamps: np.ndarray, chunk: Chunk, failed: dict[tuple[str, ...], np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[tuple[str, ...]]]:
        lead_in = self.options.window_steps - 1
        first = max(chunk.first - lead_in, 0)
        window_times = timestamps[first : chunk.last + 1]
        span = f"[{window_times[0]:.0f}, {window_times[-1]:.0f}]"
        try:
            values, chunk_keys = read_range(
                self.client,
                self.settings,
                window_times,
                lambda signal: f"signal {signal!r} query failed for {span}",
                sharded=False,
            )
        except QueryFailed as exc:
            raise HistoryError(str(exc)) from exc
        never = np.zeros(len(timestamps), bool)
        timeline = (
            np.stack([failed.get(key, never) for key in chunk_keys])
            if chunk_keys
            else np.zeros((0, len(timestamps)), bool)
        )
        labels = horizon_labels(timeline, self.options.horizon_steps)
        ends = np.arange(chunk.first, chunk.last + 1)
        ends = ends[(ends % self.options.stride == 0) & (ends >= lead_in)]
        target, end = np.nonzero(labels.eligible[:, ends])
        end = ends[end]
        rng = np.random.default_rng([self.options.seed, chunk.first])
        if len(end) > self._rows_per_chunk:
            # A uniform sample keeps the base rate, so calibration stays honest.
            keep = np.sort(rng.choice(len(end), self._rows_per_chunk, replace=False))
            target, end = target[keep], end[keep]
        X = window_rows(values, window_times, target, end - first, self.signals, self.options, rng)
        rows = {
            "X": X,
            "y": labels.positive[target, end].astype(np.int8),
            "target": target,
            "time": timestamps[end],
        }
        return rows, list(chunk_keys)

    def _cache_path(self, kind: str, timestamps: np.ndarray, chunk: Chunk) -> Path | None:
        if self.cache_dir is None:
            return None
        identity = {
            "prometheus": self.settings.prometheus.url,
            "queries": self.settings.queries,
            "failure": self.settings.failure_query,
            "step": self.settings.step,
            "range": [float(timestamps[0]), float(timestamps[-1])],
            "chunk": [chunk.first, chunk.last],
            "options": [
                self.options.window_steps,
                self.options.horizon_steps,
                self.options.stride,
                self.options.partial_history_share,
                self.options.seed,
            ],
            "rows_per_chunk": self._rows_per_chunk,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / f"{kind}-{chunk.first:08d}-{digest}.npz"

    def _dataset(
        self,
        parts: list[dict[str, np.ndarray]],
        keys: dict[tuple[str, ...], int],
        failed: dict,
        timestamps: np.ndarray,
    ) -> Dataset:
        names = feature_names(self.signals)
        starts_target, starts_time = [], []
        for key, index in keys.items():
            if key in failed:
                (positions,) = np.nonzero(failure_starts(failed[key][None, :])[0])
                starts_target += [index] * len(positions)
                starts_time += timestamps[positions].tolist()
        return Dataset(
            X=np.concatenate([p["X"] for p in parts]) if parts else np.empty((0, len(names)), np.float32),
            y=np.concatenate([p["y"] for p in parts]) if parts else np.empty(0, np.int8),
            target=np.concatenate([p["target"] for p in parts]) if parts else np.empty(0, np.int64),
            time=np.concatenate([p["time"] for p in parts]) if parts else np.empty(0),
            names=names,
            failure_target=np.array(starts_target, dtype=np.int64),
            failure_time=np.array(starts_time, dtype=float),
        )
