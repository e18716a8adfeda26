"""The fast Meta-World step path is bit-for-bit the stock one.

Every comparison here is exact: same types, same bytes. Nothing is compared to a
tolerance.
"""

import functools
import logging
import math
import pickle
import sys
from fractions import Fraction

import numpy as np
import pytest
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.policies import ENV_POLICY_MAP
from metaworld.types import Task as MWTask
from metaworld.utils import reward_utils
from scipy.spatial.transform import Rotation

import metarl.envs
from metarl.envs import metaworld_fast as mwf

ENV_NAMES = list(ALL_V3_ENVIRONMENTS)
# The default run checks the equivalence on the results' three ML1 classes and every sixth
# other one; the slow run on all 50 (seed 0 and three more). What was verified is pinned
# by source fingerprints (test_recorded_fingerprints_match_the_installed_sources), which
# fail in the default run when an upgrade changes any class: re-run the slow tests then.
DEFAULT_NAMES = sorted({"reach-v3", "push-v3", "pick-place-v3", *ENV_NAMES[::6]})
# What the next step reads (state, controls, mocap targets, the solver's warm start) and
# what the fast step writes differently from stock (sites: mj_forward recomputes them).
MJDATA_FIELDS = ("qpos", "qvel", "act", "ctrl", "mocap_pos", "mocap_quat", "qacc_warmstart",
                 "xpos", "xquat", "site_xpos")


def assert_identical(a, b, where="value"):
    """Equal types and equal bits, recursively (tuples, lists, dicts, arrays, floats)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert a.tobytes() == b.tobytes(), f"{where}: {a!r} vs {b!r}"
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (float, np.floating)):
        assert np.array(a).tobytes() == np.array(b).tobytes(), f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


@functools.cache
def _goal(name, seed):
    """A goal vector of ``name`` drawn the way Meta-World's benchmarks draw theirs (the
    env's own reset samples one that satisfies its constraints)."""
    env = ALL_V3_ENVIRONMENTS[name]()
    env._freeze_rand_vec, env.seeded_rand_vec, env._set_task_called = False, True, True
    env.seed(seed)
    env.reset()
    env.close()
    return env._last_rand_vec.copy()


def _task(name, seed, observable):
    """A task of ``name``; its goal shown in the observation when ``observable``
    (Meta-World's scripted policies read it from there)."""
    data = {"rand_vec": _goal(name, seed), "env_cls": ALL_V3_ENVIRONMENTS[name],
            "partially_observable": not observable}
    return MWTask(env_name=name, data=pickle.dumps(data))


def _pair(name):
    stock_cls = ALL_V3_ENVIRONMENTS[name]
    fast_cls = mwf.env_class(name, fast=True)
    assert fast_cls is not stock_cls and issubclass(fast_cls, stock_cls), "fast path not in use"
    return stock_cls(), fast_cls()


def run_side_by_side(name, seed, random_steps=200):
    """One scripted episode (goal visible, noisy actions) to its 500-step horizon and
    ``random_steps`` steps of a random one (actions beyond [-1, 1], float32 and float64
    alternating), on the stock and the fast class; asserts every output identical. Returns
    whether the scripted one succeeded."""
    envs = _pair(name)
    policy = ENV_POLICY_MAP[name]()
    succeeded = False
    for mode in ("scripted", "random"):
        for env in envs:
            env.set_task(_task(name, seed, observable=mode == "scripted"))
        rng = np.random.default_rng(seed)
        out = [env.reset() for env in envs]
        assert_identical(out[0], out[1], f"{name} {mode} reset")
        obs = out[0][0]
        for t in range(500 if mode == "scripted" else random_steps):
            if mode == "scripted":
                action = np.clip(policy.get_action(obs) + rng.normal(0, 0.05, 4), -1, 1).astype(np.float32)
            else:
                action = rng.uniform(-1.5, 1.5, 4)
                action = action.astype(np.float32) if t % 2 else action
            out = [env.step(action.copy()) for env in envs]
            assert_identical(out[0], out[1], f"{name} {mode} step {t}")
            for field in MJDATA_FIELDS:  # the simulator state too, not only what step returns
                assert_identical(*(getattr(env.data, field) for env in envs), f"{name} {mode} step {t} {field}")
            obs = out[0][0]
            if mode == "scripted":
                succeeded |= bool(out[0][4]["success"])
        assert out[0][3] is (mode == "scripted")  # truncated at the horizon: the full episode ran
        for attr in ("_prev_obs", "_last_stable_obs"):
            assert_identical(getattr(envs[0], attr), getattr(envs[1], attr), attr)
        assert envs[0].data.qpos.tobytes() == envs[1].data.qpos.tobytes()
    for env in envs:
        env.close()
    return succeeded


