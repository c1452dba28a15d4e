"""The figures of calibration/REPORT.md (matplotlib, Agg backend, PNG): parity plots per
dataset, cross-validation errors, and the end-to-end replays against the measured runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simserve.calibration.disaggregated import disaggregated_figure
from simserve.calibration.replay import trace_rate
from simserve.calibration.validate import LOTO_TARGET_PCT, ValidationReport
from simserve.formatting import fmt_number, fmt_percent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["validation_figures"]


def _save(fig: Figure, path: Path) -> str:
    """Lay out, write at the report's 110 dpi and close `fig`; its file name."""
    import matplotlib.pyplot as plt

    from simserve.plots.canvas import save_laid_out

    save_laid_out(fig, path, dpi=110)
    plt.close(fig)
    return path.name


def validation_figures(rep: ValidationReport, fig_dir: Path) -> list[str]:
    """Draw every figure of the report into `fig_dir`; the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    colors = {"prefill": "tab:blue", "decode": "tab:orange", "mixed": "tab:green",
              "linear": "tab:purple"}
    for name, ds in rep.datasets.items():
        fig, ax = plt.subplots(figsize=(5.2, 5))
        pred, meas = np.concatenate(ds.predicted), np.concatenate(ds.measured)
        reg, held = np.concatenate(ds.regimes), np.concatenate(ds.held)
        for regime in ("prefill", "decode", "mixed", "linear"):
            for is_held, marker in ((False, "o"), (True, "x")):
                m = (reg == regime) & (held == is_held)
                if m.any():
                    ax.scatter(meas[m], pred[m], s=14 if is_held else 9, marker=marker,
                               color=colors[regime], alpha=0.9 if is_held else 0.35,
                               label=f"{regime} ({'held back' if is_held else 'fitted'})")
        lo, hi = float(min(meas.min(), pred.min())), float(max(meas.max(), pred.max()))
        xs = np.array([lo, hi])
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.plot(xs, xs * 1.05, "k:", lw=0.6)
        ax.plot(xs, xs / 1.05, "k:", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        unit = "per-layer linear time" if name == "vidur" else "step time"
        ax.set_xlabel(f"measured {unit} (ms)")
        ax.set_ylabel(f"predicted {unit} (ms)")
        held_all = ds.pooled("holdout").get("all", {})
        ax.set_title(f"{name}: held-back MAPE "
                     f"{fmt_percent(held_all.get('mape_pct', float('nan')) / 100)} "
                     "(dotted: ±5%)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        written.append(_save(fig, fig_dir / f"parity_{name}.png"))

    # Cross-validation bars.
    rows = rep.loto + rep.lomo
    if rows:
        fig, ax = plt.subplots(figsize=(10, 5))
        labels = [f"{r['dataset']} {r['gpu'].split('-')[0]} "
                  f"{'' if r.get('model', 'all') == 'all' else r['model'] + ' '}"
                  f"without {r['held_out'][:16]}" for r in rows]
        vals = [r["errors"]["all"]["mape_pct"] for r in rows]
        kinds = ["tab:red" if r in rep.lomo else "tab:gray" for r in rows]
        ax.bar(range(len(rows)), vals, color=kinds)
        ax.axhline(LOTO_TARGET_PCT, color="k", ls="--", lw=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=6, rotation=65, ha="right")
        ax.set_ylabel("MAPE on the held-out TP degree / model (%)")
        ax.set_title("Cross-validation (gray: leave one TP out, red: leave one model out; "
                     "dashed: 15%)", fontsize=9)
        written.append(_save(fig, fig_dir / "crossval.png"))

    # End-to-end replay.
    if rep.replays:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        first = next(iter(rep.replays.values()))
        rates = [trace_rate(r.trace) for r in first]
        panels = (("TTFT p50", "TTFT p50 (ms)", False), ("TTFT p90", "TTFT p90 (ms)", True),
                  ("TPOT mean", "mean TPOT (ms)", False))
        for ax, (label, ylabel, logy) in zip(axes, panels, strict=True):
            ax.plot(rates, [r.measured[label] for r in first], "ko-", label="measured (vLLM)")
            for (name, runs), style in zip(rep.replays.items(), ("s--", "^:", "v-."), strict=False):
                ax.plot(rates, [r.simulated[label] for r in runs], style,
                        label=f"simserve ({name} profile)")
            if rep.online is not None:
                ax.plot(rates, [r.simulated[label] for r in rep.online.profile_only], "x-.",
                        color="tab:gray", label="simserve (distserve profile, no online term)")
            ax.set_xlabel("arrival rate (req/s)")
            ax.set_ylabel(ylabel)
            if logy:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle("OPT-13B on one A100-80GB, vLLM v0: replay of the measured runs", fontsize=10)
        written.append(_save(fig, fig_dir / "replay.png"))

        fig, axes = plt.subplots(1, len(first), figsize=(3.2 * len(first), 3.4), sharey=True)
        for i, ax in enumerate(np.atleast_1d(axes)):
            meas = np.sort(np.loadtxt(first[i].trace, delimiter=",", skiprows=1, usecols=3))
            ax.plot(meas / 1e3, np.linspace(0, 1, meas.size), "k-", lw=1.4,
                    label="measured (vLLM)")
            for (name, runs), style in zip(rep.replays.items(), ("--", ":", "-."), strict=False):
                sim = np.sort(_sim_ttfts(runs[i].output))
                ax.plot(sim / 1e3, np.linspace(0, 1, sim.size), style, lw=1.2,
                        label=f"simserve ({name})")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("TTFT (s)")
            ax.set_title(f"{fmt_number(trace_rate(first[i].trace))} req/s", fontsize=9)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("fraction of requests")
        np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower right")
        fig.suptitle("TTFT distribution, measured vs replayed", fontsize=10)
        written.append(_save(fig, fig_dir / "replay_ttft_cdf.png"))
    if rep.disaggregated is not None:
        written.append(disaggregated_figure(rep.disaggregated, fig_dir))
    return written


def _sim_ttfts(output: object) -> np.ndarray:
    """Simulated per-request TTFT (ms) of the served requests."""
    res = output.result  # type: ignore[attr-defined]
    ttft = (res.first_token_at - res.arrived_at) * 1e3
    return ttft[np.isfinite(ttft)]
