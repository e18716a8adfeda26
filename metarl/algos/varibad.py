"""VariBAD (Zintgraf et al., 2020): a variational posterior over the task, learned as a VAE
beside a PPO policy conditioned on it.

The encoder (part of :class:`~metarl.policies.VariBADPolicy`) reads a trial step by step and
gives a Gaussian posterior q_t(m) over a latent task embedding m after each step t. The VAE
trains it with the ELBO of the whole trial, from every posterior::

    loss = mean over trials of
           sum_t sum_j (r_hat(m_t, s_j, a_j, s'_j) - r_j)^2      reward reconstruction
         [ + sum_t sum_j |s_hat(m_t, s_j, a_j) - s'_j|^2 ]        state reconstruction, optional
         + kl_weight * sum_t KL(q_t || q_{t-1})                   q_{-1} = N(0, I)

with m_t ~ q_t one reparameterised draw per posterior, t = 0..H over the trial's H steps
and the posterior after its last transition, and j over the trial's steps: each posterior
decodes the past and the future (the reference's default; its deterministic reward
decoder is this squared error). With ``vae_subsample_elbos`` / ``vae_subsample_decodes``
only that many random posteriors per trial (their reconstructions and their KL terms), and
rewards per posterior (with replacement), enter the sums, as the reference does on long
trials. (metarl's VariBAD first summed the KL over every posterior, which on a 5,000-step
Meta-World trial weighs it 100 x the reference against 50 reconstructions; the VariBAD
rows in ``results/`` ran that way.) The VAE learns from a buffer of the
latest ``vae_buffer_trials`` trials (its own Adam, ``vae_updates`` steps per iteration on
``vae_batch_trials`` trials each); the buffer is saved beside each checkpoint. With
``vae_pretrain_collections`` / ``vae_pretrain_updates`` the first iteration starts by
filling the buffer with the initial policy's trials and training the VAE on them, so the
posterior knows the task before PPO settles on a task-blind optimum (nav2d needs it).

The policy is PPO on the state and the posterior's mean and log-variance, per step (given
the posterior, the actor and critic are feed-forward), the posterior computed once per
update and detached: the RL loss does not reach the encoder unless
``rl_loss_through_encoder`` (then the encoder is recomputed per minibatch of trials and
trained by both losses). Trials, advantages (GAE per episode, a bootstrap after
truncation) and the value scale are RL²'s (:mod:`metarl.algos.rl2`).

Where this differs from the reference (lmzintgraf/varibad): the first posterior has read
the first observation (see :class:`~metarl.policies.VariBADPolicy`); the policy sees the
normalised state and posterior without the reference's 64-unit input embeddings; the
KL is averaged over trials like the reconstruction (the reference sums it over trials,
against its own comment); the ELBO backpropagates through whole trials (the reference
truncates every ``tbptt_stepsize`` 50 steps); the value loss is the squared error unless
``value_loss`` asks for the reference's clipped Huber loss; advantages are normalised per
minibatch (the reference: once per batch); the reward decoder reads s, a, s' raw (the
reference embeds them first); the VAE samples its trials with replacement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from metarl.algos.base import (
    AlgoConfig,
    LearnerSetup,
    TrainContext,
    check_positive,
    clipped,
    minibatches,
    ppo_clip_objective,
    register,
)
from metarl.algos.rl2 import Rl2Learner, Trials, to_trials
from metarl.errors import ConfigError
from metarl.optim import normalize, welford
from metarl.policies import VariBADPolicy, gaussian_log_prob, mlp
from metarl.sampling import EpisodeBatch


@dataclass(frozen=True)
class VaribadConfig(AlgoConfig):
    """VariBAD's hyper-parameters. Defaults: the reference's cheetah-vel settings
    (``config/mujoco/args_cheetah_vel_varibad.py``); the run's ``policy`` section sizes the
    actor and critic, ``episodes_per_task`` the trial."""

    name: str = "varibad"
    latent_dim: int = 5
    gru_size: int = 128
    """The encoder's GRU."""
    reward_decoder_sizes: list[int] = field(default_factory=lambda: [64, 32])
    decode_with_action_and_state: bool = True
    """The reward decoder also sees s and a (the reference's input_prev_state and
    input_action; always s')."""
    state_decoder: bool = False
    """Also reconstruct s' from (m, s, a) (the reference's decode_state)."""
    state_decoder_sizes: list[int] = field(default_factory=lambda: [64, 32])
    kl_weight: float = 0.1
    vae_lr: float = 1e-3
    vae_updates: int = 1
    """VAE gradient steps per iteration."""
    vae_batch_trials: int = 10
    """Trials per VAE gradient step."""
    vae_buffer_trials: int = 1000
    """Latest trials the VAE samples from (saved with every checkpoint: 1,000 halfcheetah-vel
    trials took 107 MB, so the reference's 10,000 would take ~1.1 GB each time)."""
    vae_max_grad_norm: float | None = None
    """Clip the gradient norm of the encoder and of each decoder, each on its own, before
    a VAE step (the reference's encoder_max_grad_norm / decoder_max_grad_norm: 1.0 on its
    MuJoCo tasks, none on the point robot); None: no clipping."""
    vae_pretrain_collections: int = 0
    """Before the first policy update: collections of ``meta_batch_size`` trials by the
    initial policy that only fill the VAE buffer (the reference's ``precollect_len``)."""
    vae_pretrain_updates: int = 0
    """Then VAE gradient steps on that buffer before the first policy update (the
    reference's ``pretrain_len``): the posterior informative before PPO settles."""
    vae_subsample_elbos: int | None = 50
    """Posteriors per trial in each ELBO (None: all)."""
    vae_subsample_decodes: int | None = 50
    """Rewards decoded per posterior (None: all)."""
    rl_loss_through_encoder: bool = False
    normalize_policy_inputs: bool = True
    """Centre and scale the policy's inputs (state, posterior mean and log-variance) by their
    running moments (the reference's norm_state_for_policy / norm_latent_for_policy)."""
    lr: float = 7e-4
    gamma: float = 0.97
    gae_lambda: float = 0.9
    ppo_clip: float = 0.1
    ppo_epochs: int = 2
    num_minibatches: int = 8
    vf_coef: float = 0.5
    value_loss: str = "mse"
    """``mse``: vf_coef * mean (V - R)^2 (RL²'s; twice the reference's plain 0.5 (V - R)^2).
    ``clipped_huber``: vf_coef * 0.5 * mean max(huber(V - R), huber(V_clip - R)), V_clip the
    collection's value moved at most ``ppo_clip`` towards V (the reference's
    ppo_use_huberloss and ppo_use_clipped_value_loss, on in all its configs). R and V are
    in the value head's units, returns over their running std (see RL²)."""
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    normalize_advantages: bool = True
    trial_gae: bool = False
    """Advantages over the whole trial, the BAMDP episode whose return the paper maximises:
    see :attr:`metarl.algos.rl2.Rl2Config.trial_gae`. False: per episode, as the reference's
    MuJoCo configs compute them in effect (``use_proper_time_limits``: GAE cut at each
    episode's time limit); its gridworld configs run over the trial."""

    def __post_init__(self) -> None:
        for key in ("lr", "vae_lr", "gamma", "ppo_clip", "max_grad_norm"):
            check_positive(f"algo.{key}", getattr(self, key))
        if self.vae_max_grad_norm is not None:
            check_positive("algo.vae_max_grad_norm", self.vae_max_grad_norm)
        for key in ("latent_dim", "gru_size", "vae_updates", "vae_batch_trials", "vae_buffer_trials",
                    "ppo_epochs", "num_minibatches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"algo.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("vae_pretrain_collections", "vae_pretrain_updates"):
            if getattr(self, key) < 0:
                raise ConfigError(f"algo.{key} must be >= 0, got {getattr(self, key)}")
        if self.vae_pretrain_updates and not self.vae_pretrain_collections:
            raise ConfigError("algo.vae_pretrain_updates needs trials to train on: set "
                              "algo.vae_pretrain_collections >= 1")
        for key in ("vae_subsample_elbos", "vae_subsample_decodes"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"algo.{key} must be >= 1 or null, got {getattr(self, key)}")
        if self.kl_weight < 0:
            raise ConfigError(f"algo.kl_weight must be >= 0, got {self.kl_weight}")
        if not 0 <= self.gae_lambda <= 1:
            raise ConfigError(f"algo.gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.value_loss not in ("mse", "clipped_huber"):
            raise ConfigError(f"algo.value_loss must be mse or clipped_huber, got {self.value_loss!r}")


class VaeTrials(NamedTuple):
    """Trials as the VAE reads them (N trials, H = longest trial, I encoder inputs).

    ``x`` (N, H + 1, I): the encoder's inputs, step t's at t and, after each trial's last
    step, the input that reads its final transition. ``obs``, ``next_obs`` (N, H, O),
    ``actions`` (N, H, A), ``rewards`` (N, H) raw, ``mask`` (N, H) valid steps.
    """

    x: Tensor
    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    mask: Tensor


def vae_trials(trials: Trials, obs_dim: int) -> VaeTrials:
    """:class:`VaeTrials` from RL²'s :class:`Trials` (whose ``boot_x`` holds each episode's
    final observation at its last step)."""
    n, length = trials.mask.shape
    lengths = trials.mask.sum(1)
    rows = torch.arange(n)
    last = (lengths - 1).clamp_min(0)
    x = torch.cat([trials.x, torch.zeros_like(trials.x[:, :1])], 1)
    x[rows, lengths] = trials.boot_x[rows, last]
    obs = trials.x[..., :obs_dim]
    following = torch.cat([obs[:, 1:], torch.zeros_like(obs[:, :1])], 1)
    next_obs = torch.where(trials.ends.unsqueeze(-1), trials.boot_x[..., :obs_dim], following)
    return VaeTrials(x, obs, trials.actions, trials.rewards, next_obs * trials.mask.unsqueeze(-1), trials.mask)


def gaussian_kl_diag(mean_q: Tensor, logvar_q: Tensor, mean_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))), summed over the last dim."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p) ** 2) / logvar_p.exp() - 1).sum(-1)