_scripted_success = {}


@pytest.mark.filterwarnings("ignore:Constant")
@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_fast_step_is_bit_identical(name):
    _scripted_success[name] = run_side_by_side(name, seed=0)


def test_scripted_episodes_exercised_success():
    """The equivalence runs above went through the grasp/success branches of the rewards."""
    if len(_scripted_success) < len(DEFAULT_NAMES):
        pytest.skip("needs every test_fast_step_is_bit_identical case in this run")
    assert sum(_scripted_success.values()) >= 0.6 * len(DEFAULT_NAMES), _scripted_success


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Constant")
@pytest.mark.parametrize("name", ENV_NAMES)
def test_fast_step_is_bit_identical_more_tasks(name):
    for seed in (0, 1, 2, 3):
        run_side_by_side(name, seed, random_steps=500)


def test_every_v3_class_is_verified_and_uses_the_fast_methods():
    fast_methods = {n for n in vars(mwf.FastSawyerMixin) if not n.startswith("_fast")} - {
        "__module__", "__doc__", "__dict__", "__weakref__", "__qualname__", "__firstlineno__",
        "__static_attributes__"}
    for name, stock in ALL_V3_ENVIRONMENTS.items():
        fast = mwf.fast_class(stock)
        assert fast is not None, name
        assert fast.__name__ == stock.__name__  # envs record it as task_name
        overridden = {m for m in fast_methods if m in vars(stock)}
        for m in fast_methods - overridden:
            assert vars(fast)[m] is vars(mwf.FastSawyerMixin)[m], (name, m)
        assert fast._fast_direct_sim
        # the env's own reward code runs on the shims
        rebound = [f for f in vars(fast).values() if getattr(f, "__globals__", {}).get("reward_utils")
                   not in (None, reward_utils)]
        assert rebound or "reward_utils" not in vars(sys.modules[stock.__module__]), name


def test_distribution_fast_flag_selects_the_class():
    for fast in (True, False):
        dist = metarl.envs.make("ml1/reach-v3", fast=fast)
        env = dist.make_env(dist.tasks("train")[0])
        cls = type(env.unwrapped)
        assert (cls is ALL_V3_ENVIRONMENTS["reach-v3"]) is (not fast)
        env.close()


