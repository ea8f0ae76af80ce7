"""Presenting an :class:`~.harness.EvalResult`: a text table, a JSON file, a PNG plot (matplotlib, lazily)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from block_attention.core.extras import require

from .harness import EvalResult

COLUMNS = ("mode", "n", "EM", "F1", "contained", "agree w/ full", "KL(mode||full)", "gold NLL", "TTFT ms (median)")


def _fmt(value: Any, digits: int = 3, general: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and general:
        return f"{value:.{digits}g}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(result: EvalResult) -> str:
    """A fixed-width table, one row per mode."""
    rows = [COLUMNS]
    for mode, s in result.summary().items():
        rows.append((mode, str(s["n"]), _fmt(s["em"]), _fmt(s["f1"]), _fmt(s["contains"]), _fmt(s["agree_with_full"]),
                     _fmt(s["kl_to_full"], 3, general=True), _fmt(s["gold_nll"]), _fmt(s["ttft_ms_median"], 1)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = f"model: {result.model}   data: {result.data}   examples: {len(result.examples)}"
    return head + "\n" + "\n".join(lines)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(result: EvalResult, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**result.as_dict(), **(extra or {})}
    path.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def plot(result: EvalResult, path: str | Path) -> Path:
    """Two panels: answer metrics per mode (bars), and median TTFT per mode with KL to full annotated."""
    matplotlib = require("eval", "matplotlib")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    modes = list(summary)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / 4
    for i, (key, label) in enumerate((("em", "EM"), ("f1", "F1"), ("contains", "contained"),
                                      ("agree_with_full", "agree w/ full"))):
        values = [summary[m][key] if summary[m][key] is not None else 0.0 for m in modes]
        ax1.bar([x + (i - 1.5) * width for x in range(len(modes))], values, width, label=label)
    ax1.set_xticks(range(len(modes)), modes)
    ax1.set_ylim(0, 1.05)
    ax1.set_title("answer quality")
    ax1.legend(fontsize=8)
    ttft = [summary[m]["ttft_ms_median"] for m in modes]
    bars = ax2.bar(modes, ttft, color="tab:gray")
    for bar, m in zip(bars, modes):
        kl = summary[m]["kl_to_full"]
        if kl is not None:
            ax2.annotate(f"KL {kl:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                         va="bottom", fontsize=8)
    ax2.set_ylabel("median TTFT (ms, blocks cached)")
    ax2.set_title("time to first token")
    fig.suptitle(f"{result.model} on {result.data} ({len(result.examples)} questions)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
