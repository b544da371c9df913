"""Charts from bench/results/*.json (matplotlib, Agg, PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _load(out_dir: Path, name: str) -> dict[str, Any] | None:
    path = out_dir / f"{name}.json"
    return json.loads(path.read_text())["summary"] if path.exists() else None


def _stat(summary: dict[str, Any], key: str) -> tuple[float, float, float]:
    s = summary[key]
    return s["median"], s["median"] - s["min"], s["max"] - s["median"]


def latency_chart(out_dir: Path) -> Path | None:
    summary = _load(out_dir, "latency")
    if not summary:
        return None
    sizes = sorted({int(k.split(".")[1]) for k in summary if k.startswith("levels.")})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for point, marker in (("p50", "o"), ("p95", "s"), ("p99", "^")):
        stats = [
            _stat(summary, f"levels.{n}.commit_to_frame_ms.{point}") for n in sizes
        ]
        ax.errorbar(
            sizes,
            [s[0] for s in stats],
            yerr=[[s[1] for s in stats], [s[2] for s in stats]],
            marker=marker,
            capsize=3,
            label=f"commit → frame {point}",
        )
    ax.axhline(2, color="green", linestyle=":", label="target p50 ≤ 2 ms")
    ax.axhline(10, color="red", linestyle=":", label="target p99 ≤ 10 ms")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("connected sockets on the web process")
    ax.set_ylabel("ms (median of runs; bars: min to max)")
    ax.set_title("Push latency: worker commit → client receives the frame")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path = out_dir / "latency_vs_sockets.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def polling_chart(out_dir: Path) -> Path | None:
    summary = _load(out_dir, "polling")
    if not summary:
        return None
    panels = [
        (
            "server CPU seconds, following\n(web, stacked on it: worker)",
            "cpu_seconds_following.web",
            False,
        ),
        ("bytes on the wire\n(client-side count)", "follow_bytes", True),
        ("HTTP requests served", "follow_http_requests", True),
        ("outcome → client knows\np50 ms", "outcome_to_known_ms.p50", True),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 3.8))
    for ax, (title, key, log) in zip(axes, panels, strict=True):
        values = [_stat(summary, f"{mode}.{key}") for mode in ("polling", "push")]
        ax.bar(
            ["1 s polling", "push"],
            [v[0] for v in values],
            yerr=[[v[1] for v in values], [v[2] for v in values]],
            color=["#c0504d", "#4f81bd"],
            capsize=4,
        )
        for i, v in enumerate(values):
            ax.annotate(f"{v[0]:,.3g}", (i, v[0]), ha="center", va="bottom", fontsize=8)
        if key == "cpu_seconds_following.web":
            workers = [
                summary[f"{mode}.cpu_seconds_following.workers"]["median"]
                for mode in ("polling", "push")
            ]
            ax.bar(
                ["1 s polling", "push"],
                workers,
                bottom=[v[0] for v in values],
                color="#bbbbbb",
                label="worker",
            )
            ax.legend(fontsize=7)
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
    clients = int(summary["polling.clients"]["median"])
    delay = summary["delay_seconds"]["median"]
    fig.suptitle(
        f"Polling vs push: {clients} clients each following one payment "
        f"that takes {delay:g} s"
    )
    fig.tight_layout()
    path = out_dir / "polling_vs_push.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def e2e_chart(out_dir: Path) -> Path | None:
    summary = _load(out_dir, "e2e")
    if not summary:
        return None
    intervals = sorted(
        {k.split(".")[0] for k in summary if k.startswith("interval_")},
        key=lambda s: -float(s.removeprefix("interval_").removesuffix("ms")),
    )
    labels = [i.removeprefix("interval_").replace("ms", " ms") for i in intervals]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for phase, name in (("sequential_1", "1 client"), ("concurrent_50", "50 clients")):
        for point in ("p50", "p99"):
            key = f"{phase}.latency_ms.{point}"
            left.plot(
                labels,
                [summary[f"{i}.{key}"]["median"] for i in intervals],
                marker="o",
                label=f"{name} {point}",
            )
    left.set_yscale("log")
    left.set_xlabel("db_worker --interval")
    left.set_ylabel("POST → succeeded frame, ms")
    left.legend(fontsize=8)
    left.grid(True, alpha=0.3)
    right.bar(
        labels,
        [
            summary[f"{i}.concurrent_50.payments_per_second"]["median"]
            for i in intervals
        ],
    )
    right.axhline(300, color="red", linestyle=":", label="target 300/s")
    right.set_xlabel("db_worker --interval")
    right.set_ylabel("payments/s, 50 clients")
    right.legend(fontsize=8)
    fig.suptitle("End to end, PAYMENTS_SIMULATED_DELAY=0")
    fig.tight_layout()
    path = out_dir / "e2e_vs_interval.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(out_dir: Path) -> list[Path]:
    charts = [latency_chart(out_dir), polling_chart(out_dir), e2e_chart(out_dir)]
    return [c for c in charts if c is not None]
