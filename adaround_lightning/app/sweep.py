"""Sweep summaries: one row per job of a Hydra multirun, as CSV, Markdown and a plot.

``python -m adaround_lightning -m quant.weight_bits=2,3,4 adaround.reg_param=0.01,0.001`` writes
``summary.csv``, ``summary.md`` and ``summary.png`` to the sweep dir when the sweep ends (a Hydra
callback, :class:`SummaryCallback`). ``python -m adaround_lightning.summarize SWEEP_DIR`` rebuilds
them from the job folders at any time, so an interrupted or merged sweep can be summarised too.

A job is ``finished`` when its ``results.json`` says so, ``failed`` when it recorded an error, and
``incomplete`` when it has no ``results.json`` (killed, or still running).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["COLUMNS", "SummaryCallback", "collect_jobs", "write_summary"]

log = logging.getLogger(__name__)

COLUMNS = [
    "job",
    "status",
    "overrides",
    "weight_bits",
    "budget",
    "average_bits",
    "size_mb",
    "fp32_top1",
    "nearest_top1",
    "adaround_top1",
    "seconds",
    "error",
]


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]
    return []


def _bits(job_dir: Path, results: dict[str, Any]) -> int | None:
    if "quant" in results:
        return results["quant"].get("weight_bits")
    config = job_dir / "config.yaml"
    if config.is_file():
        return (yaml.safe_load(config.read_text()) or {}).get("quant", {}).get("weight_bits")
    return None


def _footprint(results: dict[str, Any]) -> dict[str, Any]:
    # The achieved average bits and size (both front ends' runs of a budget, every PyTorch run).
    allocation = results.get("bit_allocation") or {}
    footprint = results.get("footprint") or {}
    size = footprint.get("size_bytes")
    return {
        "budget": allocation.get("budget", ""),
        "average_bits": footprint.get("average_bits"),
        "size_mb": None if size is None else size / 1e6,
    }


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder of ``sweep_dir`` (any folder with a ``.hydra`` or ``results.json``).

    Example:
        >>> import tempfile
        >>> collect_jobs(Path(tempfile.mkdtemp()))  # an empty folder: no jobs
        []
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    job_dirs = sorted(
        (
            p
            for p in sweep_dir.iterdir()
            if p.is_dir() and ((p / ".hydra").is_dir() or (p / "results.json").is_file())
        ),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    rows = []
    for job_dir in job_dirs:
        results_path = job_dir / "results.json"
        results: dict[str, Any] = {}
        if results_path.is_file():
            try:
                results = json.loads(results_path.read_text())
            except json.JSONDecodeError:
                results = {}
        if results.get("finished"):
            status = "finished"
        elif "error" in results:
            status = "failed"
        else:
            status = "incomplete"
        rows.append(
            {
                "job": job_dir.name,
                "status": status,
                "overrides": " ".join(results.get("overrides") or _overrides(job_dir)),
                "weight_bits": _bits(job_dir, results),
                **_footprint(results),
                "fp32_top1": results.get("fp32", {}).get("top1"),
                "nearest_top1": results.get("nearest", {}).get("top1"),
                "adaround_top1": results.get("adaround", {}).get("top1"),
                "seconds": results.get("seconds"),
                "error": results.get("error", ""),
            }
        )
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    headers = [
        "job",
        "overrides",
        "status",
        "average bits",
        "size (MB)",
        "FP32 top-1",
        "nearest top-1",
        "AdaRound top-1",
        "seconds",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]

    def fmt(value: Any, digits: int = 2) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    for row in rows:
        status = row["status"] if row["status"] != "failed" else f"failed: {row['error']}"
        lines.append(
            f"| {row['job']} | `{row['overrides']}` | {status} | {fmt(row['average_bits'], 3)} | "
            f"{fmt(row['size_mb'], 4)} | {fmt(row['fp32_top1'])} | "
            f"{fmt(row['nearest_top1'])} | {fmt(row['adaround_top1'])} | {fmt(row['seconds'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if any(r["budget"] and r["status"] == "finished" for r in rows):
        _size_plot(rows, path)
        return

    finished = [r for r in rows if r["status"] == "finished" and r["weight_bits"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    # One line per method and per setting of the other swept parameters.
    groups: dict[str, list[dict[str, Any]]] = {}
    # Label lines by the overrides that differ between jobs (not those shared by all).
    shared = (
        set.intersection(*(set(r["overrides"].split()) for r in finished)) if finished else set()
    )
    for row in finished:
        others = " ".join(
            o
            for o in row["overrides"].split()
            if not o.startswith("quant.weight_bits=") and o not in shared
        )
        groups.setdefault(others, []).append(row)
    for others, group in sorted(groups.items()):
        group.sort(key=lambda r: r["weight_bits"])
        bits = [r["weight_bits"] for r in group]
        suffix = f" ({others})" if others else ""
        ax.plot(bits, [r["adaround_top1"] for r in group], "o-", label=f"AdaRound{suffix}")
        ax.plot(bits, [r["nearest_top1"] for r in group], "s--", label=f"nearest{suffix}")
    fp32 = [r["fp32_top1"] for r in finished if r["fp32_top1"] is not None]
    if fp32:
        ax.axhline(max(fp32), color="grey", linestyle=":", label="FP32")
    ax.set_xlabel("weight bits")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{len(finished)} of {len(rows)} jobs finished")
    if finished:
        ax.set_xticks(sorted({r["weight_bits"] for r in finished}))
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _size_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against model size: mixed-precision jobs as a line, uniform ones as points."""
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "finished" and r["size_mb"] is not None]
    mixed = sorted((r for r in done if r["budget"]), key=lambda r: r["size_mb"])
    uniform = sorted((r for r in done if not r["budget"]), key=lambda r: r["size_mb"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for series, style, label, name in (
        (mixed, "o-", "mixed precision (budget)", lambda r: f"{r['average_bits']:.2f} b"),
        (uniform, "s--", "uniform bits", lambda r: f"W{r['weight_bits']}"),
    ):
        points = [(r["size_mb"], r["adaround_top1"]) for r in series]
        ax.plot([x for x, _ in points], [y for _, y in points], style, label=label)
        for row, point in zip(series, points, strict=True):
            ax.annotate(name(row), point, fontsize=7)
    fp32 = [r["fp32_top1"] for r in done if r["fp32_top1"] is not None]
    if fp32:
        ax.axhline(max(fp32), color="grey", linestyle=":", label="FP32")
    ax.set_xlabel("model size (MB: weights at their bits, scales, float parameters)")
    ax.set_ylabel("AdaRound top-1 accuracy (%)")
    ax.set_title(f"{len(done)} of {len(rows)} jobs finished")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_summary(sweep_dir: Path, also: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` in ``sweep_dir``.

    Args:
        sweep_dir: The multirun dir summarised, and where the files go.
        also: Other sweep dirs whose jobs join the summary (named ``DIR/JOB``), e.g. uniform
            ``quant.weight_bits=2,3,4`` runs beside a ``quant.average_bits`` sweep.

    Returns:
        The rows written.
    """
    from adaround_lightning.core.atomic import atomic_write_text

    sweep_dir = Path(sweep_dir)
    rows = collect_jobs(sweep_dir)
    for other in also:
        rows += [{**row, "job": f"{Path(other).name}/{row['job']}"} for row in collect_jobs(other)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep_dir / "summary.csv", buffer.getvalue())
    atomic_write_text(sweep_dir / "summary.md", _markdown(rows))
    _plot(rows, sweep_dir / "summary.png")
    return rows


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]


class SummaryCallback(Callback):  # type: ignore[misc]
    """Hydra callback: summarise the sweep dir when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        failed = [r["job"] for r in rows if r["status"] != "finished"]
        log.info("sweep summary: %s (%d jobs)", sweep_dir / "summary.md", len(rows))
        if failed:
            # Every job ran; the exit status still tells scripts that some did not finish.
            log.error("jobs %s did not finish; see %s", ", ".join(failed), sweep_dir / "summary.md")
            raise SystemExit(1)
