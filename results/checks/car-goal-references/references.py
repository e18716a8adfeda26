"""Reference returns on car-goal's held-out tasks, to read the families rows against.

On the 30 held-out tasks the families suite evaluates (seed 0's held-out set, as
`metarl evaluate` draws it), 200-step episodes from the env's reset:

- standing still (zero action), what a policy that has learned nothing useful but to
  stay put scores;
- a controller that knows the goal: turn towards it, throttle by distance times the
  cosine of the heading error (proportional gains 1 and 3), an upper reference for what
  adaptation could reach.

    python results/checks/car-goal-references/references.py
"""

import numpy as np

import metarl.envs
from metarl.seeding import Seeds


def episode(dist, task, policy) -> tuple[float, float]:
    env = dist.make_env(task)
    obs, _ = env.reset(seed=0)
    total, success = 0.0, 0.0
    for _ in range(200):
        obs, reward, terminated, truncated, info = env.step(policy(obs, task))
        total, success = total + reward, max(success, info["success"])
        if terminated or truncated:
            break
    return total, success


def stand_still(obs, task):
    return np.zeros(2)


def knows_the_goal(turn_gain: float, throttle_gain: float):
    def policy(obs, task):
        x, y, cos_yaw, sin_yaw = obs[:4]
        to_goal = np.asarray(task.params["goal"]) - np.array([x, y])
        error = np.arctan2(to_goal[1], to_goal[0]) - np.arctan2(sin_yaw, cos_yaw)
        error = (error + np.pi) % (2 * np.pi) - np.pi
        return np.clip([throttle_gain * np.linalg.norm(to_goal) * np.cos(error), turn_gain * error], -1, 1)
    return policy


def main() -> None:
    dist = metarl.envs.make("car-goal")
    tasks = dist.sample(30, "test", Seeds(0).eval_tasks())
    for name, policy in [("standing still", stand_still),
                         ("knows the goal, gains 1/1", knows_the_goal(1.0, 1.0)),
                         ("knows the goal, gains 3/1", knows_the_goal(3.0, 1.0))]:
        out = np.array([episode(dist, task, policy) for task in tasks])
        print(f"{name}: return {out[:, 0].mean():.1f} ± {out[:, 0].std():.1f}, "
              f"reaches the goal (within 0.1 m) on {100 * out[:, 1].mean():.0f}%")


if __name__ == "__main__":
    main()
