"""RL² (Duan et al., 2016; Wang et al., 2016) trained with PPO.

A GRU policy sees (observation, previous action, previous reward, new-episode flag) and
keeps its state across the episodes of one task (a trial); adaptation happens in that
state. Each meta-iteration collects one trial per task and runs PPO with backpropagation
through whole trials, or through windows of them (``algo.bptt_window``; with
``algo.bptt_stagger`` every other epoch's windows start half a window later).

Advantages are GAE per episode by default: the recursion stops at episode boundaries, with
no bootstrap after a true termination and a bootstrap from the value of the final
observation (with the trial's state) after a time-limit truncation. ``algo.trial_gae``
computes them over the whole trial instead, as the paper's objective (the trial's
discounted return) and garage's and metaworld-algorithms' RL² do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from metarl.algos.base import (
    AlgoConfig,
    LearnerSetup,
    NoExtraState,
    TrainContext,
    check_positive,
    clipped,
    minibatches,
    ppo_clip_objective,
    register,
    summary_metrics,
)
from metarl.envs import Task
from metarl.errors import ConfigError
from metarl.optim import compute_gae, normalize, welford
from metarl.policies import Params, PolicySpec, RecurrentGaussianPolicy, gaussian_log_prob
from metarl.policies.acting import Acting
from metarl.sampling import EpisodeBatch


@dataclass(frozen=True)
class Rl2Config(AlgoConfig):
    """RL² (Duan et al., 2016) with PPO. Defaults: Meta-World paper appendix (GRU 256,
    lr 5e-4, clip 0.2, GAE lambda 0.95, 10 epochs) and metaworld-algorithms (grad-norm 1.0).
    The policy's ``hidden_sizes`` are the encoder before the GRU ([] for none)."""

    name: str = "rl2_ppo"
    gru_size: int = 256
    lr: float = 5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ppo_clip: float = 0.2
    ppo_epochs: int = 10
    num_minibatches: int = 1
    """Minibatches per epoch, of whole trials (or of windows with ``bptt_window``)."""
    bptt_window: int | None = None
    """Truncated backpropagation through time: train on windows of this many steps of each
    trial, each starting from the GRU state the rollout reached there (recomputed with the
    pre-update policy), and minibatch over the windows. None: whole trials. With 500-step
    episodes, 500 trains on episodes, as metaworld-algorithms' RL² did at b1eacb5 (minibatches
    of whole episodes; its current one trains on 250-step chunks started every 200 steps,
    see ``bptt_stagger``)."""
    bptt_stagger: bool = False
    """With ``bptt_window``: every other epoch cuts its windows half a window later (at
    ``window // 2 + k * window``), so that a step that starts a window in one epoch sits
    inside one in the next. With windows as long as the episodes, windows cut at the
    episodes' starts never hold an episode boundary: no gradient reaches how an episode's
    GRU state is written from the previous episode, which RL² is for. Staggered, half the
    epochs backpropagate across every boundary, as metaworld-algorithms' overlapping
    250-step chunks do across some."""
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 1.0
    normalize_advantages: bool = True
    normalize_reward_input: bool = True
    """Scale the reward the policy sees by its running standard deviation."""
    trial_gae: bool = False
    """Advantages and value targets over the whole trial, one episode of the Bayes-adaptive
    MDP: the GAE recursion and the discounting run across the trial's episode boundaries
    (an action earns the later episodes' discounted rewards, so exploring early pays), an
    episode's last step bootstraps from the next episode's first state, and only the trial's
    last step is terminal. That is the RL² paper's objective and what garage's RL2 (one
    path per trial) and metaworld-algorithms' RL² (``compute_advantages`` keeps only the
    trial's first episode start) compute. False: per episode (see the module docstring),
    which credits nothing across episodes, as varibad's MuJoCo RL² and VariBAD configs do in
    effect (``use_proper_time_limits`` cuts GAE at each episode's time limit inside its
    BAMDP wrapper). Every RL² and VariBAD result committed before this option ran per
    episode."""
    target_kl: float | None = None
    """Stop an update's epochs at the first minibatch whose approximate KL from the
    collecting policy exceeds 1.5 x this, before its step (Stable-Baselines3's rule;
    metaworld-algorithms' RL² has the option; ``rl2_ppo/halfcheetah-vel`` sets 0.05). None:
    always ``ppo_epochs`` epochs. The clipped objective alone does not bound how far
    ``ppo_epochs x num_minibatches`` Adam steps move the policy: as the std shrinks, the
    same steps cost more KL (halfcheetah-vel, no target: KL 0.01 at the first update, 0.5
    at 2M env steps, 4-6 after 4M, with 94% of the ratios clipped)."""

    def __post_init__(self) -> None:
        for key in ("lr", "gamma", "ppo_clip", "max_grad_norm"):
            check_positive(f"algo.{key}", getattr(self, key))
        if self.target_kl is not None:
            check_positive("algo.target_kl", self.target_kl)
        if self.gru_size < 1 or self.ppo_epochs < 1 or self.num_minibatches < 1:
            raise ConfigError("algo.gru_size, algo.ppo_epochs and algo.num_minibatches must be >= 1")
        if self.bptt_window is not None and self.bptt_window < 1:
            raise ConfigError(f"algo.bptt_window must be >= 1 or null, got {self.bptt_window}")
        if self.bptt_stagger and (self.bptt_window or 0) < 2:
            raise ConfigError("algo.bptt_stagger needs algo.bptt_window >= 2, got "
                              f"{self.bptt_window}")



