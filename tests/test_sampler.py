import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import metarl.envs
from metarl.envs import Task
from metarl.envs.navigation import Navigation2D, PointNavigationEnv
from metarl.policies import GaussianMLPPolicy
from metarl.sampling import Sampler, SamplerError, WorkerError


def constant_policy(obs_dim, act_dim, action, std=1e-3):
    """A policy whose mean is ``action`` everywhere (zero weights, bias = action)."""
    policy = GaussianMLPPolicy(obs_dim, act_dim, [4], init_std=std)
    params = policy.params()
    for k in params:
        params[k] = torch.zeros_like(params[k]) if k != "log_std" else params[k]
    params["mean.bias"] = torch.tensor(action, dtype=torch.float32)
    return policy, params


def test_shapes_and_masks_with_termination():
    dist = metarl.envs.make("nav2d")
    policy, params = constant_policy(2, 2, [1.0, 0.0])  # nav2d: 0.1 a step
    near, far = Task("nav2d", {"goal": [0.3, 0.0]}), Task("nav2d", {"goal": [-0.4, 0.4]})
    with Sampler(dist, policy.spec, backend="local") as s:
        batch = s.collect([near, far], params, episodes=3, seed=0, deterministic=True)
    assert batch.obs.shape == (2, 3, 100, 2) and batch.actions.shape == (2, 3, 100, 2)
    assert batch.rewards.shape == batch.mask.shape == batch.log_probs.shape == (2, 3, 100)
    assert batch.lengths[0].tolist() == [3, 3, 3]  # reaches (0.3, 0) at the third step
    assert batch.terminated[0, :, 2].all() and not batch.truncated[0].any()
    assert not batch.mask[0, :, 3:].any() and (batch.rewards[0, :, 3:] == 0).all()
    assert batch.lengths[1].tolist() == [100, 100, 100]
    assert batch.truncated[1, :, 99].all() and not batch.terminated[1].any()
    assert batch.env_steps == 9 + 300
    assert batch.success is None
    torch.testing.assert_close(batch.last_obs[0, 0], torch.tensor([0.3, 0.0]))


def test_truncation_by_max_steps_and_success_passthrough():
    dist = metarl.envs.make("ml1/reach-v3")
    policy = GaussianMLPPolicy(39, 4, [8])
    tasks = dist.sample(2, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="local") as s:
        batch = s.collect(tasks, policy.params(), episodes=2, seed=1, max_steps=15)
    assert batch.obs.shape == (2, 2, 15, 39)
    assert batch.mask.all() and batch.truncated[..., -1].all()
    assert batch.success is not None and batch.success.shape == (2, 2, 15)