def test_unverified_sources_fall_back_to_stock_and_say_so_once(monkeypatch, caplog):
    stock = ALL_V3_ENVIRONMENTS["reach-v3"]
    monkeypatch.setattr(mwf, "_fast_classes", {})
    monkeypatch.setattr(mwf, "_said", set())
    monkeypatch.setitem(mwf.VERIFIED_CLASSES, stock.__name__, "0" * 16)
    with caplog.at_level(logging.INFO, logger=mwf.__name__):
        assert mwf.env_class("reach-v3", fast=True) is stock
        assert mwf.env_class("reach-v3", fast=True) is stock
    assert sum("SawyerReachEnvV3 differs" in r.message for r in caplog.records) == 1

    # An unknown base method body keeps that one method stock; the rest stays fast.
    monkeypatch.undo()
    monkeypatch.setattr(mwf, "_fast_classes", {})
    monkeypatch.setitem(mwf.VERIFIED_BASE, "metaworld.sawyer_xyz_env.SawyerXYZEnv.touching_object", "0" * 16)
    fast = mwf.fast_class(ALL_V3_ENVIRONMENTS["pick-place-v3"])
    assert fast.touching_object is not mwf.FastSawyerMixin.touching_object
    assert fast.step is mwf.FastSawyerMixin.step and fast._fast_direct_sim
    monkeypatch.setitem(mwf.VERIFIED_BASE, "gymnasium.envs.mujoco.mujoco_env.MujocoEnv.do_simulation", "0" * 16)
    monkeypatch.setattr(mwf, "_fast_classes", {})
    assert not mwf.fast_class(ALL_V3_ENVIRONMENTS["pick-place-v3"])._fast_direct_sim

    # An unknown reward_utils.tolerance: the env code keeps calling the stock one.
    monkeypatch.setitem(mwf.VERIFIED_BASE, "metaworld.utils.reward_utils.tolerance", "0" * 16)
    monkeypatch.setattr(mwf, "_fast_classes", {})
    mwf._shims.cache_clear()
    try:
        fast = mwf.fast_class(ALL_V3_ENVIRONMENTS["pick-place-v3"])
        helpers = fast.compute_reward.__globals__["reward_utils"]
        assert helpers.tolerance is reward_utils.tolerance
        assert helpers.hamacher_product is not reward_utils.hamacher_product  # still shimmed
        assert fast.compute_reward.__globals__["np"] is not np  # so is norm
    finally:
        mwf._shims.cache_clear()


def test_recorded_fingerprints_match_the_installed_sources():
    """A metaworld/gymnasium upgrade changes these: re-run this file's equivalence tests,
    then `python -m metarl.envs.metaworld_fast --write`."""
    current = mwf.current_fingerprints()
    assert current["base"] == mwf.VERIFIED_BASE
    assert current["classes"] == mwf.VERIFIED_CLASSES


def test_fast_env_pickles_as_its_class_and_like_stock():
    """Meta-World's pickling restores only qpos/qvel; a fast env's clone behaves as a
    stock env's clone does."""
    name = "pick-place-v3"
    clones = []
    for env in _pair(name):
        env.set_task(_task(name, 0, observable=False))
        env.reset()
        env.step(np.full(4, 0.5, dtype=np.float32))
        clone = pickle.loads(pickle.dumps(env))
        assert type(clone) is type(env)
        clones.append(clone)
    for t in range(20):
        a = np.array([0.3, -0.2, 0.1, 0.5], dtype=np.float32)
        assert_identical(clones[0].step(a), clones[1].step(a), f"step {t}")


# ---- the exact helpers, against the functions they stand in for ----------------------


def _rotation_cases(rng):
    mats = list(Rotation.random(5000, random_state=rng.integers(1 << 31)).as_matrix())
    # near each of Shepperd's four branches: half-turns about each axis, small angles
    for axis in np.eye(3):
        for angle in (np.pi, np.pi - 1e-9, np.pi * 0.999, 1e-12, 0.5):
            mats.append(Rotation.from_rotvec(axis * angle).as_matrix())
    mats.append(np.eye(3))
    # MuJoCo's own rotation matrices, as the envs read them
    env = mwf.env_class("pick-place-v3", fast=True)()
    env.set_task(_task("pick-place-v3", 0, observable=False))
    env.reset()
    for _ in range(100):
        env.step(rng.uniform(-1, 1, 4))
        mats.extend(env.data.geom_xmat.reshape(-1, 3, 3).copy())
    return mats


