"""Contexts from the real nav2d env for three goal-blind behaviours.

Saves data.npz (beside this script): for split in (train, test) and behaviour in (rand, line, wrong):
  {split}_{beh}: (N, K, 100, 7) float32 rows [s(2), a_ctx(2), r(1), s'(2)] where a_ctx is
  PEARL's context action tanh(sample) in [-1, 1] (env displacement = 0.1 * a_ctx, see
  PolicySpec.env_action with squash=True), r is the raw (unscaled) env reward, as in
  metarl.algos.pearl.transition_rows.
  {split}_goal: (N, 2).
Episodes keep stepping after a (rare) termination; the count is printed.
"""
import time
import numpy as np
import metarl.envs

rng = np.random.default_rng(123)
dist = metarl.envs.make("nav2d", num_train_tasks=1000, num_test_tasks=200)
splits = {"train": (dist.sample(500, "train", rng), 4), "test": (dist.sample(200, "test", rng), 2)}
MAX = 0.1


def policy(beh, rng):
    if beh == "rand":
        return lambda pos, t: rng.uniform(-MAX, MAX, 2)
    if beh == "line":
        th = rng.uniform(0, 2 * np.pi)
        d = MAX * np.array([np.cos(th), np.sin(th)])
        return lambda pos, t: d
    if beh == "wrong":
        w = rng.uniform(-0.5, 0.5, 2)
        def act(pos, t):
            delta = w - pos
            n = np.linalg.norm(delta)
            return delta if n <= MAX else delta * (MAX / n)
        return act
    raise ValueError(beh)


out, t0, terms = {}, time.time(), 0
for split, (tasks, K) in splits.items():
    out[f"{split}_goal"] = np.array([t.params["goal"] for t in tasks], np.float32)
    for beh in ("rand", "line", "wrong"):
        arr = np.zeros((len(tasks), K, 100, 7), np.float32)
        for i, task in enumerate(tasks):
            env = dist.make_env(task)
            for k in range(K):
                obs, _ = env.reset(seed=0)
                pi = policy(beh, rng)
                for t in range(100):
                    a = pi(obs.astype(np.float64), t)
                    nobs, r, term, trunc, _ = env.step(a.astype(np.float32))
                    terms += term
                    arr[i, k, t, :2], arr[i, k, t, 2:4], arr[i, k, t, 4], arr[i, k, t, 5:] = obs, a / MAX, r, nobs
                    obs = nobs
        out[f"{split}_{beh}"] = arr
np.savez_compressed(str(__import__("pathlib").Path(__file__).with_name("data.npz")), **out)
print(f"done in {time.time() - t0:.1f}s; termination events (kept stepping): {terms}")