def test_log_probs_match_policy():
    dist = metarl.envs.make("halfcheetah-vel")
    policy = GaussianMLPPolicy(17, 6, [16])
    tasks = dist.sample(2, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="local") as s:
        batch = s.collect(tasks, policy.params(), episodes=2, seed=1, max_steps=10)
    from metarl.policies import log_prob

    with torch.no_grad():
        recomputed = log_prob(policy, policy.params(), batch.obs, batch.actions)
    torch.testing.assert_close(recomputed, batch.log_probs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, per_task", [("halfcheetah-vel", False), ("nav2d", True)])
def test_same_seed_same_batch_across_backends_workers_and_lanes(name, per_task):
    """Feed-forward batches do not depend on the backend, the worker count, or how many
    items share a lockstep (max_lanes=2: one item at a time; 4: two, then one; 64: all at
    once), with one parameter set or one per task, and with episodes ending at different
    steps (nav2d)."""
    dist = metarl.envs.make(name)
    obs_dim, act_dim = (s.shape[0] for s in dist.spaces)
    policy = GaussianMLPPolicy(obs_dim, act_dim, [16])
    tasks = dist.sample(3, "train", np.random.default_rng(0))
    torch.manual_seed(1)
    params = policy.params()
    if per_task:  # each task's own parameters: on nav2d, straight to its goal in 3, 4, 5 steps
        policy, _ = constant_policy(obs_dim, act_dim, [0.0, 0.0], std=1e-3)
        params = [constant_policy(obs_dim, act_dim, (np.array(task.params["goal"]) / (3 + i) / 0.1).tolist(),
                                  std=1e-3)[1] for i, task in enumerate(tasks)]
    batches = []
    for backend, workers, lanes in (("local", 1, 64), ("local", 1, 2), ("process", 2, 64), ("process", 1, 4)):
        with Sampler(dist, policy.spec, backend=backend, num_workers=workers, max_lanes=lanes) as s:
            batches.append(s.collect(tasks, params, episodes=2, seed=5, max_steps=30))
    if name == "nav2d":
        assert len(set(batches[0].lengths.flatten().tolist())) > 1  # lanes leave the lockstep at different steps
    for b in batches[1:]:
        for key in ("obs", "actions", "rewards", "log_probs", "mask", "terminated", "truncated", "last_obs"):
            assert torch.equal(getattr(b, key), getattr(batches[0], key)), key
    with Sampler(dist, policy.spec, backend="local") as s:
        other = s.collect(tasks, params, episodes=2, seed=6, max_steps=30)
    assert not torch.equal(other.actions, batches[0].actions)


def test_per_task_params_reach_their_tasks():
    dist = metarl.envs.make("nav2d")
    policy, right = constant_policy(2, 2, [1.0, 0.0])
    _, up = constant_policy(2, 2, [0.0, 1.0])
    tasks = dist.sample(4, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="process", num_workers=2) as s:
        batch = s.collect(tasks, [right, up, up, right], episodes=1, seed=0, max_steps=5, deterministic=True)
    final = batch.last_obs[:, 0]
    for i, direction in enumerate(["right", "up", "up", "right"]):
        x, y = final[i].tolist()
        assert (x > 0.4 and abs(y) < 1e-6) if direction == "right" else (y > 0.4 and abs(x) < 1e-6)


def test_killed_worker_between_collections_is_replaced(caplog):
    dist = metarl.envs.make("nav2d")
    policy = GaussianMLPPolicy(2, 2, [8])
    tasks = dist.sample(4, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="process", num_workers=2) as s:
        reference = s.collect(tasks, policy.params(), episodes=2, seed=3)
        os.kill(s.worker_pids[0], signal.SIGKILL)
        again = s.collect(tasks, policy.params(), episodes=2, seed=3)
        assert s.restarts == 1
    assert torch.equal(reference.obs, again.obs)
    # The user hears of it: a killed worker is what the OOM killer leaves.
    assert "sampler worker 0 died (exit code -9 (SIGKILL: out of memory?)); restarted" in caplog.text


def test_workers_ignore_a_terminals_ctrl_c():
    """A terminal's Ctrl-C reaches every process of the group; the parent decides what it
    means (the trainer finishes its iteration), so the workers live on, unrestarted."""
    dist = metarl.envs.make("nav2d")
    policy = GaussianMLPPolicy(2, 2, [8])
    tasks = dist.sample(4, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="process", num_workers=2) as s:
        pids = s.worker_pids
        for pid in pids:
            os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        s.collect(tasks, policy.params(), episodes=2, seed=3)
        assert s.restarts == 0 and s.worker_pids == pids


class CrashOnceEnv(PointNavigationEnv):
    """Kills its own process on the 5th step the first time (a simulator segfault), or
    with ``raises`` raises there (a bug in the env's code)."""

    marker: str = ""

    always: bool = False

    raises: bool = False

    def step(self, action):
        self._n = getattr(self, "_n", 0) + 1
        if self._n == 5 and (self.always or self._first_to_crash()):
            if self.raises:
                raise ValueError("the env's own bug at step 5")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)

    def _first_to_crash(self) -> bool:
        # Atomic across worker processes: exactly one creates the marker, so exactly one
        # worker dies even when both reach step 5 at the same moment.
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


@dataclass(frozen=True)
class CrashingNav(Navigation2D):
    marker: str = ""
    always: bool = False
    raises: bool = False

    def make_env(self, task):
        import gymnasium as gym

        env = CrashOnceEnv()
        env.marker, env.always, env.raises = self.marker, self.always, self.raises
        return gym.wrappers.TimeLimit(env, max_episode_steps=self.horizon)


def test_worker_dying_mid_collection_is_recovered(tmp_path):
    dist = CrashingNav(marker=str(tmp_path / "crashed"))
    policy = GaussianMLPPolicy(2, 2, [8])
    tasks = dist.sample(2, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="process", num_workers=2) as s:
        batch = s.collect(tasks, policy.params(), episodes=2, seed=3)
        assert s.restarts == 1
    with Sampler(metarl.envs.make("nav2d"), policy.spec, backend="local") as s:
        reference = s.collect(tasks, policy.params(), episodes=2, seed=3)
    assert (tmp_path / "crashed").exists()
    assert torch.equal(batch.obs, reference.obs) and torch.equal(batch.mask, reference.mask)


