"""Write a simulation's metrics: ``metrics.json``, PNG plots (matplotlib, Agg) and ``report.html``.

The HTML is a single self-describing page next to its PNGs (relative links, no scripts), so
it can be archived or attached to a capacity-planning ticket as a directory.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

PLOTS = ("accuracy", "bytes", "participation", "rollout")


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _plot_accuracy(plt: Any, result: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, run in result["strategies"].items():
        rounds = [0] + [r["round"] for r in run["rounds"]]
        acc = [run["initial_accuracy"]] + [r["accuracy"] for r in run["rounds"]]
        ax.plot(rounds, acc, marker="o", label=name)
    ax.set(xlabel="round", ylabel="server test accuracy", title="Accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_bytes(plt: Any, result: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, run in result["strategies"].items():
        rounds = [r["round"] for r in run["rounds"]]
        ax.plot(
            rounds, [r["bytes_down"] / 1e6 for r in run["rounds"]], marker="v", label=f"{name} down"
        )
        ax.plot(
            rounds, [r["bytes_up"] / 1e6 for r in run["rounds"]], marker="^", label=f"{name} up"
        )
    ax.set(xlabel="round", ylabel="MB", title="Learning-plane bytes per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_participation(plt: Any, result: dict[str, Any], path: Path) -> None:
    name, run = next(iter(result["strategies"].items()))
    parts = [r["participation"] for r in run["rounds"] if r.get("participation")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rounds = [p["round"] for p in parts]
    for key in ("online", "sampled", "completed", "stragglers", "dropped"):
        ax.plot(rounds, [p[key] for p in parts], marker="o", label=key)
    ax.set(xlabel="round", ylabel="devices", title=f"Participation per round ({name})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_rollout(plt: Any, result: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(
        figsize=(7, 0.6 + 0.45 * max(1, sum(len(r["stages"]) for r in result["rollouts"])))
    )
    labels: list[str] = []
    for rollout in result["rollouts"]:
        for stage in rollout["stages"]:
            y = len(labels)
            labels.append(f"r{rollout['release']} cohort {stage['cohort']}")
            width = max(stage["finished_s"] - stage["started_s"], 1e-3) / 60
            color = "tab:green" if stage["gate_passed"] else "tab:red"
            ax.barh(y, width, left=stage["started_s"] / 60, color=color)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="simulated minutes", title="Rollout timeline (red: gate failed, aborted)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rollout_rows(result: dict[str, Any]) -> str:
    rows = []
    for r in result["rollouts"]:
        rows.append(
            f"<tr><td>{r['release']}</td><td>{html.escape(r['version'])}</td>"
            f"<td class='{r['state']}'>{r['state']}</td><td>{r['installed']}</td>"
            f"<td>{r['bytes_down'] / 1e6:.2f}</td>"
            f"<td>{(r['finished_s'] - r['started_s']) / 60:.1f}</td>"
            f"<td>{html.escape(r['reason'])}</td></tr>"
        )
    return "\n".join(rows)


def _strategy_rows(result: dict[str, Any]) -> str:
    rows = []
    for name, run in result["strategies"].items():
        final = run["final_accuracy"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{run['initial_accuracy']:.4f}</td>"
            f"<td>{final:.4f}</td><td>{run['client_updates']}</td>"
            f"<td>{run['simulated_s']:.1f}</td></tr>"
        )
    return "\n".join(rows)


def write_report(result: dict[str, Any], out: Path) -> Path:
    """Write ``metrics.json``, the PNG plots and ``report.html`` into ``out``; return the
    HTML's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    plt = _figure()
    _plot_accuracy(plt, result, out / "accuracy.png")
    _plot_bytes(plt, result, out / "bytes.png")
    _plot_participation(plt, result, out / "participation.png")
    _plot_rollout(plt, result, out / "rollout.png")
    scenario = result["scenario"]
    fleet = result["fleet"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fedge simulation: {html.escape(scenario["name"])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em}}
.aborted{{color:#b00;font-weight:bold}}.completed{{color:#070}}</style></head><body>
<h1>Simulation: {html.escape(scenario["name"])} (seed {scenario["seed"]})</h1>
<p>{fleet["devices"]} devices ({fleet["trainers"]} train) —
{html.escape(json.dumps(fleet["by_profile"]))}; engine {html.escape(result["engine"])};
wall {result["wall_s"]} s; peak RSS {result["peak_rss_mb"]} MiB; install cost
{result["install_cost"]["ms"]} ms/device ({html.escape(result["install_cost"]["source"])}).</p>
<h2>Learning</h2>
<table><tr><th>strategy</th><th>initial acc.</th><th>final acc.</th><th>client updates</th>
<th>simulated s</th></tr>
{_strategy_rows(result)}</table>
<p><img src="accuracy.png" alt="accuracy per round"> <img src="bytes.png" alt="bytes per round">
<img src="participation.png" alt="participation per round"></p>
<h2>Rollouts</h2>
<table><tr><th>release</th><th>version</th><th>state</th><th>installed</th><th>MB down</th>
<th>minutes</th><th>reason</th></tr>
{_rollout_rows(result)}</table>
<p><img src="rollout.png" alt="rollout timeline"></p>
<p>Raw metrics: <a href="metrics.json">metrics.json</a>.</p>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
