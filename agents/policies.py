"""Policies with the structure of InferGym's choice tasks: one shared scorer applied to every slot.

In ``Routing-v0`` and ``Placement-v0`` the action picks one of ``N`` slots
(replicas, nodes), and the observation is the features of each slot plus
features of the waiting item. A flat MLP must learn the same scoring rule
``N`` times, once per slot position, and mixes slots up; the classical
heuristics (shortest expected delay, best fit, FGD) instead apply ONE rule to
every slot and take the best. :class:`SlotPolicy` gives a learned agent the
same structure (as in pointer-style scheduling policies, e.g. Decima, Mao et
al., SIGCOMM 2019): the logit of slot ``j`` is ``score(slot_j, item)`` with
weights shared over the slots, so the policy is permutation-equivariant in the
slots and learns one rule from every decision. The value head reads the mean
and the max of the slot embeddings and the item features.

The observation layout comes from the env (``env.unwrapped.obs_layout``:
``slots_start``, ``n_slots``, ``slot_dim``); :func:`agents.sb3.train` passes it
as ``policy_kwargs["layout"]``. Hyperparameter YAML: ``policy: SlotPolicy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from torch import nn

from envs.sim.errors import ConfigError, check_keys, check_number

LAYOUT_KEYS = ("slots_start", "n_slots", "slot_dim")


def check_layout(layout: Any, obs_dim: int, n_actions: int) -> dict[str, int]:
    """Validate ``policy_kwargs.layout`` against the spaces; return it with int values."""
    if not isinstance(layout, Mapping):
        raise ConfigError(f"policy_kwargs.layout: {layout!r} must be a mapping with keys {list(LAYOUT_KEYS)}")
    check_keys("policy_kwargs.layout", layout, LAYOUT_KEYS, required=LAYOUT_KEYS)
    out = {
        k: int(check_number(f"policy_kwargs.layout.{k}", layout[k], ge=0, integer=True)) for k in LAYOUT_KEYS
    }
    if out["n_slots"] != n_actions:
        raise ConfigError(
            f"policy_kwargs.layout.n_slots: {out['n_slots']} must equal the number of actions ({n_actions})"
        )
    if out["slot_dim"] < 1 or out["slots_start"] + out["n_slots"] * out["slot_dim"] > obs_dim:
        raise ConfigError(
            f"policy_kwargs.layout: {out} does not fit an observation of {obs_dim} values "
            "(slots_start + n_slots * slot_dim must be <= the observation size)"
        )
    return out


def _mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers)


class SlotExtractor(nn.Module):
    """The latent networks of :class:`SlotPolicy`: per-slot logits for the actor, a pooled code for the critic."""

    def __init__(
        self, obs_dim: int, layout: Mapping[str, int], hidden: list[int], act: type[nn.Module]
    ) -> None:
        super().__init__()
        self.start, self.n, self.d = layout["slots_start"], layout["n_slots"], layout["slot_dim"]
        self.end = self.start + self.n * self.d
        self.g = obs_dim - self.n * self.d  # the item / request features around the slot block
        self.encoder = _mlp([self.d + self.g, *hidden], act)
        h = hidden[-1]
        self.score = nn.Linear(h, 1)
        self.critic = _mlp([2 * h + self.g, *hidden], act)
        self.latent_dim_pi = self.n  # the actor's "latent" is the logits themselves
        self.latent_dim_vf = hidden[-1]

    def _embed(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        slots = obs[:, self.start : self.end].reshape(-1, self.n, self.d)
        item = th.cat([obs[:, : self.start], obs[:, self.end :]], dim=1)
        x = th.cat([slots, item.unsqueeze(1).expand(-1, self.n, -1)], dim=2)
        return self.encoder(x), item

    def forward_actor(self, obs: th.Tensor) -> th.Tensor:
        h, _ = self._embed(obs)
        return self.score(h).squeeze(-1)

    def forward_critic(self, obs: th.Tensor) -> th.Tensor:
        h, item = self._embed(obs)
        return self.critic(th.cat([h.mean(dim=1), h.amax(dim=1), item], dim=1))

    def forward(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        h, item = self._embed(obs)
        pooled = th.cat([h.mean(dim=1), h.amax(dim=1), item], dim=1)
        return self.score(h).squeeze(-1), self.critic(pooled)


class SlotPolicy(MaskableActorCriticPolicy):
    """MaskablePPO policy scoring every slot with one shared network (see the module docstring).

    ``policy_kwargs``: ``layout`` (required; set by :func:`agents.sb3.train` from the env),
    ``net_arch`` (hidden sizes of the slot encoder and of the critic, default ``[64, 64]``; a list of
    ints), ``activation_fn`` (as for SB3 policies).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Any,
        layout: Mapping[str, int] | None = None,
        net_arch: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.Discrete) or not isinstance(observation_space, spaces.Box):
            raise ConfigError(
                f"policy: SlotPolicy needs a Box observation and a Discrete action space, "
                f"got {observation_space} and {action_space}"
            )
        if observation_space.shape is None or len(observation_space.shape) != 1:
            raise ConfigError(
                f"policy: SlotPolicy needs a flat observation, got shape {observation_space.shape}"
            )
        self.layout = check_layout(layout, int(observation_space.shape[0]), int(action_space.n))
        hidden = [64, 64] if net_arch is None else net_arch
        if (
            not isinstance(hidden, list)
            or not hidden
            or not all(isinstance(x, int) and x > 0 for x in hidden)
        ):
            raise ConfigError(
                f"policy_kwargs.net_arch: {net_arch!r} must be a non-empty list of positive ints"
            )
        self.hidden = list(hidden)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=[], **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = SlotExtractor(
            int(self.features_dim), self.layout, self.hidden, self.activation_fn
        )

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        # The extractor's output already is the logits: no linear layer over them (it would mix slots).
        self.action_net = nn.Identity()
        if self.ortho_init:
            self.init_weights(self.mlp_extractor.score, gain=0.01)  # near-uniform first policy
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(layout=dict(self.layout), net_arch=list(self.hidden))
        return data


POLICIES = {"SlotPolicy": SlotPolicy}

__all__ = ["SlotPolicy", "SlotExtractor", "POLICIES", "check_layout"]
