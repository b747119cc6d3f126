"""The calibration report: ``report.html`` with PNG plots, readable offline (no external assets).

Contents: the headline accuracy table (FP32, round-to-nearest, AdaRound, ONNX), a per-layer table
(name, shape, bits, reconstruction MSE nearest vs AdaRound, fraction of weights flipped, seconds),
a bar plot of per-layer error (``layer_error.png``) and the loss curves of a few layers
(``loss_curves.png``).
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"
_ERROR_PNG = "layer_error.png"
_CURVES_PNG = "loss_curves.png"

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.better { color: #1a7f37; } .worse { color: #b42318; }
.meta { color: #555; font-size: 0.9em; } img { max-width: 100%; border: 1px solid #eee; }
"""


def _plots(layers: list[dict[str, Any]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    if not layers:
        return []
    _error_plot(layers, out_dir)
    _curve_plot(layers, out_dir)
    return [_ERROR_PNG, _CURVES_PNG]


def _error_plot(layers: list[dict[str, Any]], out_dir: Path) -> None:
    """Per layer, the output MSE of round-to-nearest and of AdaRound."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = [layer["name"] for layer in layers]
    y = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(layers) + 1.2)), dpi=110)
    ax.barh(
        y - 0.2,
        [layer["mse_nearest"] for layer in layers],
        0.4,
        label="round-to-nearest",
        color="#d0826b",
    )
    ax.barh(
        y + 0.2, [layer["mse_adaround"] for layer in layers], 0.4, label="AdaRound", color="#3a78b5"
    )
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("output reconstruction MSE (calibration set)")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / _ERROR_PNG)
    plt.close(fig)


def _curve_plot(layers: list[dict[str, Any]], out_dir: Path) -> None:
    """The loss curves of a few layers."""
    import matplotlib.pyplot as plt
    import numpy as np

    # A few layers: the first, the last, and the two others whose error AdaRound cut most.
    def ratio(i: int) -> float:
        return layers[i]["mse_adaround"] / max(layers[i]["mse_nearest"], 1e-30)

    ends = {0, len(layers) - 1}
    middle = sorted((i for i in range(len(layers)) if i not in ends), key=ratio)
    chosen = sorted(ends | set(middle[:2]))
    fig, axes = plt.subplots(
        1, len(chosen), figsize=(3.2 * len(chosen), 2.8), dpi=110, squeeze=False
    )
    for ax, index in zip(axes[0], chosen, strict=True):
        curve = np.asarray(layers[index].get("loss_curve") or [[0, 0, 0]], dtype=float)
        ax.plot(curve[:, 0], curve[:, 1], color="#3a78b5", label="reconstruction")
        ax.set_yscale("log")
        ax.set_title(layers[index]["name"], fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        twin = ax.twinx()
        twin.plot(curve[:, 0], curve[:, 2], color="#d0826b", label="regularization")
        twin.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
    fig.legend(
        [plt.Line2D([], [], color="#3a78b5"), plt.Line2D([], [], color="#d0826b")],
        ["reconstruction (left, log scale)", "regularization (right)"],
        loc="lower center",
        ncol=2,
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out_dir / _CURVES_PNG)
    plt.close(fig)


def _accuracy_rows(results: dict[str, Any]) -> str:
    rows = []
    for label, key in (
        ("FP32", "fp32"),
        ("round-to-nearest (weights only, no bias correction)", "nearest"),
        ("AdaRound", "adaround"),
        ("AdaRound, ONNX (onnxruntime)", "onnx"),
    ):
        if key not in results:
            continue
        metrics = results[key]
        cells = "".join(
            f"<td>{metrics[m]:.2f}</td>" if m in metrics else "<td></td>" for m in ("top1", "top5")
        )
        if "perplexity" in metrics:  # a language model: perplexity on the held-out text
            cells = f'<td colspan="2">perplexity {metrics["perplexity"]:.3f}</td>'

        rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    for key, row in results.get("agreement", {}).items():  # no evaluation set
        text = (
            f"{key}: top-1 agreement with FP32 {row['top1_agreement']:.2f} %, relative output "
            f"error {row['relative_error']:.4f} ({row['images']} calibration images)"
        )
        rows.append(f'<tr><td colspan="3">{html.escape(text)}</td></tr>')
    return "\n".join(rows)


def _layer_rows(layers: list[dict[str, Any]]) -> str:
    rows = []
    for layer in layers:
        better = layer["mse_adaround"] < layer["mse_nearest"]
        rows.append(
            "<tr>"
            f"<td>{html.escape(layer['name'])}</td><td>{html.escape(layer['type'])}</td>"
            f"<td>{'×'.join(str(d) for d in layer['weight_shape'])}</td><td>{layer['bits']}</td>"
            f"<td>{layer['mse_nearest']:.4g}</td>"
            f'<td class="{"better" if better else "worse"}">{layer["mse_adaround"]:.4g}</td>'
            f"<td>{100 * layer['flipped_fraction']:.2f}</td><td>{layer['seconds']:.2f}</td>"
            "</tr>"
        )
    return "\n".join(rows)


def _cache_line(cache: dict[str, Any] | None) -> str:
    """Where the activation cache lived: peak bytes per tier, passes, caching time."""
    if not cache:
        return ""
    tiers = ", ".join(
        f"{html.escape(tier)} {nbytes / 2**20:.1f} MiB"
        for tier, nbytes in cache.get("peak_bytes", {}).items()
    )
    return (
        f"<p class='meta'>Activation cache ({html.escape(str(cache.get('device')))}, "
        f"{html.escape(str(cache.get('dtype')))}): peak {tiers or 'none'}; "
        f"{cache.get('full_network_passes')} full-network passes, "
        f"{cache.get('streamed_block_passes')} streamed block passes, "
        f"{cache.get('reused_block_outputs', 0)} block outputs reused as inputs, "
        f"{cache.get('restarts')} restarts; caching {cache.get('seconds', 0):.1f} s</p>"
    )


def _left_in_float(results: dict[str, Any]) -> str:
    """The coverage line and every weight left in float with its reason."""
    coverage = results.get("coverage")
    left = (coverage or {}).get("left_in_float") or results.get("skipped") or {}
    line = ""
    if coverage:
        line = (
            f"<p class='meta'>Quantized {100 * coverage['fraction']:.2f}% of the "
            f"Conv/Linear/attention weight elements ({coverage['quantized_elements']} of "
            f"{coverage['total_elements']}).</p>"
        )
    if left:
        line += (
            "<p class='meta'>Left in float: "
            + ", ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in left.items())
            + "</p>"
        )
    return line


def _bits_label(results: dict[str, Any]) -> str:
    if results.get("bit_allocation"):
        return "mixed bits"
    return f"W{results.get('quant', {}).get('weight_bits', '?')}"


def refinement_line(refinement: dict[str, Any]) -> str:
    """One line on the network-level refinement (``results.json``'s ``refinement``).

    Example:
        >>> refinement_line({"bits": 2, "steps": 300, "steps_run": 300, "flips": 4512,
        ...     "flipped_fraction": 0.002, "divergence_before": 0.0067,
        ...     "divergence_after": 0.0023, "seconds": 55.1, "resumed": False})
        'refinement at W2: 300 of 300 steps, 4512 weights flipped (0.20%), output divergence 0.0067 -> 0.0023 on the calibration images, 55.1 s'
    """  # noqa: E501
    resumed = " (restored from the checkpoint)" if refinement.get("resumed") else ""
    return (
        f"refinement at W{refinement['bits']}: {refinement['steps_run']} of "
        f"{refinement['steps']} steps, {refinement['flips']} weights flipped "
        f"({100 * refinement['flipped_fraction']:.2f}%), output divergence "
        f"{refinement['divergence_before']:.2g} -> {refinement['divergence_after']:.2g} on the "
        f"calibration images, {refinement['seconds']:.1f} s{resumed}"
    )


def allocation_line(allocation: dict[str, Any]) -> str:
    """One line on the bits a budget chose (``results.json``'s ``bit_allocation``).

    Example:
        >>> allocation_line({"budget": "quant.average_bits=3", "bits": {"a": 2, "b": 4},
        ...     "average_bits": 3.0, "size_bytes": 1500, "uniform_size_bytes": {"2": 1000,
        ...     "4": 2000}, "seconds": 0.5})
        'mixed precision under quant.average_bits=3: 2 bits x 1, 4 bits x 1 layers; 3.000 average bits, 1.5 kB (uniform 2 bits 1.0 kB, 4 bits 2.0 kB); chosen in 0.5 s'
    """  # noqa: E501
    counts = Counter(allocation["bits"].values())
    spread = ", ".join(f"{b} bits x {counts[b]}" for b in sorted(counts))
    uniform = ", ".join(
        f"{b} bits {n / 1e3:.1f} kB" for b, n in allocation["uniform_size_bytes"].items()
    )
    return (
        f"mixed precision under {allocation['budget']}: {spread} layers; "
        f"{allocation['average_bits']:.3f} average bits, {allocation['size_bytes'] / 1e3:.1f} kB "
        f"(uniform {uniform}); chosen in {allocation['seconds']:.1f} s"
    )


def _environment_line(environment: dict[str, Any] | None) -> str:
    # What the integers depend on besides the settings (README, "Determinism").
    if not environment:
        return ""
    versions = ", ".join(f"{k} {v}" for k, v in environment.get("versions", {}).items())
    text = (
        f"device {environment.get('device')} ({environment.get('device_name')}), "
        f"{environment.get('threads')} threads, Python {environment.get('python')}, {versions}"
    )
    return f'<p class="meta">{html.escape(text)}</p>\n'


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Write ``report.html`` and its PNGs into ``out_dir``; return the HTML path.

    Example:
        >>> write_report(json.loads(Path("results.json").read_text()), Path("."))  # doctest: +SKIP
    """
    from adaround_lightning.core.atomic import atomic_write_text

    out_dir = Path(out_dir)
    layers = list(results.get("layers", []))
    images = _plots(layers, out_dir)
    quant = results.get("quant", {})
    meta = (
        f"recipe <b>{html.escape(str(results.get('recipe', '')))}</b>, model "
        f"<b>{html.escape(str(results.get('model', '')))}</b>, {_bits_label(results)} "
        f"{'per-channel' if quant.get('per_channel') else 'per-tensor'}, "
        f"{results.get('calibration_images', '?')} calibration / {results.get('eval_images', '?')} "
        f"evaluation images, calibration {results.get('calibration_seconds', 0):.1f} s"
    )
    grid = results.get("grid_check")
    if grid:
        status = "passed" if grid.get("passed") else "FAILED"
        meta += f", grid check {status} ({grid['weights']} integers)"
    onnx_diff = results.get("onnx", {}).get("max_abs_logit_diff")
    if onnx_diff is not None:
        meta += f", ONNX vs PyTorch max |Δlogit| {onnx_diff:.2g}"
    allocation = results.get("bit_allocation")
    if allocation:
        meta += f"; {html.escape(allocation_line(allocation))}"
    if results.get("refinement"):
        meta += f"; {html.escape(refinement_line(results['refinement']))}"
    skipped_html = _left_in_float(results)
    figures = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in images)
    cache_html = _cache_line(results.get("cache")) + _environment_line(results.get("environment"))
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>AdaRound report</title>
<style>{_CSS}</style></head><body>
<h1>AdaRound calibration report</h1>
<p class="meta">{meta}</p>
<h2>Accuracy (%)</h2>
<table><tr><th>model</th><th>top-1</th><th>top-5</th></tr>
{_accuracy_rows(results)}
</table>
{skipped_html}
{cache_html}
<h2>Per-layer reconstruction error</h2>
{figures}
<table><tr><th>layer</th><th>type</th><th>weight shape</th><th>bits</th><th>MSE nearest</th>
<th>MSE AdaRound</th><th>flipped %</th><th>seconds</th></tr>
{_layer_rows(layers)}
</table>
</body></html>
"""
    path = out_dir / REPORT_FILE
    atomic_write_text(path, document)
    return path