class Rl2State(NamedTuple):
    """Adaptation state: the parameters and where each task's trial stands (None: new)."""

    params: Params
    carry: dict[str, Tensor] | None


class Trials(NamedTuple):
    """Each task's trial as one time-ordered sequence of its valid steps, padded at the end.

    Shapes (N tasks, L = longest trial): ``x`` (N, L, I) policy inputs, ``actions``
    (N, L, A), ``rewards``, ``log_probs`` (N, L), ``terminated``, ``ends`` (episode ends),
    ``mask`` (N, L); ``boot_x`` (N, L, I) the input that would follow a truncated step
    (its final observation), used only where ``truncated``.
    """

    x: Tensor
    actions: Tensor
    rewards: Tensor
    log_probs: Tensor
    terminated: Tensor
    truncated: Tensor
    ends: Tensor
    mask: Tensor
    boot_x: Tensor


def trial_last_step(mask: Tensor) -> Tensor:
    """True at each trial's last valid step, (N, L) from the trials' ``mask`` (valid steps
    first, then padding)."""
    last = torch.zeros_like(mask)
    last[torch.arange(mask.shape[0], device=mask.device), (mask.sum(1) - 1).clamp_min(0)] = mask.any(1)
    return last


def to_trials(batch: EpisodeBatch, policy: RecurrentGaussianPolicy, device: torch.device) -> Trials:
    """Reorder a batch (N, E, T, ...) into trials (N, L, ...) and build the policy inputs
    exactly as the sampler did (previous action and reward carry across episodes)."""
    n, e, t = batch.mask.shape
    flat_mask = batch.mask.reshape(n, e * t)
    # Stable sort puts each task's valid steps first, in (episode, time) order.
    order = torch.argsort((~flat_mask).to(torch.int8), dim=1, stable=True)
    length = int(flat_mask.sum(1).max())
    order = order[:, :length]

    def seq(x: Tensor) -> Tensor:
        flat = x.reshape(n, e * t, *x.shape[3:])
        index = order.reshape(n, length, *([1] * (flat.dim() - 2))).expand(n, length, *flat.shape[2:])
        return torch.gather(flat, 1, index)

    mask = seq(batch.mask)
    obs, actions, rewards = seq(batch.obs), seq(batch.actions), seq(batch.rewards) * mask
    terminated, truncated = seq(batch.terminated) & mask, seq(batch.truncated) & mask
    ends = terminated | truncated
    prev_action = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], 1)
    prev_reward = torch.cat([torch.zeros_like(rewards[:, :1]), rewards[:, :-1]], 1)
    new_episode = torch.cat([torch.ones_like(ends[:, :1]), ends[:, :-1]], 1)
    scale = policy.reward_scale.cpu()
    x = policy.inputs(obs, prev_action, prev_reward, new_episode, scale)
    # Final observation of each episode, placed at its last step (bootstrap input).
    last = batch.last_obs.unsqueeze(2).expand(n, e, t, batch.last_obs.shape[-1])
    boot_x = policy.inputs(seq(last), actions, rewards, torch.zeros_like(ends), scale)
    return Trials(*(v.to(device) for v in (x, actions, rewards, seq(batch.log_probs), terminated,
                                           truncated, ends, mask, boot_x)))


