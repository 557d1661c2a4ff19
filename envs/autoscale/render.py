"""The ``rgb_array`` frame of ``InferGym/Autoscale``: the episode so far in three panels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from envs.autoscale.env import AutoscaleEnv


def render_episode(env: AutoscaleEnv) -> np.ndarray:
    """Load vs capacity, replicas, TTFT p99 vs SLO of ``env``'s episode so far, as an RGB array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9.0, 7.0), dpi=80)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    if env.sim is None:
        fig.suptitle("InferGym/Autoscale (call reset() first)")
    else:
        h, i = env._hist, env._step
        t = h["t"][: i + 1]
        for m, name in enumerate(env.model_names):
            c = f"C{m % 10}"
            # interval values belong to the interval that ends at t[j]; counts hold from t[j] on
            axes[0].step(t[1:], h["arrival"][1 : i + 1, m], where="pre", color=c, label=name)
            axes[0].step(t, h["capacity"][: i + 1, m], where="post", color=c, ls="--")
            axes[1].step(t, h["ready"][: i + 1, m], where="post", color=c)
            axes[1].step(t, h["ready"][: i + 1, m] + h["loading"][: i + 1, m], where="post", color=c, ls=":")
            axes[2].step(t[1:], h["ttft_p99"][1 : i + 1, m], where="pre", color=c)
        axes[2].axhline(env.ttft_target_s, color="k", ls="--", lw=1)
        axes[0].set_ylabel("requests / s")
        axes[0].set_title("arrival rate (solid) vs capacity of READY replicas (dashed)", fontsize=10)
        axes[1].set_ylabel("replicas")
        axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))
        axes[1].set_title("replicas: READY (solid), READY + LOADING (dotted)", fontsize=10)
        axes[2].set_ylabel("TTFT p99 (s)")
        axes[2].set_title("time to first token, p99 per interval; dashed: SLO target", fontsize=10)
        axes[2].set_xlabel("simulated time (s)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.set_xlim(0.0, env.scenario.horizon_s)
        axes[0].legend(
            fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="model", title_fontsize=8
        )
        fig.suptitle(
            f"{env.spec.id if env.spec else 'InferGym/Autoscale'}, scenario {env.scenario.name!r}: "
            f"t = {env.sim.now:.0f} s, "
            f"return so far {h['reward'][: i + 1].sum():.2f}",
            fontsize=11,
        )
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
