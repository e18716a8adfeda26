"""Is the goal identifiable from a context at all? Exact (noise-free) data: every goal g
with |s'_t - g| = -r_t for all t in the context is consistent. Grid over [-0.5,0.5]^2
(step 0.01): 'LS' = argmin of sum_t (|s'_t - g| + r_t)^2 (one least-squares solution; for a
straight line the mirror image fits equally, the grid picks one); 'Bayes' = mean of all grid
goals with RMS residual < 0.01 (the MSE-optimal estimate under the uniform goal prior, i.e.
the ceiling on R^2 of any encoder); also 'proj' for single-line contexts = sign-averaged
(projection of g on the walked line)."""
import numpy as np

D = np.load(str(__import__("pathlib").Path(__file__).with_name("data.npz")))
G = D["test_goal"].astype(np.float64)
xs = np.linspace(-0.5, 0.5, 101)
grid = np.stack(np.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
rng = np.random.default_rng(0)


def r2(pred, goal):
    return 1 - ((pred - goal) ** 2).sum() / ((goal - goal.mean(0)) ** 2).sum()


for beh in ("rand", "line", "wrong"):
    E = D[f"test_{beh}"].astype(np.float64)
    for kind in ("c100x1", "c64x2"):
        ls, bayes, goals = [], [], []
        for i in range(len(G)):
            for _ in range(2):
                if kind == "c100x1":
                    ctx = E[i, rng.integers(2)]
                else:
                    ctx = np.concatenate([E[i, 0], E[i, 1]])[np.sort(rng.integers(200, size=64))]
                nxt, d = ctx[:, 5:7], -ctx[:, 4]
                res = np.sqrt(((np.linalg.norm(grid[:, None] - nxt[None], axis=-1) - d[None]) ** 2).mean(1))
                ls.append(grid[res.argmin()])
                ok = res < 0.01
                bayes.append(grid[ok].mean(0) if ok.any() else grid[res.argmin()])
                goals.append(G[i])
        ls, bayes, goals = map(np.array, (ls, bayes, goals))
        print(f"{beh:6s} {kind:7s} R2 LS(one solution)={r2(ls, goals):.3f}  Bayes-mean(ceiling)={r2(bayes, goals):.3f}")
    if beh == "line":  # analytic: projection onto the walked direction
        d = E[:, 0, -1, 5:7] / np.linalg.norm(E[:, 0, -1, 5:7], axis=1, keepdims=True)
        proj = (G * d).sum(1, keepdims=True) * d
        print(f"line   c100x1  R2 projection on line (sign-averaged, ignores square prior)={r2(proj, G):.3f}")