def test_worker_that_keeps_dying_raises_clear_error(tmp_path):
    dist = CrashingNav(marker=str(tmp_path / "never"), always=True)
    policy = GaussianMLPPolicy(2, 2, [8])
    with Sampler(dist, policy.spec, backend="process", num_workers=1, max_retries=2) as s:
        with pytest.raises(SamplerError, match="failed after 2 restarts"):
            s.collect(dist.sample(1, "train"), policy.params(), episodes=1, seed=0)


def test_exception_in_a_worker_is_raised_with_its_traceback_not_retried(tmp_path):
    """One of two workers raises: no restart, the error names the env's line, and the
    other worker's result is drained, so the next collection gets its own batch."""
    dist = CrashingNav(marker=str(tmp_path / "raised"), raises=True)
    policy = GaussianMLPPolicy(2, 2, [8])
    tasks = dist.sample(2, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="process", num_workers=2) as s:
        with pytest.raises(WorkerError, match=r"(?s)Traceback.*in step\n.*ValueError: the env's own bug at step 5"):
            s.collect(tasks, policy.params(), episodes=2, seed=3)
        # The marker exists: no more raising. Another seed, so a stale result would show.
        batch = s.collect(tasks, policy.params(), episodes=2, seed=4)
        assert s.restarts == 0
    with Sampler(metarl.envs.make("nav2d"), policy.spec, backend="local") as s:
        reference = s.collect(tasks, policy.params(), episodes=2, seed=4)
    assert torch.equal(batch.obs, reference.obs) and torch.equal(batch.mask, reference.mask)


def _actor_nodes(sampler):
    import ray

    return ray.get([a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
                    for a in sampler._actors])


