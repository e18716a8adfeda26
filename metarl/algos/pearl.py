"""PEARL (Rakelly et al., 2019): probabilistic context variables and off-policy SAC.

A context encoder turns each transition c_n = (s, a, r[, s']) of a task into a Gaussian
factor N(mu_n, sigma_n^2) over a latent task variable z (sigma^2 through a softplus); the
posterior multiplies the factors with the unit prior, in closed form by precisions::

    1 / var = 1 + sum_n 1 / sigma_n^2        mean = var * sum_n mu_n / sigma_n^2

so an empty context gives the prior back and more transitions only narrow it. z is drawn
from it with the reparameterisation trick, and KL(q(z | c) || N(0, I)) keeps it an
information bottleneck. The reference code (katerakelly/oyster, ``agent.py``) multiplies
the factors without the prior; with the tens of transitions a context holds that changes
the posterior little. With ``factor_rank`` r >= 1 (not in the paper) each factor's
precision is diag(1 / sigma_n^2) + U_n U_n^T with U_n (L x r) from the encoder too, and
the posterior's precision I + sum_n of them: a full covariance, through its Cholesky factor.

Soft actor-critic as in the paper's code (``rlkit/torch/sac/sac.py``), a V network beside
twin Q networks (Haarnoja et al., 2018, first version), all conditioned on z::

    Q target   r * reward_scale + gamma * (1 - terminated) * V_target(s', z)
    V target   min(Q1, Q2)(s, a~, z) - alpha * log pi(a~ | s, z),   a~ ~ pi(. | s, z)
    policy     alpha * log pi(a~ | s, z) - min(Q1, Q2)(s, a~, z) + small mean and log-std penalties

The encoder learns from the Q loss plus ``kl_weight`` x the KL (summed over the
meta-batch's tasks, as oyster does), never from the actor: the policy and V see z
detached. V_target follows V by Polyak averaging (``tau``). ``alpha`` is the entropy
temperature, 1 in oyster (where ``reward_scale`` sets the trade-off), or learned towards
``target_entropy`` with ``learn_alpha``. The actor is SAC's tanh-squashed Gaussian with a
state-dependent std, the run's ``policy`` section giving its sizes (a
:class:`~metarl.policies.LatentGaussianMLPPolicy`, log-std clamped to [log min_std, 2]).

Data, counted in episodes (metarl's sampler collects whole episodes): per-task replay
buffers over the whole train split (position in ``dist.tasks("train")`` = task index), and
per-task encoder buffers of recent data. Iteration 0 collects ``num_initial_episodes`` per
train task with z from the prior; every iteration then samples ``num_tasks_sample`` train
tasks, clears their encoder buffers and collects ``num_prior_episodes`` with z from the
prior and ``num_posterior_episodes`` with z from the posterior of the task's encoder buffer
(both into both buffers), then ``num_extra_posterior_episodes`` with z from that posterior
that go to the replay buffer only (oyster's ``add_to_enc_buffer=False``). Each episode
draws its own z (each from a fresh context sample of ``embedding_batch_size`` transitions
for the posterior ones). Then ``gradient_steps`` updates, each on ``meta_batch_size`` tasks
drawn with replacement: a context batch (T, embedding_batch_size, C) from the encoder
buffers and a transition batch (T, batch_size, ...) from the replay buffers, through the
networks in one call.

Where this differs from oyster: episodes of one collection are rolled in parallel, so a
posterior collection's z comes from the encoder buffer as it stood before that collection
(oyster re-infers it after each episode, and starts each collection with one prior
episode); the tasks of an iteration's collection are distinct (oyster draws them with
replacement); tanh's log-Jacobian is computed in the stable form 2 (log 2 - u - softplus(-2u))
rather than log(1 - tanh(u)^2 + 1e-6); networks keep PyTorch's default initialisation.

Adaptation (evaluation): z from the prior, then after each episode the posterior of every
transition of the task seen so far, and a new z drawn from it.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarl.algos.base import (
    AlgoConfig,
    LearnerSetup,
    TrainContext,
    check_positive,
    register,
    summary_metrics,
)
from metarl.envs import Task
from metarl.errors import ConfigError
from metarl.policies import LatentGaussianMLPPolicy, Params, PolicySpec, gaussian_log_prob, mlp
from metarl.policies.acting import Acting
from metarl.sampling import EpisodeBatch
from metarl.seeding import collection_seed

LOG_STD_MAX = 2.0
"""SAC's upper clamp of the policy's log-std (oyster ``policies.py``: LOG_SIG_MAX = 2)."""
MIN_FACTOR_VARIANCE = 1e-7
"""Floor of each context factor's variance (oyster ``_product_of_gaussians``)."""


