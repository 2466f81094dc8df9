"""Human-readable reports of a pipeline run: a terminal table, ``report.md`` and a quality/latency plot.

Everything here reads the ``report.json`` stage list. Measurement stages (``evaluate``, ``benchmark``)
are attached to the model they measured (the last model-producing stage before them), so every model
of the run becomes one row (and one point of the plot).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLOT_FILE = "report.png"
MARKDOWN_FILE = "report.md"


@dataclass
class ModelRow:
    """One model of the run with the measurements taken on it."""

    index: int
    stage: str
    folder: str
    size_bytes: int | None = None
    params: int | None = None
    quality: dict[str, Any] | None = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def model_rows(stages: list[dict[str, Any]]) -> list[ModelRow]:
    """Group the stage entries by model: each model stage opens a row, measurements fill it."""
    rows: list[ModelRow] = []
    for i, entry in enumerate(stages):
        if entry.get("produces_model", True) or not rows:
            row = ModelRow(
                i + 1,
                entry.get("stage", "?"),
                entry.get("output_dir", ""),
                entry.get("size_bytes"),
                entry.get("params_after"),
            )
            if entry.get("stage") == "prune" and entry.get("params_before"):
                removed = 1 - entry["params_after"] / entry["params_before"]
                row.notes.append(f"params -{removed:.1%}")
                if isinstance(entry.get("verify"), dict):
                    row.notes.append(
                        f"oracle rel err {entry['verify'].get('max_rel_error', float('nan')):.1e}"
                    )
            if entry.get("stage") == "quantize":
                row.notes.append(
                    f"{entry.get('config', {}).get('mode', '')} INT8 {entry.get('format', '')}".strip()
                )
            if entry.get("skipped"):
                row.notes.append("passed through")
            rows.append(row)
            continue
        row = rows[-1]
        if entry.get("quality"):
            row.quality = entry["quality"]
            fid = entry.get("fidelity")
            if isinstance(fid, dict) and entry["quality"].get("name") != "cosine to reference":
                row.notes.append(f"cosine to ref {fid.get('cosine_mean', float('nan')):.4f}")
        if entry.get("latency"):
            row.latency = entry["latency"]
    return rows


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}"


def _table(stages: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    rows = model_rows(stages)
    batches = sorted({b for r in rows for b in r.latency}, key=int)
    header = ["#", "model", "size MB", "quality"]
    for b in batches:
        header += [f"p50 ms b{b}", f"p90 ms b{b}"]
    header.append("notes")
    body = []
    for r in rows:
        q = "" if r.quality is None else f"{r.quality['name']} {r.quality['value']:.4g}"
        line = [str(r.index), r.stage, _mb(r.size_bytes), q]
        for b in batches:
            lat = r.latency.get(b)
            line += ["", ""] if lat is None else [f"{lat['p50_ms']:.2f}", f"{lat['p90_ms']:.2f}"]
        line.append("; ".join(r.notes))
        body.append(line)
    return header, body


def format_table(stages: list[dict[str, Any]]) -> str:
    """A plain-text table of the models of a run (what the CLI prints)."""
    header, body = _table(stages)
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body]
    seconds = sum(float(e.get("seconds") or 0) for e in stages)
    lines.append(f"{len(stages)} stages in {seconds:.1f} s")
    return "\n".join(lines)


def render_markdown(
    stages: list[dict[str, Any]], *, title: str = "Pipeline report", plot: str | None = PLOT_FILE
) -> str:
    """``report.md``: the model table, the plot and every stage with its time."""
    header, body = _table(stages)
    out = [
        f"# {title}",
        "",
        "## Models",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    if plot:
        out += ["", f"![quality against latency]({plot})"]
    out += ["", "## Stages", "", "| # | stage | seconds | folder |", "| --- | --- | --- | --- |"]
    for i, e in enumerate(stages, 1):
        out.append(
            f"| {i} | {e.get('stage', '?')} | {float(e.get('seconds') or 0):.2f} | "
            f"{Path(e.get('output_dir', '')).name} |"
        )
    return "\n".join(out) + "\n"


def plot_quality_latency(
    stages: list[dict[str, Any]], path: str | os.PathLike, *, batch: str = "1"
) -> Path | None:
    """Scatter of quality against p50 latency at ``batch`` for every measured model; ``None`` if none."""
    rows = [r for r in model_rows(stages) if r.quality and batch in r.latency]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    xs = [r.latency[batch]["p50_ms"] for r in rows]
    ys = [r.quality["value"] for r in rows]
    ax.plot(xs, ys, "-o", color="tab:blue")
    for r, x, y in zip(rows, xs, ys, strict=True):
        ax.annotate(f"{r.index}:{r.stage}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"ONNX Runtime p50 latency, batch {batch} (ms)")
    ax.set_ylabel(rows[-1].quality["name"])
    ax.set_title("quality against latency per stage")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_reports(stages: list[dict[str, Any]], folder: str | os.PathLike, *, title: str) -> dict[str, Path]:
    """Write ``report.md`` and ``report.png`` into ``folder``; return their paths."""
    folder = Path(folder)
    written: dict[str, Path] = {}
    png = plot_quality_latency(stages, folder / PLOT_FILE)
    if png is not None:
        written["plot"] = png
    md = folder / MARKDOWN_FILE
    md.write_text(render_markdown(stages, title=title, plot=PLOT_FILE if png else None))
    written["markdown"] = md
    return written