@pytest.mark.ray
def test_ray_cluster_spreads_workers_and_survives_a_lost_node():
    """A real multi-node cluster on this machine (a head without CPUs and two worker nodes):
    the sampler's actors land one per node, the batch equals the local one bit for bit, and
    a node removed mid-collection costs a restart on the surviving node, not the batch."""
    ray = pytest.importorskip("ray")
    import threading
    import time

    from ray.cluster_utils import Cluster

    dist = metarl.envs.make("halfcheetah-vel")
    policy = GaussianMLPPolicy(17, 6, [16])
    tasks = dist.sample(4, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="local") as s:
        reference = s.collect(tasks, policy.params(), episodes=60, seed=4)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
        cluster.wait_for_nodes()
        with Sampler(dist, policy.spec, backend="ray", num_workers=2, ray_address=cluster.address) as s:
            where = _actor_nodes(s)
            assert sorted(where) == sorted(n.node_id for n in nodes)
            batch = s.collect(tasks, policy.params(), episodes=60, seed=4)  # builds the actors' envs
            for key in ("obs", "actions", "rewards", "log_probs", "mask"):
                assert torch.equal(getattr(batch, key), getattr(reference, key)), key
            start = time.perf_counter()
            s.collect(tasks, policy.params(), episodes=60, seed=5)
            took = time.perf_counter() - start  # a warm collection, as the one interrupted below
            assert s.restarts == 0
            out = {}

            def collect():
                try:
                    out["batch"] = s.collect(tasks, policy.params(), episodes=60, seed=4)
                except BaseException as e:  # re-raised below, in the test's thread
                    out["error"] = e

            collecting = threading.Thread(target=collect)
            collecting.start()
            time.sleep(0.3 * took)  # a third into the same collection as above
            cluster.remove_node(next(n for n in nodes if n.node_id == where[1]))
            collecting.join(timeout=120)
            assert not collecting.is_alive()
            if "error" in out:
                raise out["error"]
            assert s.restarts >= 1
            for key in ("obs", "actions", "rewards", "log_probs", "mask"):
                assert torch.equal(getattr(out["batch"], key), getattr(reference, key)), key
            survivor = where[0]
            assert _actor_nodes(s) == [survivor, survivor]
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.parametrize("kind, kwargs", [
    ("gaussian_mlp", {"hidden_sizes": [512, 512]}),  # MAML-TRPO's ML1 policy
    ("gaussian_mlp", {"hidden_sizes": [32, 32], "activation": "relu", "max_std": 0.5, "init_std": 2.0}),
    ("gaussian_mlp", {"hidden_sizes": [20], "std_type": "head"}),  # a width the row-wise forward pads
    ("latent_gaussian_mlp", {"hidden_sizes": [32], "latent_dim": 5}),
])
def test_acting_paths_give_the_module_calls_numbers_and_each_lane_its_own(kind, kwargs):
    """The policy's forward (no module call per layer) gives bit for bit the numbers of
    calling the nn.Linear and activation modules; the sampler's lockstep path
    (``Actor.mean_std``, two parameter sets on one lockstep's lanes) gives those numbers up
    to rounding, and each lane's bit for bit whichever lanes are active with it: alone, a
    few, every other one, all 2 x 64 (at ML1's shapes, where a BLAS's one product over the
    rows rounds a row by the row count)."""
    from threadpoolctl import threadpool_limits
    from torch.func import functional_call

    from metarl.policies import PolicySpec, one_blas_thread, to_numpy
    from metarl.policies.acting import Actor

    spec = PolicySpec(kind, 39, 4, **kwargs)
    torch.manual_seed(0)
    policy = spec.build()
    param_sets = [policy.params(), {k: v + 0.05 * torch.randn_like(v) for k, v in policy.params().items()}]

    def by_modules(params, obs):  # the modules called one by one, as nn.Sequential does
        with torch.no_grad():
            module = spec.build()
            for k, v in params.items():
                module.get_parameter(k).copy_(v)
            if kind == "latent_gaussian_mlp":
                obs = torch.cat([obs, module.z.expand(len(obs), -1)], -1)
            h = module.trunk(obs)
            mean = module.mean(h)
            log_std = module.log_std.expand_as(mean) if spec.std_type == "param" else module.log_std_head(h)
            if spec.max_std is not None:
                log_std = log_std.clamp_max(np.log(spec.max_std))
            return mean, log_std.clamp_min(np.log(spec.min_std)).exp()

    rows = 64
    obs = torch.randn(2 * rows, 39)
    expected = [by_modules(p, obs[g * rows:(g + 1) * rows]) for g, p in enumerate(param_sets)]
    for g, p in enumerate(param_sets):
        with torch.no_grad():
            mean, std = functional_call(policy, p, (obs[g * rows:(g + 1) * rows],))
        assert torch.equal(mean, expected[g][0]) and torch.equal(std, expected[g][1])
    actor = Actor(spec, [to_numpy(p) for p in param_sets], [0] * rows + [1] * rows)
    lanes = np.arange(2 * rows)
    with one_blas_thread():  # as a worker's collection runs it
        mean, std = actor.mean_std(lanes, obs.numpy(), None)
        np.testing.assert_allclose(mean, torch.cat([e[0] for e in expected]).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(std, torch.cat([e[1] for e in expected]).numpy(), rtol=1e-4, atol=1e-6)
        alone = [actor.mean_std(np.array([lane]), obs.numpy()[lane:lane + 1], None) for lane in lanes]
        for some in (lanes, lanes[:2], lanes[rows - 3:rows + 7], lanes[1::2], lanes[5:15], lanes[rows:]):
            mean, std = actor.mean_std(some, obs.numpy()[some], None)
            assert np.array_equal(mean, np.concatenate([alone[i][0] for i in some])), some
            assert np.array_equal(std, np.concatenate([alone[i][1] for i in some])), some
        saturated = obs[:1].clone()
        saturated[0, 3] = float("inf")  # saturates the first layer's tanh; padding must not turn it to nan
        mean, _ = actor.mean_std(lanes[:1], saturated.numpy(), None)
        np.testing.assert_allclose(mean, by_modules(param_sets[0], saturated)[0].numpy(), rtol=1e-4, atol=1e-5)
    # Actor.act (Meta-World's protocol, videos) runs the forward on one BLAS thread itself,
    # whatever the process's setting, and gives the lockstep's numbers as tensors.
    from threadpoolctl import threadpool_info

    threads_seen, forwards = [], list(actor._rowwise)

    def spy(g):
        def forward(x):
            threads_seen.append(max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"))
            return forwards[g](x)
        return forward

    actor._rowwise = [spy(g) for g in range(len(forwards))]
    with threadpool_limits(limits=2, user_api="blas"):
        for some in (lanes, lanes[5:15]):
            mean, std = actor.act(some, obs[some], np.zeros(len(some)))
            assert torch.equal(mean, torch.from_numpy(np.concatenate([alone[i][0] for i in some])))
            assert torch.equal(std, torch.from_numpy(np.concatenate([alone[i][1] for i in some])))
    assert threads_seen and set(threads_seen) == {1}
