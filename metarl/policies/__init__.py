"""Policies whose parameters travel as a dict of tensors.

Meta-learners adapt parameters, not modules: every policy here is evaluated with
``torch.func.functional_call(policy, params, ...)``, so the sampler can roll out per-task
adapted parameters and MAML can differentiate through the adaptation without cloning.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

Params = dict[str, Tensor]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
_ACTIVATION_FNS = {"tanh": torch.tanh, "relu": torch.relu}
"""The functions the activation modules call, for forwards that skip the module calls."""


@dataclass(frozen=True)
class PolicySpec:
    """Everything needed to rebuild a policy in a worker process (plain data)."""

    kind: str
    obs_dim: int
    act_dim: int
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    init_std: float = 1.0
    std_type: str = "param"
    min_std: float = 1e-6
    gru_size: int = 0
    """Recurrent policies only: the GRU's hidden size (``hidden_sizes`` is the encoder)."""
    max_std: float | None = None
    """Upper bound of the std (SAC's policy clamps its log-std at 2)."""
    squash: bool = False
    """Actions pass through tanh and are scaled onto the action space's bounds (SAC);
    otherwise they are clipped to the bounds."""
    latent_dim: int = 0
    """Context-conditioned policies only: the size of the latent task variable (PEARL's
    ``latent_gaussian_mlp`` holds z as its parameter ``z``; ``varibad`` infers it)."""

    @property
    def recurrent(self) -> bool:
        """Carries a state across the steps and episodes of a trial (RL², VariBAD)."""
        return self.kind in ("gru_gaussian", "varibad")

    def env_action(self, actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """What the env receives for the policy's ``actions`` (samples or means)."""
        if self.squash:
            return low + 0.5 * (np.tanh(actions) + 1.0) * (high - low)
        return np.minimum(np.maximum(actions, low), high)  # np.clip's numbers, at half its call cost

    def build(self) -> nn.Module:
        args = {k: v for k, v in asdict(self).items() if k not in ("kind", "gru_size", "latent_dim")}
        if self.kind == "gaussian_mlp":
            return GaussianMLPPolicy(**args)
        if self.kind == "gru_gaussian":
            return RecurrentGaussianPolicy(self.obs_dim, self.act_dim, self.gru_size, self.hidden_sizes,
                                           self.activation, self.init_std, self.min_std)
        if self.kind == "latent_gaussian_mlp":
            return LatentGaussianMLPPolicy(latent_dim=self.latent_dim, **args)
        if self.kind == "varibad":
            return VariBADPolicy(self.obs_dim, self.act_dim, self.latent_dim, self.gru_size, self.hidden_sizes,
                                 self.activation, self.init_std, self.min_std)
        raise ValueError(f"unknown policy kind {self.kind!r}; valid: gaussian_mlp, gru_gaussian, "
                         "latent_gaussian_mlp, varibad")


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian policy on an MLP.

    ``std_type="param"``: a learned, state-independent log-std vector (MAML, garage);
    ``"head"``: a second output head gives a state-dependent log-std.

    Shapes: ``obs`` (..., O) -> mean and std (..., A).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: list[int] | tuple[int, ...] = (64, 64),
                 activation: str = "tanh", init_std: float = 1.0, std_type: str = "param",
                 min_std: float = 1e-6, max_std: float | None = None, squash: bool = False) -> None:
        super().__init__()
        self.spec = PolicySpec("gaussian_mlp", obs_dim, act_dim, list(hidden_sizes), activation,
                               init_std, std_type, min_std, max_std=max_std, squash=squash)
        layers: list[nn.Module] = []
        size = obs_dim
        for h in hidden_sizes:
            layers += [nn.Linear(size, h), _ACTIVATIONS[activation]()]
            size = h
        self.trunk = nn.Sequential(*layers)
        self.mean = nn.Linear(size, act_dim)
        if std_type == "param":
            self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        else:
            self.log_std_head = nn.Linear(size, act_dim)
            nn.init.zeros_(self.log_std_head.weight)
            nn.init.constant_(self.log_std_head.bias, math.log(init_std))
        self._log_min_std = math.log(min_std)
        self._log_max_std = None if max_std is None else math.log(max_std)
        self._activation = _ACTIVATION_FNS[activation]

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        *hidden, head = self._layers()
        h = _mlp_forward(hidden, self._activation, obs)
        mean = F.linear(h, *head)
        log_std = self.log_std.expand_as(mean) if self.spec.std_type == "param" else self.log_std_head(h)
        return mean, self._bounded_exp(log_std)

    def rowwise(self) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """:meth:`forward` as a function of float32 ``obs`` (M, O) -> mean, std (M, A), on
        numpy arrays, in which every row's numbers come from that row alone (see
        :class:`RowwiseMLP`): what the sampler acts with, so a lane's actions do not depend
        on which lanes share its lockstep. A snapshot of the parameters as they are now."""
        *hidden, head = self._layers()
        act_dim = self.spec.act_dim
        if self.spec.std_type == "param":
            net = RowwiseMLP([*hidden, head], self.spec.activation)
            std = self._bounded_exp(self.log_std.detach().clone()).numpy()

            def param_std(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                mean = net(obs)
                return mean, np.broadcast_to(std, mean.shape)

            return param_std
        # One output layer for both heads: the mean's and the log-std's rows side by side.
        both = (torch.cat([head[0], self.log_std_head.weight]), torch.cat([head[1], self.log_std_head.bias]))
        net = RowwiseMLP([*hidden, both], self.spec.activation)

        def head_std(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = net(obs)
            with torch.no_grad():
                return out[:, :act_dim], self._bounded_exp(torch.from_numpy(out[:, act_dim:])).numpy()

        return head_std

    def _layers(self) -> list[tuple[Tensor, Tensor]]:
        """(weight, bias) of the trunk's linear layers, then of the mean head."""
        return [(m.weight, m.bias) for m in self.trunk if isinstance(m, nn.Linear)] + [(self.mean.weight, self.mean.bias)]

    def _bounded_exp(self, log_std: Tensor) -> Tensor:
        if self._log_max_std is not None:
            log_std = log_std.clamp_max(self._log_max_std)
        return log_std.clamp_min(self._log_min_std).exp()

    def params(self) -> Params:
        """The parameters as a dict of tensors (detached copies)."""
        return {k: v.detach().clone() for k, v in self.named_parameters()}


class LatentGaussianMLPPolicy(GaussianMLPPolicy):
    """A Gaussian MLP policy conditioned on a latent task variable z (PEARL's actor).

    The network sees ``cat(obs, z)``. The module holds one z as the parameter ``z`` (shape
    (L,), no gradient), so the sampler's :class:`~metarl.policies.acting.Actor` acts with
    a per-task z by loading per-task parameter sets (shared weights, each with its own
    ``z``) and the sampler needs no change; a learner passes z explicitly instead.

    Shapes: ``obs`` (..., O), ``z`` (L,) or broadcastable to (..., L) -> mean, std (..., A).
    """

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int,
                 hidden_sizes: list[int] | tuple[int, ...] = (64, 64), activation: str = "tanh",
                 init_std: float = 1.0, std_type: str = "param", min_std: float = 1e-6,
                 max_std: float | None = None, squash: bool = False) -> None:
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        super().__init__(obs_dim + latent_dim, act_dim, hidden_sizes, activation, init_std, std_type,
                         min_std, max_std, squash)
        self.spec = PolicySpec("latent_gaussian_mlp", obs_dim, act_dim, list(hidden_sizes), activation,
                               init_std, std_type, min_std, max_std=max_std, squash=squash,
                               latent_dim=latent_dim)
        self.z = nn.Parameter(torch.zeros(latent_dim), requires_grad=False)

    def forward(self, obs: Tensor, z: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and std at ``obs`` given ``z`` (the module's own ``z`` when None)."""
        return super().forward(self._with_z(obs, z))

    def rowwise(self) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """:meth:`GaussianMLPPolicy.rowwise` with the module's ``z`` as it is now."""
        forward, z = super().rowwise(), self.z.detach().numpy().copy()
        return lambda obs: forward(np.concatenate([obs, np.broadcast_to(z, (len(obs), len(z)))], -1))

    def _with_z(self, obs: Tensor, z: Tensor | None) -> Tensor:
        z = self.z if z is None else z
        return torch.cat([obs, z.expand(*obs.shape[:-1], z.shape[-1])], dim=-1)


def _mlp_forward(layers: list[tuple[Tensor, Tensor]], activation: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``activation(linear(x))`` through each (weight, bias): the kernels nn.Linear and the
    activation modules run, without a module call per layer."""
    for weight, bias in layers:
        x = activation(F.linear(x, weight, bias))
    return x


class RowwiseMLP:
    """An MLP (``activation`` after every (weight, bias) layer but the last) on float32
    arrays, whose every output row comes from its input row alone, in arithmetic that does
    not depend on how many rows share the call, or which, or where a row sits among them.

    One matrix product over all rows lets the BLAS choose its kernel by the row count (MKL
    on one Intel CPU rounds a 2x256 MLP's rows differently below about ten rows than above,
    and another CPU at other sizes), so a lane's action would depend on how many lanes its
    worker stepped with it. Here every row is its own (1 x K) @ (K x N) product, numpy's
    stacked ``matmul`` calling the BLAS once per row with the same shapes, so the same
    kernel; call it inside :func:`one_blas_thread` (the sampler's workers and
    :meth:`~metarl.policies.acting.Actor.act` do). Rows are padded with zeros to whole
    64-byte rows (16 floats) in 64-byte aligned buffers, so every row's data is aligned
    alike; a padded unit stays at exactly zero (reset after each product, since an
    infinite input times a padded zero weight is nan) and adds exact zeros to the next
    layer. A call always sends at least two rows, as a stack of one may take another path.

    In numpy rather than torch: between env steps a torch call's dispatch runs from cold
    caches. Called after each round of 10 pick-place steps, on 10 rows, the 64x64 forward
    took 163 us against 406 us for torch's one product, 2x512 607 against 919 us
    (``scripts/bench_rowwise.py``, an AMD EPYC VM). A snapshot: it holds copies of the
    weights, and buffers that one call at a time reuses.

    Shapes: ``x`` (M, K) -> (M, N) for the first layer's K and the last's N.
    """

    ALIGN = 16

    def __init__(self, layers: Sequence[tuple[Tensor, Tensor]], activation: str) -> None:
        self.activation = _ACTIVATION_NP[activation]
        self.in_dim, self.out_dim = layers[0][0].shape[1], layers[-1][0].shape[0]
        self.padded_in = _round_up(self.in_dim, self.ALIGN)
        self.layers: list[tuple[np.ndarray, np.ndarray, int]] = []
        rows_in = self.padded_in
        for weight, bias in layers:
            out_dim, in_dim = weight.shape
            wt = _aligned_zeros((rows_in, _round_up(out_dim, self.ALIGN)))
            wt[:in_dim, :out_dim] = weight.detach().t().numpy()
            b = _aligned_zeros(wt.shape[1:])
            b[:out_dim] = bias.detach().numpy()
            self.layers.append((wt, b, out_dim))
            rows_in = wt.shape[1]
        self._buffers: dict[int, list[np.ndarray]] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        m = x.shape[0]
        n = max(m, 2)
        buffers = self._buffers.get(n)
        if buffers is None:
            buffers = [_aligned_zeros((n, 1, self.padded_in))] + [_aligned_zeros((n, 1, wt.shape[1]))
                                                                   for wt, _, _ in self.layers]
            self._buffers[n] = buffers
        h = buffers[0]
        h[:m, 0, :self.in_dim] = x
        last = len(self.layers) - 1
        # As torch's forward does, an infinite or nan input gives nan outputs without a warning.
        with np.errstate(invalid="ignore", over="ignore"):
            for i, (wt, b, out_dim) in enumerate(self.layers):
                out = buffers[i + 1]
                np.matmul(h, wt, out=out)
                out += b
                if i < last:
                    if out_dim < wt.shape[1]:  # an infinite input makes 0 * inf = nan in the padding
                        out[..., out_dim:] = 0.0
                    self.activation(out)
                h = out
        return h[:m, 0, :self.out_dim].copy()


_ACTIVATION_NP: dict[str, Callable[[np.ndarray], Any]] = {
    "tanh": lambda x: np.tanh(x, out=x), "relu": lambda x: np.maximum(x, 0.0, out=x)}
"""In-place numpy counterparts of ``_ACTIVATION_FNS``, for :class:`RowwiseMLP`."""


def _aligned_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed float32 array whose data starts on a 64-byte boundary."""
    size = int(np.prod(shape))
    raw = np.zeros(size + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start:start + size].reshape(shape)


_BLAS: tuple[int, Any] | None = None
"""(len(sys.modules) when scanned, the BLAS libraries loaded then)."""


def one_blas_thread() -> Any:
    """A context manager that runs numpy's BLAS (and any other loaded) on one thread inside
    it (threadpoolctl's limiter; about 20 us to enter and leave, so callers hold it around
    many forwards). The loaded libraries are scanned again after an import, which may have
    brought another BLAS (scipy's own, for one).

    :class:`RowwiseMLP` needs it for its rows to be independent: a multi-threaded BLAS
    splits a product's outputs between threads, and where a split falls can decide which
    outputs take a kernel's vector body and which its remainder loop."""
    global _BLAS
    if _BLAS is None or _BLAS[0] != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _BLAS = (len(sys.modules), ThreadpoolController().select(user_api="blas"))
    return _BLAS[1].limit(limits=1)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

# Closed forms rather than torch.distributions: these must trace under torch.func
# transforms, where the distributions' argument validation is data-dependent control flow.


def gaussian_log_prob(mean: Tensor, std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, diag(std^2)), summed over the last dim. (..., A) -> (...)."""
    z = (actions - mean) / std
    return (-0.5 * z * z - std.log() - _HALF_LOG_2PI).sum(-1)


def gaussian_kl(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last dim. (..., A) -> (...)."""
    var_p, var_q = std_p * std_p, std_q * std_q
    return (std_q.log() - std_p.log() + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


def log_prob(policy: nn.Module, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
    """Log-likelihood of ``actions`` under ``policy`` with ``params``. (..., O), (..., A) -> (...)."""
    mean, std = functional_call(policy, params, (obs,))
    return gaussian_log_prob(mean, std, actions)


class RecurrentGaussianPolicy(nn.Module):
    """RL²'s policy: a GRU over (observation, previous action, previous reward, new-episode
    flag), with a diagonal Gaussian head and a value head on the GRU state.

    The reward enters scaled by the buffer ``reward_scale`` (set by the learner from the
    running reward statistics, sent to workers with the parameters).

    Shapes: ``x`` (..., I) with I = O + A + 2, ``h`` (..., H).
    """

    def __init__(self, obs_dim: int, act_dim: int, gru_size: int = 256,
                 encoder_sizes: list[int] | tuple[int, ...] = (), activation: str = "tanh",
                 init_std: float = 1.0, min_std: float = 1e-6) -> None:
        super().__init__()
        self.spec = PolicySpec("gru_gaussian", obs_dim, act_dim, list(encoder_sizes), activation,
                               init_std, "param", min_std, gru_size)
        layers: list[nn.Module] = []
        size = obs_dim + act_dim + 2
        for h in encoder_sizes:
            layers += [nn.Linear(size, h), _ACTIVATIONS[activation]()]
            size = h
        self.encoder = nn.Sequential(*layers)
        self.gru = nn.GRU(size, gru_size, batch_first=True)
        self.mean = nn.Linear(gru_size, act_dim)
        self.value = nn.Linear(gru_size, 1)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.register_buffer("reward_scale", torch.ones(()))
        self._log_min_std = math.log(min_std)
        self.obs_dim, self.act_dim, self.gru_size = obs_dim, act_dim, gru_size

    def initial_state(self, batch: int) -> Tensor:
        """Zero GRU state for ``batch`` trials: (batch, H)."""
        return torch.zeros(batch, self.gru_size)

    @staticmethod
    def inputs(obs: Tensor, prev_action: Tensor, prev_reward: Tensor, new_episode: Tensor,
               reward_scale: Tensor) -> Tensor:
        """(..., O), (..., A), (...), (...) -> (..., I). Pass the ``reward_scale`` of the
        parameters in use (the sampler's copy holds them in its params dict, not its buffer)."""
        return torch.cat([obs, prev_action, (prev_reward * reward_scale).unsqueeze(-1),
                          new_episode.to(obs.dtype).unsqueeze(-1)], dim=-1)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A sequence: x (N, L, I), h (N, H) -> mean, std (N, L, A), value (N, L), states (N, L, H).

        ``states[:, t]`` is the GRU state after step t; ``states[:, -1]`` continues the trial.
        """
        out, _ = self.gru(self.encoder(x), h.unsqueeze(0).contiguous())
        mean = self.mean(out)
        std = self.log_std.clamp_min(self._log_min_std).exp().expand_as(mean)
        return mean, std, self.value(out).squeeze(-1), out

    def step(self, x: Tensor, h: Tensor, params: Params | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step for B trials under ``params`` (the module's own when None):
        x (B, I), h (B, H) -> mean, std (B, A), value (B,), new state (B, H)."""
        args = (x.unsqueeze(1), h)
        mean, std, value, out = self(*args) if params is None else functional_call(self, params, args)
        return mean[:, 0], std[:, 0], value[:, 0], out[:, 0]


def mlp(in_size: int, hidden_sizes: Sequence[int], out_size: int, activation: str = "relu") -> nn.Sequential:
    """An MLP with ``activation`` between its layers and a linear output."""
    layers: list[nn.Module] = []
    for h in hidden_sizes:
        layers += [nn.Linear(in_size, h), _ACTIVATIONS[activation]()]
        in_size = h
    layers.append(nn.Linear(in_size, out_size))
    return nn.Sequential(*layers)


class VariBADPolicy(nn.Module):
    """VariBAD's encoder and policy (Zintgraf et al., 2020) as one recurrent policy.

    The encoder reads each step's transition, embedded as in the reference code
    (lmzintgraf/varibad ``models/encoder.py``: ReLU embeddings of the action (16), reward
    (16) and state (32), concatenated, into a GRU): at step t the previous action and raw
    reward and the new observation (with the new-episode flag, as the reference appends
    its done flag to the state), so the GRU state after step t holds the trial so far.
    A linear layer maps it to the posterior's mean and log-variance (``latent_dim`` each).
    Before a trial's first step the previous action and reward are zero and the state is
    zero (the reference's prior is the linear layer on a zero state; here the first
    posterior has also read s_0, which tells nothing of the task where every task starts
    alike). The state carries across a trial's episodes and is reset between trials.

    The actor (a Gaussian on an MLP, learned state-independent std) and the critic (a
    separate MLP) see cat(observation, posterior mean, posterior log-variance), centred and
    scaled by the buffers ``input_mean`` and ``input_std`` (the learner keeps them at the
    running moments of what the policy saw, as the reference normalises state and latent
    for its policy; identity until then), with the posterior detached unless
    ``through_encoder`` is passed (the reference's default keeps the RL loss out of the
    encoder).

    The interface is RL²'s (:class:`RecurrentGaussianPolicy`): ``inputs`` builds a step's
    input row (O + A + 2), ``forward`` runs sequences, ``step`` one step, so the sampler
    and the trials code run both unchanged. The ``reward_scale`` buffer stays 1: the
    encoder reads raw rewards.
    """

    ACTION_EMBED, REWARD_EMBED, STATE_EMBED = 16, 16, 32
    """Embedding sizes (the reference's configs for point robot, cheetah-vel and ant-dir)."""

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int = 5, gru_size: int = 128,
                 hidden_sizes: list[int] | tuple[int, ...] = (128, 128), activation: str = "tanh",
                 init_std: float = 1.0, min_std: float = 1e-6) -> None:
        super().__init__()
        self.spec = PolicySpec("varibad", obs_dim, act_dim, list(hidden_sizes), activation, init_std, "param",
                               min_std, gru_size, latent_dim=latent_dim)
        self.embed_action = nn.Sequential(nn.Linear(act_dim, self.ACTION_EMBED), nn.ReLU())
        self.embed_reward = nn.Sequential(nn.Linear(1, self.REWARD_EMBED), nn.ReLU())
        self.embed_state = nn.Sequential(nn.Linear(obs_dim + 1, self.STATE_EMBED), nn.ReLU())
        self.gru = nn.GRU(self.ACTION_EMBED + self.REWARD_EMBED + self.STATE_EMBED, gru_size, batch_first=True)
        self.posterior_head = nn.Linear(gru_size, 2 * latent_dim)
        self.actor = mlp(obs_dim + 2 * latent_dim, hidden_sizes, act_dim, activation)
        self.critic = mlp(obs_dim + 2 * latent_dim, hidden_sizes, 1, activation)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.register_buffer("reward_scale", torch.ones(()))
        self.register_buffer("input_mean", torch.zeros(obs_dim + 2 * latent_dim))
        self.register_buffer("input_std", torch.ones(obs_dim + 2 * latent_dim))
        self._log_min_std = math.log(min_std)
        self.obs_dim, self.act_dim, self.gru_size, self.latent_dim = obs_dim, act_dim, gru_size, latent_dim

    initial_state = RecurrentGaussianPolicy.initial_state
    inputs = staticmethod(RecurrentGaussianPolicy.inputs)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters (embeddings, GRU, posterior head)."""
        return [p for m in (self.embed_action, self.embed_reward, self.embed_state, self.gru, self.posterior_head)
                for p in m.parameters()]

    def policy_parameters(self) -> list[nn.Parameter]:
        """The actor's and critic's parameters and the log-std."""
        return [*self.actor.parameters(), *self.critic.parameters(), self.log_std]

    def encode(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sequences x (N, L, I) from states h (N, H) -> posterior mean, log-variance
        (N, L, latent) and the GRU state after each step (N, L, H)."""
        o, a = self.obs_dim, self.act_dim
        emb = torch.cat([self.embed_action(x[..., o:o + a]), self.embed_reward(x[..., o + a:o + a + 1]),
                         self.embed_state(torch.cat([x[..., :o], x[..., -1:]], -1))], -1)
        states, _ = self.gru(emb, h.unsqueeze(0).contiguous())
        mean, logvar = self.posterior_head(states).split(self.latent_dim, -1)
        return mean, logvar, states

    def heads(self, obs: Tensor, mean: Tensor, logvar: Tensor, through_encoder: bool = False
              ) -> tuple[Tensor, Tensor, Tensor]:
        """Actor and critic on the normalised (obs, posterior): (..., O), (..., latent) x 2
        -> mean, std (..., A), value (...)."""
        if not through_encoder:
            mean, logvar = mean.detach(), logvar.detach()
        z = (torch.cat([obs, mean, logvar], -1) - self.input_mean) / self.input_std
        action_mean = self.actor(z)
        std = self.log_std.clamp_min(self._log_min_std).exp().expand_as(action_mean)
        return action_mean, std, self.critic(z).squeeze(-1)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """As :meth:`RecurrentGaussianPolicy.forward`: x (N, L, I), h (N, H) -> mean, std
        (N, L, A), value (N, L), states (N, L, H)."""
        mean, logvar, states = self.encode(x, h)
        action_mean, std, value = self.heads(x[..., :self.obs_dim], mean, logvar)
        return action_mean, std, value, states

    step = RecurrentGaussianPolicy.step


def to_numpy(params: Params) -> dict[str, Any]:
    """Parameters as CPU numpy arrays (what crosses a process boundary)."""
    return {k: v.detach().cpu().numpy() for k, v in params.items()}