def test_rotation_shim_matches_scipy_bitwise():
    rng = np.random.default_rng(0)
    shim = mwf.RotationShim()
    fast_hits = 0
    for m in _rotation_cases(rng):
        fast_hits += mwf.quat_from_matrix(m.tolist()) is not None
        assert_identical(shim.from_matrix(m).as_quat(), Rotation.from_matrix(m).as_quat(), str(m))
    assert fast_hits > 5000  # the exact path, not the scipy fallback, was tested
    # Not orthogonal enough, reflections, NaN: scipy decides (and raises) itself.
    for m in (np.diag([1.0, 1.0, 1.0 + 1e-4]), np.eye(3) + 1e-7, rng.normal(size=(3, 3)) + 3 * np.eye(3)):
        assert mwf.quat_from_matrix(m.tolist()) is None
        assert_identical(shim.from_matrix(m).as_quat(), Rotation.from_matrix(m).as_quat())
    for bad in (np.diag([1.0, 1.0, -1.0]), np.zeros((3, 3))):
        with pytest.raises(ValueError):
            shim.from_matrix(bad)
    r = shim.from_matrix(np.eye(3))
    assert_identical(r.as_quat(canonical=True), Rotation.from_matrix(np.eye(3)).as_quat(canonical=True))
    assert_identical(r.as_euler("xyz"), Rotation.from_matrix(np.eye(3)).as_euler("xyz"))