def windows(width: int, states: Tensor, mask: Tensor, *seqs: Tensor,
            offset: int = 0) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Cut trials into windows of ``width`` steps for truncated backpropagation.

    ``states`` (N, L, H) is the GRU state after each step of the trials, ``mask`` (N, L)
    their valid steps, ``seqs`` further (N, L, ...) tensors. Windows start at steps
    ``offset + k * width`` (and at step 0: with an ``offset`` in (0, width), a first window
    of ``offset`` steps). Returns the windows' initial states (M, H) (zero for a trial's
    first window, else the state after the step before the window), their mask (M, width)
    and each of ``seqs`` as (M, width, ...), padded with zeros after a window's last step
    (a shorter first window, a trial's end). Windows without a valid step are dropped.
    """
    n, length, hidden = states.shape
    if not 0 <= offset < width:
        raise ValueError(f"window offset must be in [0, {width}), got {offset}")
    starts = torch.arange(offset, max(offset, length), width, device=states.device)  # none past the end
    if offset:
        starts = torch.cat([starts.new_zeros(1), starts])
    ends = torch.cat([starts[1:], starts.new_full((1,), length)])
    steps = starts[:, None] + torch.arange(width, device=states.device)  # (K, width)
    inside = steps < ends[:, None]
    steps = steps.clamp_max(length - 1)
    k = len(starts)
    before = (starts - 1).clamp_min(0)
    first = states.new_zeros(n, 1, hidden)
    h0 = torch.where((starts > 0)[None, :, None], states[:, before], first)

    def cut(v: Tensor) -> Tensor:
        out = v[:, steps]  # (N, K, width, ...)
        keep_step = inside.reshape(1, k, width, *([1] * (v.dim() - 2)))
        return torch.where(keep_step, out, out.new_zeros(())).reshape(n * k, width, *v.shape[2:])

    mask = cut(mask)
    keep = mask.any(1)
    return h0.reshape(n * k, hidden)[keep], mask[keep], tuple(cut(v)[keep] for v in seqs)


class Rl2Learner(NoExtraState):
    """PPO on trials of a recurrent policy.

    Args:
        cfg: Hyper-parameters.
        policy: The recurrent policy (trained in place).
        device: Where the learner computes.
    """

    adaptation_unit = "episodes"
    eval_deterministic = False  # the RL² paper and garage's RL2 sample
    resumes_exactly = adapts_on_batch = True
    adaptation_episodes = 1
    """Each episode of a trial updates the state the next one starts from."""
    trains = True

    def __init__(self, cfg: Rl2Config, policy: RecurrentGaussianPolicy, device: str | torch.device = "cpu",
                 seed: int = 0) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.reward_stats = torch.zeros(3, dtype=torch.float64)  # count, mean, M2 (Welford)
        self.return_stats = torch.zeros(3, dtype=torch.float64)  # of discounted returns
        self.generator = torch.Generator().manual_seed(seed)  # minibatch order

    @classmethod
    def from_setup(cls, setup: LearnerSetup) -> Rl2Learner:
        """A GRU policy (``policy.hidden_sizes`` its encoder) from the run's settings."""
        p = setup.policy
        policy = RecurrentGaussianPolicy(*setup.dims, setup.algo.gru_size, p.hidden_sizes, p.activation,
                                         p.init_std, p.min_std)
        return cls(setup.algo, policy, setup.device, setup.seeds.learner)

    @property
    def policy_spec(self) -> PolicySpec:
        return self.policy.spec

    def init_adaptation(self, tasks: list[Task], seed: int = 0) -> Rl2State:
        return Rl2State(self.policy_params, None)

    def acting(self, state: Rl2State) -> Acting:
        return Acting(state.params, state.carry)

    def adapt(self, state: Rl2State, batch: EpisodeBatch) -> Rl2State:
        """The trials go on from where ``batch`` left them (adaptation is the GRU state)."""
        return Rl2State(state.params, batch.carry)

    @property
    def policy_params(self) -> Params:
        """Parameters and buffers (the reward scale) the sampler's policy copies need."""
        return {k: v.detach() for k, v in [*self.policy.named_parameters(), *self.policy.named_buffers()]}

    def _update_reward_scale(self, batch: EpisodeBatch) -> None:
        if self.cfg.normalize_reward_input:
            self.reward_stats, std = _welford(self.reward_stats, batch.rewards[batch.mask])
            self.policy.reward_scale.fill_(1.0 / max(std, 1e-4))

    def _boundaries(self, trials: Trials) -> tuple[Tensor, Tensor]:
        """(terminated, dones) for :func:`compute_gae`: per episode, or with ``trial_gae``
        the trial's last step as its only end."""
        if self.cfg.trial_gae:
            last = trial_last_step(trials.mask)
            return last, last | ~trials.mask
        return trials.terminated, trials.ends | ~trials.mask

    def _value_scale(self, trials: Trials) -> float:
        """1 / running std of the discounted returns (per episode, or per trial with
        ``trial_gae``): the value head learns scaled returns, so a shared trunk is not
        dominated by the value loss's magnitude."""
        zeros = torch.zeros_like(trials.rewards)
        returns = compute_gae(trials.rewards, zeros, zeros, *self._boundaries(trials), self.cfg.gamma, 1.0)
        self.return_stats, std = _welford(self.return_stats, returns[trials.mask])
        return 1.0 / max(std, 1e-4)

    def advantages(self, trials: Trials, values: Tensor, states: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """GAE (per episode, or over the trial with ``trial_gae``) and the value targets,
        (N, L) each, for rewards times ``scale`` (the units the value head predicts in)."""
        cfg = self.cfg
        with torch.no_grad():
            # The next step's value: within a trial also across an episode boundary, the
            # next episode's first state (what trial_gae bootstraps from).
            next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)
            if not cfg.trial_gae and trials.truncated.any():  # V(final observation), state after the step
                n_idx, t_idx = trials.truncated.nonzero(as_tuple=True)
                boot = self.policy(trials.boot_x[n_idx, t_idx].unsqueeze(1), states[n_idx, t_idx])[2][:, 0]
                next_values[n_idx, t_idx] = boot
            adv = compute_gae(trials.rewards * scale, values, next_values, *self._boundaries(trials),
                              cfg.gamma, cfg.gae_lambda) * trials.mask
        return adv, (adv + values) * trials.mask

    def update(self, batch: EpisodeBatch) -> dict[str, float]:
        """PPO epochs over minibatches of whole trials (or of ``bptt_window`` windows, cut
        half a window later in odd epochs with ``bptt_stagger``).

        The stats are the last gradient step's; with ``target_kl``, an update that stops
        early also reports the KL that stopped it as ``loss/stop_kl``."""
        cfg = self.cfg
        trials = to_trials(batch, self.policy, self.device)
        h0 = self.policy.initial_state(trials.x.shape[0]).to(self.device)
        with torch.no_grad():
            _, _, values, states = self.policy(trials.x, h0)
        adv, returns = self.advantages(trials, values, states, self._value_scale(trials))
        seqs = (trials.x, trials.actions, trials.log_probs, adv, returns)
        if cfg.bptt_window is None:
            cuts = [(h0, trials.mask, seqs)]
        else:
            offsets = [0, cfg.bptt_window // 2] if cfg.bptt_stagger and cfg.ppo_epochs > 1 else [0]
            cuts = [windows(cfg.bptt_window, states, trials.mask, *seqs, offset=o) for o in offsets]
        stats: dict[str, float] = {}
        steps = 0
        # Each epoch draws its split when it starts, so stopping early draws no more.
        batches = ((cut, idx) for epoch in range(cfg.ppo_epochs) for cut in [cuts[epoch % len(cuts)]]
                   for idx in minibatches(cut[1].shape[0], cfg.num_minibatches, self.generator))
        for (h0, valid, (x, actions, old_logp, adv, returns)), idx in batches:
            mean, std, value, _ = self.policy(x[idx], h0[idx])
            mask = valid[idx].float()
            count = mask.sum().clamp_min(1)
            a = normalize(adv[idx], valid[idx], dims=(0, 1)) if cfg.normalize_advantages else adv[idx]
            logp = gaussian_log_prob(mean, std, actions[idx])
            ratio = torch.exp(logp - old_logp[idx])
            with torch.no_grad():
                approx_kl = (((ratio - 1) - (logp - old_logp[idx])) * mask).sum().item() / count.item()
            if cfg.target_kl is not None and approx_kl > 1.5 * cfg.target_kl:
                stats["loss/stop_kl"] = approx_kl  # the KL that stopped the epochs, only when one did
                break
            pg_loss = -(ppo_clip_objective(ratio, a, cfg.ppo_clip) * mask).sum() / count
            v_loss = (((value - returns[idx]) ** 2) * mask).sum() / count
            entropy = (std.log().sum(-1) * mask).sum() / count
            loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            steps += 1
            with torch.no_grad():
                stats = {"loss/policy": pg_loss.item(), "loss/value": v_loss.item(), "loss/approx_kl": approx_kl,
                         "loss/clip_fraction": ((clipped(ratio, cfg.ppo_clip) * mask).sum() / count).item(),
                         "policy/std": (std.mean(-1) * mask).sum().item() / count.item()}
        self._update_reward_scale(batch)
        return stats | {"loss/gradient_steps": float(steps)}

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """One trial per training task, then the PPO update. ``train/return_pre`` is the
        trials' first episode, ``train/return_post`` their last."""
        tasks = ctx.train_tasks()
        batch = ctx.collect(tasks, self.acting(self.init_adaptation(tasks)), phase=0)
        returns, success = batch.episode_returns(), batch.episode_success()
        metrics = summary_metrics(returns[:, 0], None if success is None else success[:, 0], "pre")
        metrics |= summary_metrics(returns[:, -1], None if success is None else success[:, -1], "post")
        return metrics | self.update(batch)

    def state_dict(self) -> dict:
        return {"policy": {k: v.cpu() for k, v in self.policy.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "reward_stats": self.reward_stats,
                "return_stats": self.return_stats, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if set(state.get("policy", {})) != set(self.policy.state_dict()):
            raise ValueError("checkpoint parameters do not match this RL² policy")
        self.policy.load_state_dict(state["policy"])
        if state.get("optimizer") is not None:  # None in a weights-only checkpoint
            self.optimizer.load_state_dict(state["optimizer"])
        self.reward_stats, self.return_stats = state["reward_stats"], state["return_stats"]
        self.generator.set_state(state["generator"])



def _welford(stats: Tensor, values: Tensor) -> tuple[Tensor, float]:
    """Merge ``values`` into running scalar (count, mean, M2); return the new stats and the std."""
    merged = welford(stats, values)
    total, _, m2 = merged.tolist()
    return merged, (m2 / max(total - 1, 1)) ** 0.5


register("rl2_ppo", Rl2Config, Rl2Learner.from_setup)
