"""Placement-v0's ``rgb_array`` frame: the cluster's GPU occupancy as a heat map over the GPUs in use
and the fragmented GPUs over the episode. Matplotlib is imported only when a frame is drawn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.sim.cluster import GPU_MILLI, ClusterState


def draw_cluster(
    cluster: ClusterState, history: Sequence[tuple[float, float, int]], now_s: float, title: str
) -> np.ndarray:
    """An RGB frame (uint8[H, W, 3]) of ``cluster`` at ``now_s`` with ``history``, the episode's
    (time_s, fragmented GPUs, GPUs in use) after every step, and the figure title ``title``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    c = cluster
    g = c.gpu_free_milli
    used = np.ma.masked_less(np.where(g >= 0, 1.0 - g / GPU_MILLI, -1.0), 0.0)
    fig = Figure(figsize=(10, 6), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax_map, ax_ts = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1.2, 1.0]})
    im = ax_map.imshow(used.T, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                       interpolation="nearest")  # fmt: skip
    ax_map.set_facecolor("#dddddd")  # absent GPU slots (CPU-only or smaller nodes)
    ax_map.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_map.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_map.set_xlabel("node")
    ax_map.set_ylabel("GPU slot")
    ax_map.set_title(f"GPU occupancy at t = {now_s:,.0f} s (grey: no GPU)")
    fig.colorbar(im, ax=ax_map, label="allocated fraction of GPU")
    hist = np.array(history, dtype=np.float64).reshape(-1, 3)
    ax_ts.step(hist[:, 0], hist[:, 2], where="post", color="tab:blue", label="GPUs in use")
    ax_ts.step(
        hist[:, 0],
        hist[:, 1],
        where="post",
        color="tab:red",
        label="fragmented GPUs (stranded free share)",
    )
    ax_ts.set_xlabel("time (s)")
    ax_ts.set_ylabel("GPUs")
    ax_ts.set_ylim(bottom=0.0, top=max(1.0, float(c.total_gpus())) * 1.05)
    ax_ts.legend(loc="best", fontsize="small")
    ax_ts.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