@dataclass(frozen=True)
class PearlConfig(AlgoConfig):
    """PEARL's hyper-parameters. Defaults: oyster's ``configs/default.py`` (and
    ``rlkit/core/rl_algorithm.py``, ``rlkit/torch/sac/sac.py`` for what it leaves out),
    with its step counts turned into episodes of 200 steps. The policy's sizes come from
    the run's ``policy`` section; ``meta_batch_size`` (run level) is the tasks per update."""

    name: str = "pearl"
    latent_dim: int = 5
    """Size of the latent task variable z."""
    hidden_sizes: list[int] = field(default_factory=lambda: [300, 300, 300])
    """Hidden layers of the Q and V networks (ReLU)."""
    encoder_hidden_sizes: list[int] = field(default_factory=lambda: [200, 200, 200])
    """Hidden layers of the context encoder (ReLU)."""
    batch_size: int = 256
    """Transitions per task in each update's SAC batch."""
    embedding_batch_size: int = 64
    """Context transitions per task the posterior is inferred from (updates and collection)."""
    reward_scale: float = 5.0
    """Rewards are multiplied by this in the Q target (the trade-off against the entropy)."""
    kl_weight: float = 0.1
    """Weight of KL(q(z | c) || N(0, I)) in the encoder's loss."""
    policy_lr: float = 3e-4
    qf_lr: float = 3e-4
    vf_lr: float = 3e-4
    encoder_lr: float = 3e-4
    alpha_lr: float = 3e-4
    """Step size of the temperature (``learn_alpha`` only)."""
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak rate of the target V network, per gradient step."""
    alpha: float = 1.0
    """Entropy temperature (1 in oyster); the initial value when ``learn_alpha``."""
    learn_alpha: bool = False
    """Learn the temperature towards ``target_entropy`` (SAC's automatic tuning)."""
    target_entropy: float | None = None
    """Target policy entropy with ``learn_alpha``; None: minus the action size."""
    policy_mean_reg: float = 1e-3
    """Weight of the mean of the policy's squared pre-tanh means in its loss."""
    policy_std_reg: float = 1e-3
    """Weight of the mean of the policy's squared log-stds in its loss."""
    use_next_obs_in_context: bool = False
    """Context transitions include the next observation (tasks that differ in dynamics)."""
    factor_rank: int = 0
    """0: each context transition's factor is a diagonal Gaussian, as in the paper and oyster.
    r >= 1 (not in the paper): its precision is diag + U U^T with U of rank r (the encoder
    also outputs U), so the posterior has a full covariance. What one transition says about
    the task need not lie along z's axes: on nav2d, where the reward is minus the distance to
    a 2D goal, it is a plane in (goal, |goal|^2), and diagonal factors fitted the goal from two
    episodes' context at R^2 0.73 where rank-1 ones reached 0.93 (results/checks)."""
    num_initial_episodes: int = 10
    """Episodes per train task collected with z from the prior on iteration 0."""
    num_tasks_sample: int = 5
    """Train tasks collected for in each iteration."""
    num_prior_episodes: int = 2
    """Per sampled task and iteration, with z from the prior (replay and encoder buffers)."""
    num_posterior_episodes: int = 0
    """Per sampled task and iteration, with z from the posterior (replay and encoder buffers)."""
    num_extra_posterior_episodes: int = 2
    """Per sampled task and iteration, with z from the posterior (replay buffer only)."""
    gradient_steps: int = 2000
    """Updates per iteration."""
    replay_size: int = 1_000_000
    """Transitions each train task's replay buffer keeps (oldest overwritten first)."""
    exploration_episodes: int = 1
    """Held-out adaptation: episodes that act on the prior's z before the first posterior.
    1: the posterior of the episodes so far after each one. n: the prior's draw for n
    episodes, then the posterior of them all, as oyster's ``num_exp_traj_eval`` (2 in its
    configs); the context grows from the first episode either way."""

    def __post_init__(self) -> None:
        for key in ("reward_scale", "policy_lr", "qf_lr", "vf_lr", "encoder_lr", "alpha_lr", "alpha"):
            check_positive(f"algo.{key}", getattr(self, key))
        for key in ("latent_dim", "batch_size", "embedding_batch_size", "num_initial_episodes",
                    "num_tasks_sample", "num_prior_episodes", "gradient_steps", "replay_size",
                    "exploration_episodes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"algo.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("kl_weight", "policy_mean_reg", "policy_std_reg", "num_posterior_episodes",
                    "num_extra_posterior_episodes", "factor_rank"):
            if getattr(self, key) < 0:
                raise ConfigError(f"algo.{key} must be >= 0, got {getattr(self, key)}")
        if self.num_posterior_episodes + self.num_extra_posterior_episodes < 1:
            raise ConfigError("algo.num_posterior_episodes + algo.num_extra_posterior_episodes must be >= 1 "
                              "(the policy must also act with z from the posterior)")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"algo.gamma must be in (0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"algo.tau must be in (0, 1], got {self.tau}")
        for key in ("hidden_sizes", "encoder_hidden_sizes"):
            if any(h < 1 for h in getattr(self, key)):
                raise ConfigError(f"algo.{key} must be positive sizes, got {getattr(self, key)}")


# ----------------------------------------------------------------------------- closed forms


def product_of_gaussians(means: Tensor, variances: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The normalised product of N(0, I) and the factors N(means_n, variances_n).

    Shapes: ``means``, ``variances`` (..., M, L); ``mask`` (..., M), false on factors to
    leave out (padding). Returns the mean and variance (..., L).
    """
    precision = 1.0 / variances
    if mask is not None:
        precision = precision * mask.unsqueeze(-1).to(precision.dtype)
    variance = 1.0 / (1.0 + precision.sum(-2))
    return variance * (precision * means).sum(-2), variance


def kl_to_standard_normal(mean: Tensor, variance: Tensor) -> Tensor:
    """KL(N(mean, diag(variance)) || N(0, I)), summed over the last dim. (..., L) -> (...)."""
    return 0.5 * (variance + mean * mean - 1.0 - variance.log()).sum(-1)


class Posterior(NamedTuple):
    """q(z | context), a Gaussian: ``mean`` and the diagonal of the covariance ``variance``
    (..., L); for low-rank factors also ``chol``, the lower Cholesky factor of the
    precision (..., L, L) (None: the covariance is diagonal)."""

    mean: Tensor
    variance: Tensor
    chol: Tensor | None = None

    def sample(self, noise: Tensor) -> Tensor:
        """z for standard normal ``noise`` (..., L)."""
        if self.chol is None:
            return self.mean + self.variance.sqrt() * noise
        # precision = C C^T, so C^-T noise has covariance C^-T C^-1 = precision^-1.
        offset = torch.linalg.solve_triangular(self.chol.mT, noise.to(self.chol.dtype).unsqueeze(-1), upper=True)
        return self.mean + offset.squeeze(-1).to(self.mean.dtype)

    def kl(self) -> Tensor:
        """KL(q || N(0, I)). (...)."""
        if self.chol is None:
            return kl_to_standard_normal(self.mean, self.variance)
        log_det_precision = 2.0 * torch.diagonal(self.chol, dim1=-2, dim2=-1).log().sum(-1).to(self.mean.dtype)
        return 0.5 * (self.variance.sum(-1) + (self.mean * self.mean).sum(-1) - self.mean.shape[-1]
                      + log_det_precision)


def product_of_low_rank_gaussians(means: Tensor, variances: Tensor, factors: Tensor,
                                  mask: Tensor | None = None) -> Posterior:
    """The normalised product of N(0, I) and the factors N(means_n, (diag(1 / variances_n)
    + factors_n factors_n^T)^-1).

    Shapes: ``means``, ``variances`` (..., M, L); ``factors`` (..., M, L, r); ``mask`` (..., M).
    Computed in float64 (L is small): the summed precision is ill-conditioned when many
    factors agree on a direction and float32 would lose the mean (off by a third at a
    condition number of ~1e7) or fail the Cholesky; ``mean`` and ``variance`` come back
    in the inputs' dtype, ``chol`` stays float64.
    """
    dtype = means.dtype
    means, factors = means.double(), factors.double()
    precision = 1.0 / variances.double()
    if mask is not None:
        keep = mask.to(precision.dtype)
        precision, factors = precision * keep.unsqueeze(-1), factors * keep[..., None, None]
    u = factors.transpose(-1, -2).flatten(-3, -2)  # (..., M*r, L): every factor's columns as rows
    total = torch.diag_embed(1.0 + precision.sum(-2)) + u.mT @ u
    eta = (precision * means).sum(-2) + (factors @ (factors.mT @ means.unsqueeze(-1))).squeeze(-1).sum(-2)
    chol = torch.linalg.cholesky(total)
    mean = torch.cholesky_solve(eta.unsqueeze(-1), chol).squeeze(-1)
    variance = torch.diagonal(torch.cholesky_inverse(chol), dim1=-2, dim2=-1)
    return Posterior(mean.to(dtype), variance.to(dtype), chol)


def tanh_gaussian_sample(mean: Tensor, std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """A reparameterised sample tanh(mean + std * noise) and its log-density. (..., A) ->
    action (..., A), log-prob (...), with tanh's log-Jacobian log(1 - tanh(u)^2) computed
    as 2 (log 2 - u - softplus(-2u))."""
    pre = mean + std * noise
    log_det = (2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))).sum(-1)
    return torch.tanh(pre), gaussian_log_prob(mean, std, pre) - log_det


def q_target(rewards: Tensor, terminated: Tensor, next_values: Tensor, reward_scale: float, gamma: float) -> Tensor:
    """r * reward_scale + gamma * (1 - terminated) * V_target(s'). All (...)."""
    return rewards * reward_scale + gamma * (1.0 - terminated) * next_values


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.lerp_(s, tau)


@contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """Gradients flow through ``modules`` to their inputs but not to their parameters."""
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ----------------------------------------------------------------------------- data


def transition_rows(batch: EpisodeBatch) -> list[Tensor]:
    """Each task's valid steps as rows ``[obs, action, reward, next obs, terminated]``
    (n_i, 2 O + A + 2), in (episode, time) order. ``action`` is the squashed action
    tanh(sample) in [-1, 1] (what the Q networks see); the next observation of an
    episode's last step is its ``last_obs``."""
    obs = batch.obs
    ends = batch.terminated | batch.truncated
    next_obs = torch.cat([obs[:, :, 1:], torch.zeros_like(obs[:, :, :1])], 2)
    next_obs[ends] = batch.last_obs.unsqueeze(2).expand_as(obs)[ends]
    rows = torch.cat([obs, torch.tanh(batch.actions), batch.rewards.unsqueeze(-1), next_obs,
                      batch.terminated.unsqueeze(-1).to(obs.dtype)], -1)
    return [rows[i][batch.mask[i]] for i in range(batch.num_tasks)]


class TaskReplay:
    """Per-task FIFO buffers of transition rows, one tensor (tasks, rows, width).

    Each task keeps its latest ``capacity`` rows (writing wraps around); the storage grows
    as the fullest task needs it, up to ``capacity``. ``sample`` draws uniformly, with
    replacement, from each requested task's rows, for many tasks in one gather.
    """

    def __init__(self, num_tasks: int, width: int, capacity: int, device: torch.device) -> None:
        self.capacity, self.device = capacity, device
        self.data = torch.zeros(num_tasks, 0, width, device=device)
        self.count = torch.zeros(num_tasks, dtype=torch.int64)
        """Rows ever written to each task since it was last cleared (CPU)."""
        self._sizes = torch.zeros(num_tasks, dtype=torch.int64, device=device)

    @property
    def sizes(self) -> Tensor:
        """(tasks,) rows each task holds now."""
        return self.count.clamp_max(self.capacity)

    def add(self, task: int, rows: Tensor) -> None:
        """Append ``rows`` (n, width) to ``task``'s buffer, overwriting its oldest when full."""
        n, start = rows.shape[0], int(self.count[task])
        if n > self.capacity:  # only the last ``capacity`` rows would survive
            rows, start = rows[n - self.capacity:], start + n - self.capacity
        self._grow(min(start + rows.shape[0], self.capacity))
        pos = (start + torch.arange(rows.shape[0])) % self.capacity
        self.data[task, pos.to(self.device)] = rows.to(self.device, self.data.dtype)
        self.count[task] += n
        self._sizes[task] = int(self.sizes[task])

    def clear(self, task: int) -> None:
        """Empty ``task``'s buffer (its storage is reused)."""
        self.count[task] = 0
        self._sizes[task] = 0

    def sample(self, tasks: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """(T, n, width): ``n`` rows of each of ``tasks`` (T,), uniformly with replacement.
        Every task drawn must hold data."""
        u = torch.rand(tasks.shape[0], n, generator=generator, device=generator.device, dtype=torch.float64)
        idx = (u * self._sizes[tasks].unsqueeze(1)).long()
        return self.data[tasks.unsqueeze(1), idx]

    def _grow(self, rows: int) -> None:
        have = self.data.shape[1]
        if rows > have:
            new = min(self.capacity, max(rows, 2 * have))
            grown = torch.zeros(self.data.shape[0], new, self.data.shape[2], device=self.device)
            grown[:, :have] = self.data
            self.data = grown

    def state_dict(self) -> dict[str, Any]:
        """Each task's rows in storage order, and the write counts (CPU tensors)."""
        sizes = self.sizes.tolist()
        return {"rows": [self.data[i, :s].cpu().clone() for i, s in enumerate(sizes)],
                "count": self.count.clone(), "capacity": self.capacity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` exactly (rows, write positions)."""
        rows, count = state["rows"], state["count"]
        if len(rows) != self.data.shape[0] or state["capacity"] != self.capacity:
            raise ValueError(f"replay state for {len(rows)} tasks of capacity {state['capacity']} does not fit "
                             f"this learner's {self.data.shape[0]} tasks of capacity {self.capacity}")
        self.data = torch.zeros(self.data.shape[0], max([r.shape[0] for r in rows] + [0]), self.data.shape[2],
                                device=self.device)
        for i, r in enumerate(rows):
            self.data[i, :r.shape[0]] = r.to(self.device)
        self.count = count.clone()
        self._sizes = self.sizes.to(self.device)


def _regroup(batch: EpisodeBatch, n: int, e: int) -> EpisodeBatch:
    """A batch of n * e task slots of one episode each (task-major) -> (n, e, ...)."""
    tensors = {f.name: getattr(batch, f.name) for f in fields(batch) if isinstance(getattr(batch, f.name), Tensor)}
    return replace(batch, **{k: v.reshape(n, e, *v.shape[2:]) for k, v in tensors.items()},
                   tasks=batch.tasks[::e], carry=None)


class PearlState(NamedTuple):
    """Adaptation state: each task's context so far (M_i, C) (CPU), the z each acts with
    (N, L), the seed of the adaptation and how many adaptation steps it has taken."""

    context: list[Tensor]
    z: Tensor
    seed: int
    steps: int


# ----------------------------------------------------------------------------- learner


class PearlLearner:
    """PEARL: a context encoder, a z-conditioned SAC and per-task replay buffers.

    Args:
        cfg: Hyper-parameters.
        policy: The actor (its ``z`` parameter stays zero; z is passed in).
        train_tasks: The train split, in order (a task's index is its position).
        max_steps: Episode length cap (sizes the encoder buffers).
        device: Where the networks, buffers and updates live.
        seed: Seed of the learner's generator (tasks, replay samples, z and action noise).
    """

    adaptation_unit = "episodes"
    adaptation_episodes = 1
    """The posterior is re-inferred after every episode."""
    eval_deterministic = True
    """oyster's ``eval_deterministic``: held-out episodes take the mean action under a sampled z."""
    resumes_exactly = adapts_on_batch = True
    trains = True

    def __init__(self, cfg: PearlConfig, policy: LatentGaussianMLPPolicy, train_tasks: Sequence[Task],
                 max_steps: int, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.train_tasks = list(train_tasks)
        if cfg.num_tasks_sample > len(self.train_tasks):
            raise ConfigError(f"algo.num_tasks_sample={cfg.num_tasks_sample} exceeds the "
                              f"{len(self.train_tasks)} train tasks")
        obs_dim, act_dim, latent = policy.spec.obs_dim, policy.spec.act_dim, cfg.latent_dim
        if policy.spec.latent_dim != latent:
            raise ValueError(f"policy latent_dim {policy.spec.latent_dim} != algo.latent_dim {latent}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.context_dim = obs_dim + act_dim + 1 + (obs_dim if cfg.use_next_obs_in_context else 0)
        self.policy = policy.to(self.device)
        self.encoder = mlp(self.context_dim, cfg.encoder_hidden_sizes, (2 + cfg.factor_rank) * latent).to(self.device)
        self.qf1 = mlp(obs_dim + act_dim + latent, cfg.hidden_sizes, 1).to(self.device)
        self.qf2 = mlp(obs_dim + act_dim + latent, cfg.hidden_sizes, 1).to(self.device)
        self.vf = mlp(obs_dim + latent, cfg.hidden_sizes, 1).to(self.device)
        self.target_vf = copy.deepcopy(self.vf).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.alpha), device=self.device, requires_grad=cfg.learn_alpha)
        self.target_entropy = -float(act_dim) if cfg.target_entropy is None else cfg.target_entropy
        actor = [p for name, p in self.policy.named_parameters() if name != "z"]
        self.optimizers = {
            "policy": torch.optim.Adam(actor, lr=cfg.policy_lr),
            "qf": torch.optim.Adam([*self.qf1.parameters(), *self.qf2.parameters()], lr=cfg.qf_lr),
            "vf": torch.optim.Adam(self.vf.parameters(), lr=cfg.vf_lr),
            "encoder": torch.optim.Adam(self.encoder.parameters(), lr=cfg.encoder_lr),
        }
        if cfg.learn_alpha:
            self.optimizers["alpha"] = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        width = 2 * obs_dim + act_dim + 2
        n = len(self.train_tasks)
        self.replay = TaskReplay(n, width, cfg.replay_size, self.device)
        encoder_episodes = max(cfg.num_initial_episodes, cfg.num_prior_episodes + cfg.num_posterior_episodes)
        self.encoder_buffer = TaskReplay(n, width, encoder_episodes * max_steps, self.device)

    @classmethod
    def from_setup(cls, setup: LearnerSetup) -> PearlLearner:
        """The actor from the run's ``policy`` section (tanh-squashed, log-std at most 2)."""
        cfg, p = setup.algo, setup.policy
        policy = LatentGaussianMLPPolicy(*setup.dims, cfg.latent_dim, p.hidden_sizes, p.activation, p.init_std,
                                         p.std_type, p.min_std, max_std=math.exp(LOG_STD_MAX), squash=True)
        return cls(cfg, policy, setup.dist.tasks("train"), setup.max_steps, setup.device, setup.seeds.learner)

    @property
    def policy_spec(self) -> PolicySpec:
        """The ``latent_gaussian_mlp`` actor the workers build."""
        return self.policy.spec

    @property
    def policy_params(self) -> Params:
        """The actor's parameters on CPU (``z`` included, to be replaced per task)."""
        return {k: v.detach().cpu() for k, v in self.policy.named_parameters()}

    # ----------------------------------------------------------------- inference

    def posterior(self, context: Tensor, mask: Tensor | None = None) -> Posterior:
        """q(z | context): ``context`` (..., M, C), ``mask`` (..., M) -> its mean and variance
        (..., L) (and the precision's Cholesky factor with ``factor_rank``)."""
        latent, rank = self.cfg.latent_dim, self.cfg.factor_rank
        out = self.encoder(context)
        mu, pre_var = out[..., :latent], out[..., latent:2 * latent]
        variances = F.softplus(pre_var).clamp_min(MIN_FACTOR_VARIANCE)
        if rank == 0:
            return Posterior(*product_of_gaussians(mu, variances, mask))
        return product_of_low_rank_gaussians(mu, variances, out[..., 2 * latent:].unflatten(-1, (latent, rank)), mask)

    def _context(self, rows: Tensor) -> Tensor:
        """The context columns (s, a, r[, s']) of transition rows (..., W) -> (..., C)."""
        return rows[..., :self.context_dim]

    def _split(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Transition rows (..., W) -> obs (..., O), action (..., A), reward, next obs, terminated."""
        o, a = self.obs_dim, self.act_dim
        return (rows[..., :o], rows[..., o:o + a], rows[..., o + a], rows[..., o + a + 1:2 * o + a + 1],
                rows[..., -1])

    # ----------------------------------------------------------------- losses

    def critic_loss(self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor, terminated: Tensor,
                    z: Tensor) -> Tensor:
        """Twin-Q regression onto r * reward_scale + gamma (1 - d) V_target(s', z).

        Shapes (T, B, ...), ``z`` (T, B, L) with its gradient to the encoder kept.
        """
        x = torch.cat([obs, actions, z], -1)
        q1, q2 = self.qf1(x).squeeze(-1), self.qf2(x).squeeze(-1)
        with torch.no_grad():
            next_v = self.target_vf(torch.cat([next_obs, z], -1)).squeeze(-1)
            target = q_target(rewards, terminated, next_v, self.cfg.reward_scale, self.cfg.gamma)
        return ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()

    def actor_losses(self, obs: Tensor, z: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """The V, policy (and temperature) losses with z detached (no gradient to the
        encoder) and the Q networks' parameters held (the policy's gradient goes through
        the actions only). ``obs`` (T, B, O), ``z`` (T, B, L), ``noise`` (T, B, A)."""
        cfg = self.cfg
        z = z.detach()
        mean, std = self.policy(obs, z)
        actions, log_pi = tanh_gaussian_sample(mean, std, noise)
        with _frozen(self.qf1, self.qf2):
            x = torch.cat([obs, actions, z], -1)
            q_new = torch.min(self.qf1(x), self.qf2(x)).squeeze(-1)
        alpha = self.log_alpha.detach().exp()
        v = self.vf(torch.cat([obs, z], -1)).squeeze(-1)
        losses = {"vf": ((v - (q_new - alpha * log_pi).detach()) ** 2).mean(),
                  "policy": (alpha * log_pi - q_new).mean() + cfg.policy_mean_reg * (mean ** 2).mean()
                  + cfg.policy_std_reg * (std.log() ** 2).mean()}
        if cfg.learn_alpha:
            losses["alpha"] = -(self.log_alpha * (log_pi + self.target_entropy).detach()).mean()
        return losses

    def update_on(self, context: Tensor, rows: Tensor, z_noise: Tensor, action_noise: Tensor) -> dict[str, Tensor]:
        """One gradient step on given data, in oyster's order: Q networks and encoder, then
        V (and its target), the policy (and the temperature).

        Shapes: ``context`` (T, Bc, C), transition ``rows`` (T, B, W), ``z_noise`` (T, L),
        ``action_noise`` (T, B, A). Returns the losses (detached scalars).
        """
        cfg = self.cfg
        obs, actions, rewards, next_obs, terminated = self._split(rows)
        q = self.posterior(context)
        z = q.sample(z_noise).unsqueeze(-2).expand(*obs.shape[:-1], cfg.latent_dim)
        kl = q.kl().sum()
        qf_loss = self.critic_loss(obs, actions, rewards, next_obs, terminated, z)
        for name in ("qf", "encoder"):
            self.optimizers[name].zero_grad(set_to_none=True)
        (qf_loss + cfg.kl_weight * kl).backward()
        self.optimizers["qf"].step()
        self.optimizers["encoder"].step()

        losses = self.actor_losses(obs, z, action_noise)
        for name in ("vf", "policy", "alpha"):
            if name in self.optimizers:
                self.optimizers[name].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizers["vf"].step()
        soft_update(self.target_vf, self.vf, cfg.tau)
        self.optimizers["policy"].step()
        if cfg.learn_alpha:
            self.optimizers["alpha"].step()
        return {"qf": qf_loss.detach(), "kl": kl.detach(), **{k: v.detach() for k, v in losses.items()}}

    def update(self, num_tasks: int) -> dict[str, float]:
        """``gradient_steps`` steps, each on ``num_tasks`` train tasks drawn with replacement;
        returns the mean losses (``loss/qf``, ``loss/vf``, ``loss/policy``, ``loss/kl``,
        ``loss/alpha`` and ``train/alpha`` when learned)."""
        cfg = self.cfg
        if int(self.replay.sizes.min()) == 0 or int(self.encoder_buffer.sizes.min()) == 0:
            raise RuntimeError("every train task needs data before PEARL updates (iteration 0 collects it)")
        g, dev = self.generator, self.device
        totals: dict[str, Tensor] = {}
        for _ in range(cfg.gradient_steps):
            tasks = torch.randint(len(self.train_tasks), (num_tasks,), generator=g, device=dev)
            context = self._context(self.encoder_buffer.sample(tasks, cfg.embedding_batch_size, g))
            rows = self.replay.sample(tasks, cfg.batch_size, g)
            z_noise = torch.randn(num_tasks, cfg.latent_dim, generator=g, device=dev)
            action_noise = torch.randn(num_tasks, cfg.batch_size, self.act_dim, generator=g, device=dev)
            for k, v in self.update_on(context, rows, z_noise, action_noise).items():
                totals[k] = totals[k] + v if k in totals else v
        out = {f"loss/{k}": (v / cfg.gradient_steps).item() for k, v in totals.items()}
        if cfg.learn_alpha:
            out["train/alpha"] = self.log_alpha.exp().item()
        return out

    # ----------------------------------------------------------------- collection

    def _acting(self, z: Tensor) -> Acting:
        """One parameter set per row of ``z`` (K, L): the shared actor with that z."""
        base = self.policy_params
        return Acting([base | {"z": zi} for zi in z.detach().cpu()])

    def _prior_z(self, n: int, e: int) -> Tensor:
        return torch.randn(n, e, self.cfg.latent_dim, generator=self.generator, device=self.device)

    @torch.no_grad()
    def _posterior_z(self, positions: list[int], e: int) -> Tensor:
        """(n, e, L): for each episode, z from the posterior of a fresh context sample of
        its task's encoder buffer."""
        tasks = torch.tensor(positions, device=self.device).repeat_interleave(e)
        context = self._context(self.encoder_buffer.sample(tasks, self.cfg.embedding_batch_size, self.generator))
        q = self.posterior(context)
        z = q.sample(torch.randn(q.mean.shape, generator=self.generator, device=self.device))
        return z.reshape(len(positions), e, -1)

    def _collect(self, ctx: TrainContext, positions: list[int], z: Tensor, phase: int,
                 to_encoder: bool) -> EpisodeBatch:
        """Roll one episode per z (``z`` (n, e, L) for the train tasks at ``positions``) and
        add the transitions to the replay buffers (and the encoder buffers). (n, e, ...)."""
        n, e = z.shape[:2]
        tasks = [self.train_tasks[i] for i in positions for _ in range(e)]
        batch = _regroup(ctx.collect(tasks, self._acting(z.reshape(n * e, -1)), phase, episodes=1), n, e)
        for position, rows in zip(positions, transition_rows(batch), strict=True):
            self.replay.add(position, rows)
            if to_encoder:
                self.encoder_buffer.add(position, rows)
        return batch

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """Collect (initial pool on iteration 0; prior and posterior episodes of
        ``num_tasks_sample`` train tasks), then ``gradient_steps`` updates on meta-batches of
        ``ctx.meta_batch_size`` tasks. ``train/return_pre``: the prior episodes;
        ``train/return_post``: the posterior ones (with and without the encoder buffer)."""
        cfg = self.cfg
        phase = itertools.count()
        if ctx.iteration == 0:  # one round per episode: each collection acts with one z per task
            everyone = list(range(len(self.train_tasks)))
            for _ in range(cfg.num_initial_episodes):
                self._collect(ctx, everyone, self._prior_z(len(everyone), 1), next(phase), to_encoder=True)
        positions = torch.randperm(len(self.train_tasks), generator=self.generator,
                                   device=self.device)[:cfg.num_tasks_sample].tolist()
        for position in positions:
            self.encoder_buffer.clear(position)
        prior = self._collect(ctx, positions, self._prior_z(len(positions), cfg.num_prior_episodes), next(phase),
                              to_encoder=True)
        post = []
        for episodes, to_encoder in ((cfg.num_posterior_episodes, True), (cfg.num_extra_posterior_episodes, False)):
            if episodes:
                post.append(self._collect(ctx, positions, self._posterior_z(positions, episodes), next(phase),
                                          to_encoder))
        successes = [b.episode_success() for b in post]
        post_success = None if any(s is None for s in successes) else torch.cat(successes, 1)
        metrics = summary_metrics(prior.episode_returns(), prior.episode_success(), "pre")
        metrics |= summary_metrics(torch.cat([b.episode_returns() for b in post], 1), post_success, "post")
        return metrics | self.update(ctx.meta_batch_size)

    # ----------------------------------------------------------------- adaptation

    def init_adaptation(self, tasks: list[Task], seed: int = 0) -> PearlState:
        """No context yet; z from the prior (drawn with ``seed``)."""
        g = torch.Generator().manual_seed(collection_seed(seed, 0))
        z = torch.randn(len(tasks), self.cfg.latent_dim, generator=g)
        return PearlState([torch.zeros(0, self.context_dim) for _ in tasks], z, seed, 0)

    def acting(self, state: PearlState) -> Acting:
        """The actor with each task's z."""
        return self._acting(state.z)

    @torch.no_grad()
    def adapt(self, state: PearlState, batch: EpisodeBatch) -> PearlState:
        """Add ``batch``'s valid transitions to each task's context and draw z from the new
        posterior (keep the prior's while within ``exploration_episodes``)."""
        context = [torch.cat([c, self._context(r)]) for c, r in zip(state.context, transition_rows(batch),
                                                                     strict=True)]
        if state.steps + 1 < self.cfg.exploration_episodes:
            return PearlState(context, state.z, state.seed, state.steps + 1)
        lengths = torch.tensor([c.shape[0] for c in context])
        padded = nn.utils.rnn.pad_sequence(context, batch_first=True).to(self.device)
        mask = (torch.arange(padded.shape[1]) < lengths.unsqueeze(1)).to(self.device)
        q = self.posterior(padded, mask)
        g = torch.Generator().manual_seed(collection_seed(state.seed, state.steps + 1))
        noise = torch.randn(q.mean.shape, generator=g)
        z = Posterior(*(None if t is None else t.cpu() for t in q)).sample(noise)
        return PearlState(context, z, state.seed, state.steps + 1)

    # ----------------------------------------------------------------- state

    def _modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "encoder": self.encoder, "qf1": self.qf1, "qf2": self.qf2, "vf": self.vf,
                "target_vf": self.target_vf}

    def state_dict(self) -> dict[str, Any]:
        """Networks, temperature and optimisers (under ``optimizer``); buffers are extra state."""
        state: dict[str, Any] = {k: {n: v.cpu() for n, v in m.state_dict().items()} for k, m in self._modules().items()}
        state["log_alpha"] = self.log_alpha.detach().cpu()
        state["optimizer"] = {k: opt.state_dict() for k, opt in self.optimizers.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; ``optimizer`` may be None (a weights-only checkpoint)."""
        for key, module in self._modules().items():
            if set(state.get(key, {})) != set(module.state_dict()):
                raise ValueError(f"checkpoint entry {key!r} does not match this PEARL learner's network")
            module.load_state_dict(state[key])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        if state.get("optimizer") is not None:
            for key, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizer"][key])

    def extra_state_dict(self) -> dict[str, Any]:
        """The replay and encoder buffers and the learner's generator (CPU tensors)."""
        return {"replay": self.replay.state_dict(), "encoder_buffer": self.encoder_buffer.state_dict(),
                "generator": self.generator.get_state()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state_dict` (resume continues the same random streams)."""
        self.replay.load_state_dict(state["replay"])
        self.encoder_buffer.load_state_dict(state["encoder_buffer"])
        self.generator.set_state(state["generator"])


register("pearl", PearlConfig, PearlLearner.from_setup)