def _tolerance_cases(rng):
    xs = np.concatenate([rng.normal(0, 1, 4000), rng.normal(0, 1e-3, 1000), rng.uniform(-1e3, 1e3, 500),
                         [0.0, -0.0, 0.05, 0.02, 1e155, -1e200, np.inf, -np.inf, np.nan]])
    for i, x in enumerate(xs):
        lower = [0, 0.0, -0.1, 0.015][i % 4]
        upper = [0.05, 0.0, 0.1, 0.02][(i // 4) % 4]
        if lower > upper:
            lower, upper = upper, lower
        margin = [0.0, abs(rng.normal()), np.float64(0.3), 1e-300][(i // 16) % 4]
        x = np.float64(x) if i % 2 else float(x)
        for sigmoid in ("long_tail", "gaussian"):
            yield x, (lower, upper), margin, sigmoid


def _outcome(f, *args, **kwargs):
    """What ``f`` returns, or the type of what it raises."""
    try:
        return f(*args, **kwargs)
    except Exception as e:
        return type(e)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_tolerance_shim_matches_reward_utils_bitwise():
    fast = mwf.make_tolerance(reward_utils.tolerance)
    rng = np.random.default_rng(1)
    n = 0
    for x, bounds, margin, sigmoid in _tolerance_cases(rng):
        kw = {"bounds": bounds, "margin": margin, "sigmoid": sigmoid}
        assert_identical(fast(x, **kw), reward_utils.tolerance(x, **kw), f"{x!r} {kw}")
        n += 1
    assert n > 10000
    # arrays and other sigmoids go to the stock function; its errors stay its errors
    arr = rng.normal(size=5)
    assert_identical(fast(arr, bounds=(0, 0.1), margin=0.5), reward_utils.tolerance(arr, bounds=(0, 0.1), margin=0.5))
    assert_identical(fast(0.3, bounds=(0, 0.1), margin=0.5, sigmoid="linear"),
                     reward_utils.tolerance(0.3, bounds=(0, 0.1), margin=0.5, sigmoid="linear"))
    # int margins and bounds (numpy compares them as float64), other values at the margin,
    # bounds past 2**53, a margin so small that the square overflows
    for x in (0.3, np.float64(-0.7), 2.0**60 + 256, 1e-300):
        for kw in ({"bounds": (0, 1), "margin": 2}, {"bounds": (-(2**60) - 1, 2**60 + 200), "margin": 0},
                   {"bounds": (0.5, 0.6), "margin": 0.25, "value_at_margin": 0.3},
                   {"bounds": (0.5, 0.6), "margin": np.float64(0.25), "value_at_margin": np.float64(0.7)},
                   {"bounds": (0.5, 0.6), "margin": 1e-300, "sigmoid": "long_tail"},
                   {"bounds": (2**1100, 2**1100), "margin": 1.0}):
            for sigmoid in ("long_tail", "gaussian"):
                kw = {"sigmoid": sigmoid, **kw}
                assert_identical(*(_outcome(f, x, **kw) for f in (fast, reward_utils.tolerance)), f"{x!r} {kw}")
    for kw in ({"bounds": (1.0, 0.0)}, {"margin": -1.0}, {"margin": 1.0, "value_at_margin": 1.5}):
        with pytest.raises(ValueError):
            fast(0.5, **kw)


def test_norm_shim_matches_numpy_bitwise():
    fast = mwf.make_norm(np.linalg.norm)
    rng = np.random.default_rng(2)
    for _ in range(3000):
        n = int(rng.integers(1, 8))
        x = rng.normal(size=n) * 10.0 ** rng.integers(-5, 5)
        assert_identical(fast(x), np.linalg.norm(x))
        assert_identical(fast(x, ord=2), np.linalg.norm(x, ord=2))
        assert_identical(fast(x[::2]), np.linalg.norm(x[::2]))
        y = x.reshape(1, -1)
        assert_identical(fast(y), np.linalg.norm(y))
        assert_identical(fast(np.float64(x[0])), np.linalg.norm(np.float64(x[0])))
    for other in (np.arange(3), np.ones(3, np.float32), [3.0, 4.0]):
        assert_identical(fast(other), np.linalg.norm(other))
    assert_identical(fast(np.ones((2, 2)), axis=0), np.linalg.norm(np.ones((2, 2)), axis=0))


def test_hamacher_product_shim_matches_reward_utils_bitwise():
    fast = mwf.make_hamacher_product(reward_utils.hamacher_product)
    rng = np.random.default_rng(4)
    values = [0.0, -0.0, 1.0, 1e-300, 5e-324, 0.5, 1 - 2**-53] + list(rng.uniform(0, 1, 400))
    values += list(rng.uniform(0, 1e-6, 50))
    for i, a in enumerate(values):
        for b in values[i % 7::7]:
            for ta in (float, np.float64):
                for tb in (float, np.float64):
                    assert_identical(fast(ta(a), tb(b)), reward_utils.hamacher_product(ta(a), tb(b)),
                                     f"{ta.__name__}({a!r}) {tb.__name__}({b!r})")
    for a, b in ((1, 0.5), (np.float32(0.5), 0.25), (True, 0.5)):  # other types: the stock function
        assert_identical(fast(a, b), reward_utils.hamacher_product(a, b))
    for a, b in ((1.5, 0.5), (0.5, -0.1), (np.nan, 0.5), (0.5, np.float64(np.inf))):
        with pytest.raises(ValueError):
            fast(a, b)


# ---- both answers of the dot probe, on every machine ---------------------------------
# numpy's x.dot(x) of a 3-vector is a sequential sum on some machines' BLAS and not on
# others (a kernel with fused multiply-adds rounds otherwise). The tests above take the
# branch this machine's probe picks; these force each answer.


def _in_order(values):
    """The sum of squares, one product after the other from 0.0."""
    total = 0.0
    for v in values:
        total += v * v
    return total


def _fused(values):
    """The sum of squares as a kernel with fused multiply-adds forms it (exact fma)."""
    total = values[0] * values[0]
    for v in values[1:]:
        total = float(Fraction(v) * Fraction(v) + Fraction(total))
    return total


@pytest.fixture
def dot_probe(monkeypatch):
    """``dot_probe(answer)`` forces what ``dot_is_sequential`` answers for the shims and
    fast classes built afterwards; everything built on the forced answer is dropped at
    the end of the test."""

    def clear():
        for cached in (mwf._shims, mwf._caging_helpers, mwf._rebound_stock_caging):
            cached.cache_clear()

    def force(answer):
        monkeypatch.setattr(mwf, "dot_is_sequential", lambda: answer)
        monkeypatch.setattr(mwf, "_fast_classes", {})
        clear()

    yield force
    monkeypatch.undo()
    clear()


def _norm_on_an_in_order_blas(stock):
    """``np.linalg.norm`` as it computes on a machine whose BLAS sums the squares of up to
    3 float64 elements in order (all that the probe's "yes" assumes); the rest: ``stock``."""

    def norm(x, ord=None, axis=None, keepdims=False):
        a = np.asarray(x)
        if (a.dtype == np.float64 and a.size <= 3 and axis is None and not keepdims
                and (ord is None or (ord == 2 and a.ndim == 1))):
            return np.sqrt(np.float64(_in_order(a.ravel().tolist())))
        return stock(x, ord=ord, axis=axis, keepdims=keepdims)

    return norm


@pytest.mark.parametrize("sequential", [True, False], ids=["probe-yes", "probe-no"])
def test_norm_shim_on_either_probe_answer(dot_probe, sequential):
    """"yes": a contiguous vector of up to 3 elements is summed in order in Python, also
    on vectors where a fused multiply-add kernel rounds otherwise (the two differ there, so
    the wrong branch fails here on any machine); "no": numpy's own dot, bit for bit stock.
    Longer, strided and 2-D arrays and scalars: stock on both answers."""
    dot_probe(sequential)
    fast = mwf.make_norm(np.linalg.norm)
    rng = np.random.default_rng(5)
    orders_differ = 0
    for _ in range(3000):
        n = int(rng.integers(1, 8))
        x = rng.normal(size=n) * 10.0 ** rng.integers(-5, 5)
        if sequential and n <= 3:
            values = x.tolist()
            expected = np.float64(math.sqrt(_in_order(values)))
            orders_differ += _in_order(values) != _fused(values)
        else:
            expected = np.linalg.norm(x)
        assert_identical(fast(x), expected, repr(x))
        assert_identical(fast(x, ord=2), expected, repr(x))
        for other in (x[::2], x.reshape(1, -1), np.float64(x[0])):
            assert_identical(fast(other), np.linalg.norm(other), repr(other))
    assert orders_differ > 100 or not sequential, orders_differ


def test_probe_answers_no_where_numpy_differs_from_the_python_sum(monkeypatch):
    """The probe's logic, on every machine: against a sum that is one ulp off numpy's
    answer it says no; and where it says yes, numpy's dot is the in-order sum on vectors
    of its own choosing too."""
    try:
        monkeypatch.setattr(mwf, "_sum_of_squares", lambda v: math.nextafter(_in_order(v), math.inf))
        mwf.dot_is_sequential.cache_clear()
        assert mwf.dot_is_sequential() is False
    finally:
        monkeypatch.undo()
        mwf.dot_is_sequential.cache_clear()
    rng = np.random.default_rng(6)
    vectors = [rng.normal(size=n) * 10.0 ** rng.integers(-6, 4) for n in (1, 2, 3) for _ in range(2000)]
    assert not mwf.dot_is_sequential() or all(v.dot(v) == _in_order(v.tolist()) for v in vectors)


@pytest.mark.filterwarnings("ignore:Constant")
@pytest.mark.parametrize("name", ["pick-place-v3", "basketball-v3", "button-press-topdown-v3"])
@pytest.mark.parametrize("sequential", [True, False], ids=["probe-yes", "probe-no"])
def test_fast_step_on_either_probe_answer(dot_probe, monkeypatch, name, sequential):
    """Full episodes side by side with the probe forced. "no": the fast env is stock on
    this machine. "yes": it is stock on a machine whose BLAS sums in order, simulated by
    an ``np.linalg.norm`` that sums up to 3 squares in order (the gripper distance, the
    caging reward's norms and the reward code's norms all take that branch)."""
    if sequential:
        monkeypatch.setattr(np.linalg, "norm", _norm_on_an_in_order_blas(np.linalg.norm))
    dot_probe(sequential)
    run_side_by_side(name, seed=0)


def test_resolved_lookups_return_what_the_stock_methods_return():
    """_get_pos_objects/_get_quat_objects of every env whose body is one named look-up:
    the same arrays as the stock method, also views of the same MjData memory, on a
    state away from the reset one, and (for the rotations) on a matrix scipy must
    orthogonalise, where the fast method hands over to the stock one."""
    resolved = 0
    for name, stock_cls in ALL_V3_ENVIRONMENTS.items():
        fast_cls = mwf.env_class(name, fast=True)
        methods = [m for m in mwf._OBJECT_METHODS
                   if getattr(vars(fast_cls).get(m), "__code__", None) is not None
                   and vars(fast_cls)[m].__code__.co_filename == mwf.__file__]
        if not methods:
            continue
        resolved += len(methods)
        envs, task = (stock_cls(), fast_cls()), _task(name, 0, observable=False)
        for env in envs:
            env.set_task(task)
            env.reset()
            for _ in range(5):
                env.step(np.array([0.5, -0.4, 0.3, 1.0], dtype=np.float32))
        for m in methods:
            out = [getattr(env, m)() for env in envs]
            assert_identical(out[0], out[1], f"{name}.{m}")
            shared = [any(np.shares_memory(o, getattr(env.data, f)) for f in
                          ("xpos", "xquat", "geom_xpos", "site_xpos")) for o, env in zip(out, envs, strict=True)]
            assert shared[0] == shared[1], f"{name}.{m}: a view in one and a copy in the other"
        if "_get_quat_objects" in methods:
            for env in envs:  # scaled: not a rotation to within scipy's tolerance
                env.data.geom_xmat[:] *= 1.01
                env.data.xmat[:] *= 1.01
                env.data.site_xmat[:] *= 1.01
            assert_identical(envs[0]._get_quat_objects(), envs[1]._get_quat_objects(), f"{name} scaled")
        for env in envs:
            env.close()
    assert resolved >= 50, resolved  # 39 + 17 with metaworld 3.0


def test_resolver_keeps_other_bodies():
    class Other:
        def _get_pos_objects(self):
            return self.data.geom("handle").xpos.copy()

        def _get_quat_objects(self):
            """A docstring does not count."""
            return self.data.body("obj").xquat

        def with_arg(self, name="obj"):
            return self.data.body(name).xquat

    assert mwf.resolve_lookups(Other._get_pos_objects) is None
    assert mwf.resolve_lookups(Other._get_quat_objects) is not None
    assert mwf.resolve_lookups(Other.with_arg) is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_step_matches_stock_on_unusual_actions(tmp_path, monkeypatch):
    """Actions off the common float32/float64 vector: NaN and infinities (handed to the
    numpy code), float16, int, a list, a tuple (never fused), views into other arrays;
    and the errors for a wrong size and a finished episode."""
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its instability warnings to MUJOCO_LOG.TXT here
    name = "reach-v3"
    envs = _pair(name)
    for env in envs:
        env.set_task(_task(name, 0, observable=False))
        env.reset()
    actions = [np.array([np.nan, 0.1, 0.2, 0.3]), np.array([0.1, 0.2, 0.3, np.nan], np.float32),
               np.array([np.inf, -np.inf, 0.5, -np.inf]), np.array([0.5, -0.25, 1, 0.125], np.float16),
               np.array([1, -1, 0, 1]), [0.2, -0.3, 0.4, 0.5], (0.1, 0.1, -0.1, -1.0),
               np.array([[0.1, 0.2, 0.3, 0.4]])[0], np.array([0.1, 0.2, 0.3, 0.4, 0.5])[::1][:4]]
    for t in range(40):
        action = actions[t % len(actions)]
        out = [env.step(action) for env in envs]
        assert_identical(out[0], out[1], f"step {t} {action!r}")
        for field in MJDATA_FIELDS:
            assert_identical(*(getattr(env.data, field) for env in envs), f"step {t} {field}")
        if np.isnan(out[0][0]).any():
            for env in envs:
                env.reset()
    for env in envs:
        with pytest.raises(AssertionError, match="size 4"):
            env.step(np.zeros(3, np.float32))
        env.curr_path_length = env.max_path_length
        with pytest.raises(ValueError, match="reset the env manually"):
            env.step(np.zeros(4, np.float32))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_set_xyz_action_matches_stock_on_edge_values():
    """The mocap update on Python floats: NaN, infinities, signed zeros, exactly +-1, far
    out of range, both float widths, a hand pushed against its bounds, and scales that
    are negative, zero, huge, infinite, NaN or below float32's range."""
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    name = "reach-v3"
    envs = _pair(name)
    for env in envs:
        env.set_task(_task(name, 0, observable=False))
        env.reset()
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1.0000001, -0.9999999, 7.5, -1e30, 1e-45]
    rng = np.random.default_rng(3)
    for k in range(600):
        action = rng.choice(specials, 3) if k % 3 else rng.uniform(-3, 3, 3)
        action = action.astype(np.float32 if k % 2 else np.float64)
        start = envs[0].data.mocap_pos.copy()
        if k % 50 == 0:  # one axis exactly at its upper or lower bound
            axis = k // 50 % 3
            start[0, axis] = (envs[0].mocap_high if k % 100 else envs[0].mocap_low)[axis]
        if k % 97 == 0:
            start[0, 1] = np.nan
        scale = [0.01, 0.01, 0.01, -0.02, 0.0, 1e300, np.inf, np.nan, 1e-40][k % 9]
        for env in envs:
            env.data.mocap_pos[:] = start
            env.data.mocap_quat[:] = 0.5
            env.action_scale = scale
        SawyerXYZEnv.set_xyz_action(envs[0], action.copy())
        envs[1].set_xyz_action(action.copy())
        for field in ("mocap_pos", "mocap_quat"):
            assert_identical(getattr(envs[0].data, field), getattr(envs[1].data, field), f"{action!r} {field}")
        if np.isnan(envs[0].data.mocap_pos).any():
            for env in envs:
                env.reset()


@pytest.mark.filterwarnings("ignore:Constant")
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "via-methods"])
def test_gripper_caging_reward_matches_stock_off_the_common_inputs(direct, monkeypatch):
    """The caging reward's fallback and flag branches, which the episodes above (float64
    vectors, one density flag) do not reach; also with the pads, tcp and norms taken
    through the methods (where get_body_com, tcp_center or the norm shim are not ours)."""
    name = "basketball-v3"
    if not direct:
        fast_cls = mwf.env_class(name, fast=True)
        monkeypatch.setattr(fast_cls, "_fast_body_com", False)
        monkeypatch.setattr(fast_cls, "_fast_tcp", False)
        tolerance, norm, _, hamacher = mwf._caging_helpers()
        monkeypatch.setattr(mwf, "_caging_helpers",
                            lambda: (tolerance, norm, lambda a, b: norm(np.array([a, b])), hamacher))
    envs = _pair(name)
    policy = ENV_POLICY_MAP[name]()
    for env in envs:  # the scripted policy, until it holds the ball: every factor non-zero
        env.set_task(_task(name, 0, observable=True))
        obs, _ = env.reset()
        for _ in range(60):
            obs = env.step(policy.get_action(obs).astype(np.float32))[0]
    action = np.array([0.1, 0.2, 0.3, 0.7], dtype=np.float32)
    obj = obs[4:7]
    checked = []
    for pos in (obj, obj.astype(np.float32), obj + 0.003):
        for flags in (dict(), dict(medium_density=True), dict(high_density=True),
                      dict(desired_gripper_effort=0.5)):
            for thresh in (0.06, 6):
                out = [env._gripper_caging_reward(action, pos, 0.025, thresh, 0.01, 0.01, **flags)
                       for env in envs]
                assert_identical(out[0], out[1], f"{pos.dtype} {flags} {thresh}")
                checked.append(out[0])
    assert min(checked) > 0 and len(set(checked)) > 10, checked
    for env in envs:
        with pytest.raises(TypeError):  # obj_pos[[0, 2]] on a list
            env._gripper_caging_reward(action, list(obj), 0.025, 0.06, 0.01, 0.01)
    for env in envs:
        with pytest.raises(ValueError, match="either high_density or medium_density"):
            env._gripper_caging_reward(action, obj, 0.025, 0.06, 0.01, 0.01,
                                       high_density=True, medium_density=True)