class TrialBuffer:
    """The latest ``capacity`` trials (FIFO), padded to ``length`` steps. Storage grows with
    the trials held (doubling, up to ``capacity``): a full buffer of ML1 pick-place trials
    (5,000 steps, 39-dim observations) holds ~2.6 MB per trial."""

    def __init__(self, capacity: int, length: int, obs_dim: int, act_dim: int, input_dim: int) -> None:
        self.capacity, self.count = capacity, 0
        self.shapes = {"x": (length + 1, input_dim), "obs": (length, obs_dim), "actions": (length, act_dim),
                       "rewards": (length,), "next_obs": (length, obs_dim), "mask": (length,)}
        self.data = {k: torch.zeros(0, *s, dtype=torch.bool if k == "mask" else torch.float32)
                     for k, s in self.shapes.items()}

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def _grow(self, rows: int) -> None:
        have = self.data["mask"].shape[0]
        if rows > have:
            new = min(self.capacity, max(rows, 2 * have))
            self.data = {k: torch.cat([v, v.new_zeros(new - have, *v.shape[1:])]) for k, v in self.data.items()}

    def add(self, trials: VaeTrials) -> None:
        """Append (the last ``capacity`` of) ``trials``, overwriting the oldest when full."""
        n = trials.mask.shape[0]
        self._grow(min(self.count + n, self.capacity))
        rows = (self.count + torch.arange(n)) % self.capacity
        for k, v in trials._asdict().items():
            self.data[k][rows] = 0
            self.data[k][rows, :v.shape[1]] = v.to(self.data[k].dtype)
        self.count += n

    def sample(self, n: int, generator: torch.Generator) -> VaeTrials:
        """``n`` trials drawn uniformly, with replacement."""
        idx = torch.randint(len(self), (n,), generator=generator)
        return VaeTrials(**{k: v[idx] for k, v in self.data.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, **{k: v[:len(self)].clone() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]
        self.data = {k: state[k].clone() for k in self.shapes}


class VaribadLearner(Rl2Learner):
    """VariBAD: PPO on a posterior-conditioned policy and a VAE that trains the encoder.

    Adaptation, acting and trials are RL²'s (the state carried across a trial is the
    encoder's GRU state). Held-out episodes act with the policy's mean, as the reference's
    ``utils/evaluation.py`` does.

    Args:
        cfg: Hyper-parameters.
        policy: The encoder and the policy (trained in place).
        trial_steps: Steps of the longest trial (sizes the VAE buffer).
        device: Where the learner computes.
        seed: Seed of the learner's generator (minibatches, VAE batches and draws).
    """

    eval_deterministic = True

    def __init__(self, cfg: VaribadConfig, policy: VariBADPolicy, trial_steps: int,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        o, a, latent = policy.obs_dim, policy.act_dim, policy.latent_dim
        decoder_in = latent + o + ((o + a) if cfg.decode_with_action_and_state else 0)
        self.reward_decoder = mlp(decoder_in, cfg.reward_decoder_sizes, 1).to(self.device)
        self.state_decoder = (mlp(latent + o + a, cfg.state_decoder_sizes, o).to(self.device)
                              if cfg.state_decoder else None)
        decoders = [*self.reward_decoder.parameters(),
                    *(self.state_decoder.parameters() if self.state_decoder is not None else [])]
        rl_params = policy.policy_parameters() + (policy.encoder_parameters() if cfg.rl_loss_through_encoder else [])
        self.optimizer = torch.optim.Adam(rl_params, lr=cfg.lr, eps=1e-8)
        self.vae_optimizer = torch.optim.Adam([*policy.encoder_parameters(), *decoders], lr=cfg.vae_lr)
        self.reward_stats = torch.zeros(3, dtype=torch.float64)  # unused: the encoder reads raw rewards
        self.return_stats = torch.zeros(3, dtype=torch.float64)
        self.input_stats = torch.zeros(3, o + 2 * latent, dtype=torch.float64)
        """Running moments of the policy's inputs (``normalize_policy_inputs``)."""
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer = TrialBuffer(cfg.vae_buffer_trials, trial_steps, o, a, o + a + 2)
        self.vae_pretrained = not (cfg.vae_pretrain_collections or cfg.vae_pretrain_updates)

    @classmethod
    def from_setup(cls, setup: LearnerSetup) -> VaribadLearner:
        """The encoder from ``algo``, the actor and critic from the run's ``policy`` section."""
        cfg, p = setup.algo, setup.policy
        policy = VariBADPolicy(*setup.dims, cfg.latent_dim, cfg.gru_size, p.hidden_sizes, p.activation,
                               p.init_std, p.min_std)
        return cls(cfg, policy, setup.episodes_per_task * setup.max_steps, setup.device, setup.seeds.learner)

    # ----------------------------------------------------------------- the VAE

    def decode_rewards(self, m: Tensor, obs: Tensor, actions: Tensor, next_obs: Tensor) -> Tensor:
        """Predicted rewards (...) from latents m (..., L) and transitions (..., O / A / O)."""
        parts = [m, next_obs, *((obs, actions) if self.cfg.decode_with_action_and_state else ())]
        return self.reward_decoder(torch.cat(parts, -1)).squeeze(-1)

    def elbo_loss(self, trials: VaeTrials, noise: Tensor | None = None) -> dict[str, Tensor]:
        """The negative ELBO's terms (module docstring), each a mean over trials.

        ``noise`` (N, H + 1, L): the standard normal draws of m_t (drawn from the learner's
        generator when None). Returns ``reward``, ``state`` (0 without a state decoder),
        ``kl`` and ``loss`` = reward + state + kl_weight * kl.
        """
        cfg = self.cfg
        n, h = trials.mask.shape
        mean, logvar, _ = self.policy.encode(trials.x, self.policy.initial_state(n).to(trials.x))
        lengths = trials.mask.sum(1)
        post_valid = torch.arange(h + 1, device=mean.device) <= lengths.unsqueeze(1)  # q_0..q_H per trial
        if noise is None:
            noise = torch.randn(mean.shape, generator=self.generator).to(mean)
        m = mean + (0.5 * logvar).exp() * noise
        prior_mean, prior_logvar = torch.zeros_like(mean[:, :1]), torch.zeros_like(logvar[:, :1])
        kl = gaussian_kl_diag(mean, logvar, torch.cat([prior_mean, mean[:, :-1]], 1),
                              torch.cat([prior_logvar, logvar[:, :-1]], 1))  # (N, H + 1)
        elbos, elbo_ok = self._pick(post_valid, cfg.vae_subsample_elbos, replacement=False)  # (N, P)
        decodes, decode_ok = self._pick(trials.mask, cfg.vae_subsample_decodes, replacement=True, rows=elbos.shape[1])
        # decodes (N, P, D): reward indices j decoded from posterior elbos[:, p]
        rows = torch.arange(n, device=mean.device).view(n, 1, 1)
        m_p = m[rows[..., 0], elbos].unsqueeze(2).expand(-1, -1, decodes.shape[2], -1)
        obs, actions, next_obs = (v[rows, decodes] for v in (trials.obs, trials.actions, trials.next_obs))
        weight = (elbo_ok.unsqueeze(2) & decode_ok).to(mean.dtype)
        reward_err = (self.decode_rewards(m_p, obs, actions, next_obs) - trials.rewards[rows, decodes]) ** 2
        terms = {"reward": (reward_err * weight).sum((1, 2)).mean(),
                 "kl": (kl.gather(1, elbos) * elbo_ok).sum(1).mean(),  # the same posteriors' KL terms
                 "state": torch.zeros((), device=mean.device)}
        if self.state_decoder is not None:
            state_err = ((self.state_decoder(torch.cat([m_p, obs, actions], -1)) - next_obs) ** 2).sum(-1)
            terms["state"] = (state_err * weight).sum((1, 2)).mean()
        terms["loss"] = terms["reward"] + terms["state"] + cfg.kl_weight * terms["kl"]
        return terms

    def _pick(self, valid: Tensor, k: int | None, replacement: bool, rows: int | None = None) -> tuple[Tensor, Tensor]:
        """Indices into the last dim of ``valid`` (N, T) and whether each is valid: all T
        positions when ``k`` is None, else ``k`` random valid positions per row (uniform,
        with or without replacement). ``rows``: as many independent draws per trial
        (output (N, rows, k)); otherwise (N, k)."""
        n, t = valid.shape
        shape = (n, t) if rows is None else (n, rows, t)
        if k is None:
            idx = torch.arange(t, device=valid.device).expand(shape)
            ok = valid if rows is None else valid.unsqueeze(1).expand(shape)
            return idx, ok
        counts = valid.sum(1).clamp_min(1)  # valid positions come first in every row
        if rows is not None:
            counts = counts.unsqueeze(1)
        if replacement:
            u = torch.rand(*shape[:-1], k, generator=self.generator).to(valid.device)
            idx = (u * counts.unsqueeze(-1)).long()
        else:
            keys = torch.rand(shape, generator=self.generator).to(valid.device)
            keys = torch.where(torch.arange(t, device=valid.device) < counts.unsqueeze(-1), keys, 2.0)
            idx = keys.argsort(-1)[..., :min(k, t)]
        return idx, idx < counts.unsqueeze(-1)

    def vae_update(self, steps: int | None = None) -> dict[str, float]:
        """``steps`` (default ``vae_updates``) Adam steps on the negative ELBO of trials
        from the buffer."""
        stats: dict[str, float] = {}
        for _ in range(self.cfg.vae_updates if steps is None else steps):
            batch = self.buffer.sample(self.cfg.vae_batch_trials, self.generator)
            terms = self.elbo_loss(VaeTrials(*(v.to(self.device) for v in batch)))
            self.vae_optimizer.zero_grad()
            terms["loss"].backward()
            if self.cfg.vae_max_grad_norm is not None:
                for params in self._vae_parts():
                    nn.utils.clip_grad_norm_(params, self.cfg.vae_max_grad_norm)
            self.vae_optimizer.step()
            stats = {f"loss/vae_{k}": v.item() for k, v in terms.items()}
        return stats

    def _value_loss(self, value: Tensor, old_value: Tensor, returns: Tensor) -> Tensor:
        """Each step's value loss (``value_loss``)."""
        if self.cfg.value_loss == "mse":
            return (value - returns) ** 2
        clipped_value = old_value + (value - old_value).clamp(-self.cfg.ppo_clip, self.cfg.ppo_clip)
        return 0.5 * torch.max(nn.functional.smooth_l1_loss(value, returns, reduction="none"),
                               nn.functional.smooth_l1_loss(clipped_value, returns, reduction="none"))

    def _vae_parts(self) -> list[list[nn.Parameter]]:
        """The encoder's and each decoder's parameters (what ``vae_max_grad_norm`` clips)."""
        decoders = [d for d in (self.reward_decoder, self.state_decoder) if d is not None]
        return [self.policy.encoder_parameters(), *(list(d.parameters()) for d in decoders)]

    def _store(self, batch: EpisodeBatch) -> Trials:
        """The batch's trials, added to the VAE buffer."""
        trials = to_trials(batch, self.policy, self.device)
        self.buffer.add(VaeTrials(*(v.cpu() for v in vae_trials(trials, self.policy.obs_dim))))
        return trials

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """RL²'s iteration; the first one starts with the VAE's pretraining if configured."""
        pretrain = {} if self.vae_pretrained else self.pretrain_vae(ctx)
        return super().train_step(ctx) | pretrain

    def pretrain_vae(self, ctx: TrainContext) -> dict[str, float]:
        """``vae_pretrain_collections`` collections by the current (initial) policy into the
        VAE buffer, each on its own training tasks, then ``vae_pretrain_updates`` VAE steps.
        Returns the last step's ELBO terms under ``pretrain/``."""
        cfg = self.cfg
        for k in range(1, cfg.vae_pretrain_collections + 1):  # phase 0 is the iteration's own collection
            tasks = ctx.train_tasks(draw=k)
            self._store(ctx.collect(tasks, self.acting(self.init_adaptation(tasks)), phase=k))
        stats = self.vae_update(cfg.vae_pretrain_updates)
        self.vae_pretrained = True
        return {k.replace("loss/", "pretrain/"): v for k, v in stats.items()}

    # ----------------------------------------------------------------- the policy

    def update(self, batch: EpisodeBatch) -> dict[str, float]:
        """Store the trials, PPO on the policy (minibatches of steps, or of whole trials
        when the RL loss trains the encoder), then the VAE."""
        cfg = self.cfg
        trials = self._store(batch)
        n = trials.x.shape[0]
        h0 = self.policy.initial_state(n).to(self.device)
        obs = trials.x[..., :self.policy.obs_dim]
        with torch.no_grad():
            mean_z, logvar_z, states = self.policy.encode(trials.x, h0)
            values = self.policy.heads(obs, mean_z, logvar_z)[2]
        adv, returns = self.advantages(trials, values, states, self._value_scale(trials))
        data = {"obs": obs, "mean_z": mean_z, "logvar_z": logvar_z, "actions": trials.actions,
                "old_logp": trials.log_probs, "old_value": values, "adv": adv, "returns": returns,
                "mask": trials.mask}
        if cfg.rl_loss_through_encoder:  # units: whole trials, the encoder rerun on each minibatch
            data |= {"x": trials.x, "h0": h0}
            data |= {f"vae_{k}": v for k, v in vae_trials(trials, obs.shape[-1])._asdict().items()}
        else:  # units: valid steps
            data = {k: v[trials.mask] for k, v in data.items()}
        units = data["mask"].shape[0]
        stats: dict[str, float] = {}
        for _ in range(cfg.ppo_epochs):
            for idx in minibatches(units, cfg.num_minibatches, self.generator):
                d = {k: v[idx] for k, v in data.items()}
                if cfg.rl_loss_through_encoder:
                    d["mean_z"], d["logvar_z"], _ = self.policy.encode(d["x"], d["h0"])
                mean, std, value = self.policy.heads(d["obs"], d["mean_z"], d["logvar_z"],
                                                     through_encoder=cfg.rl_loss_through_encoder)
                mask = d["mask"].to(mean.dtype)
                count = mask.sum().clamp_min(1)
                a = normalize(d["adv"], d["mask"], dims=tuple(range(mask.dim()))) if cfg.normalize_advantages else d["adv"]
                logp = gaussian_log_prob(mean, std, d["actions"])
                ratio = torch.exp(logp - d["old_logp"])
                pg_loss = -(ppo_clip_objective(ratio, a, cfg.ppo_clip) * mask).sum() / count
                v_loss = (self._value_loss(value, d["old_value"], d["returns"]) * mask).sum() / count
                entropy = (std.log().sum(-1) * mask).sum() / count
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
                if cfg.rl_loss_through_encoder:  # as the reference, the VAE loss joins the RL loss
                    loss = loss + self.elbo_loss(VaeTrials(**{k[4:]: v for k, v in d.items()
                                                               if k.startswith("vae_")}))["loss"]
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    log_ratio = logp - d["old_logp"]
                    stats = {"loss/policy": pg_loss.item(), "loss/value": v_loss.item(),
                             "loss/approx_kl": (((ratio - 1) - log_ratio) * mask).sum().item() / count.item(),
                             "loss/clip_fraction": ((clipped(ratio, cfg.ppo_clip) * mask).sum() / count).item()}
        if cfg.normalize_policy_inputs:  # for the next collection: this update's ratios start at 1
            seen = torch.cat([obs, mean_z, logvar_z], -1)[trials.mask]
            self.input_stats = welford(self.input_stats, seen.cpu())
            count, mean, m2 = self.input_stats
            self.policy.input_mean.copy_(mean)
            self.policy.input_std.copy_((m2 / (count - 1).clamp_min(1)).add(1e-8).sqrt())
        return stats | self.vae_update()

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict:
        """RL²'s entries, the decoders, and both optimisers under ``optimizer`` (``policy``,
        ``vae``), so a weights-only checkpoint drops them together."""
        state = super().state_dict()
        state["optimizer"] = {"policy": state["optimizer"], "vae": self.vae_optimizer.state_dict()}
        state["input_stats"] = self.input_stats
        state["vae_pretrained"] = self.vae_pretrained
        state["reward_decoder"] = {k: v.cpu() for k, v in self.reward_decoder.state_dict().items()}
        if self.state_decoder is not None:
            state["state_decoder"] = {k: v.cpu() for k, v in self.state_decoder.state_dict().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; ``optimizer`` may be None (a weights-only checkpoint)."""
        optimizers = state.get("optimizer")
        super().load_state_dict({**state, "optimizer": None if optimizers is None else optimizers["policy"]})
        self.reward_decoder.load_state_dict(state["reward_decoder"])
        if self.state_decoder is not None:
            self.state_decoder.load_state_dict(state["state_decoder"])
        self.input_stats = state["input_stats"]
        self.vae_pretrained = state.get("vae_pretrained", True)  # runs from before pretraining: never mid-run
        if optimizers is not None:
            self.vae_optimizer.load_state_dict(optimizers["vae"])

    def extra_state_dict(self) -> dict[str, Any]:
        """The VAE's trial buffer (CPU tensors)."""
        return {"trials": self.buffer.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["trials"])


register("varibad", VaribadConfig, VaribadLearner.from_setup)
