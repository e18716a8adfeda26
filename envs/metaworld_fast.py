"""A faster, bit-identical step path for Meta-World's Sawyer environments.

Meta-World's ``step`` spends most of its time in Python around the physics: a list
comprehension over every contact (``touching_object``), scipy's ``Rotation.from_matrix``
for each object quaternion, ``np.hstack``/``np.split`` to build the observation, named
look-ups (``data.body("hand")``), and ``reward_utils.tolerance``/``np.linalg.norm`` on
scalars and 3-vectors. This module builds, for each stock env class, a subclass that

- replaces a few base-class methods (``SawyerXYZEnv`` / ``SawyerMocapBase`` /
  gymnasium's ``MujocoEnv``) with versions that do the same arithmetic with less Python:
  ids and numpy views of the MjData arrays made once, one pass over the contact pairs,
  the observation written into one array, the mocap update on Python floats, the MuJoCo
  calls of ``do_simulation`` made directly, and the target-site writes that the
  following ``mj_forward`` overwrites left out;
- runs the env's own methods unchanged but with their module globals ``Rotation``,
  ``reward_utils`` (``tolerance``) and ``np`` (``np.linalg.norm``) pointing at exact
  re-implementations (:class:`RotationShim`, :func:`make_tolerance`, :func:`make_norm`)
  that handle the common inputs and pass anything else to the stock function.

Every substitution performs the same floating-point operations in the same order as
the code it replaces, so observations, rewards and ``info`` are bit-for-bit those of
the stock classes, and so is the simulator state after each step
(``tests/test_metaworld_fast.py`` checks all 50 v3 environments over full episodes).
What was verified is pinned by source fingerprints (:data:`VERIFIED_BASE`,
:data:`VERIFIED_CLASSES`, :data:`VERIFIED_SCIPY`): a method, env class, helper or scipy
version that was not verified is left stock, and that is logged once.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# What was verified bit for bit (tests/test_metaworld_fast.py), by source fingerprint, in
# metaworld_fast_verified.json. After re-running those tests against a new metaworld or
# gymnasium, `python -m metarl.envs.metaworld_fast --write` records the installed sources.
# --------------------------------------------------------------------------------------

VERIFIED_SCIPY = ("1.17.",)
"""scipy versions whose ``Rotation.from_matrix`` (Cython backend) :func:`quat_from_matrix`
reproduces bit for bit; with any other scipy the stock ``Rotation`` is used."""

VERIFIED_FILE = Path(__file__).with_name("metaworld_fast_verified.json")
_verified = json.loads(VERIFIED_FILE.read_text()) if VERIFIED_FILE.exists() else {}

VERIFIED_BASE: dict[str, str] = _verified.get("base", {})
"""Fingerprint of each stock method that :class:`FastSawyerMixin` replaces."""

VERIFIED_CLASSES: dict[str, str] = _verified.get("classes", {})
"""Fingerprint of each verified env class (its own source)."""


def fingerprint(obj: Any) -> str | None:
    """A short hash of the source of ``obj`` (a class, function or property) and of any
    function a decorator closed over; None when the source cannot be read."""
    parts, todo = [], [obj.fget if isinstance(obj, property) else obj]
    while todo:
        f = todo.pop()
        try:
            parts.append(inspect.getsource(f))
        except (OSError, TypeError):
            return None
        todo += [c.cell_contents for c in getattr(f, "__closure__", None) or ()
                 if isinstance(c.cell_contents, types.FunctionType)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


_said: set[str] = set()


def _say_once(msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        log.info("metarl fast Meta-World: %s", msg)


# --------------------------------------------------------------------------------------
# Exact scalar re-implementations of the helpers the env code calls.
# --------------------------------------------------------------------------------------

_FLOATS = (float, np.float64)
_F64 = np.dtype(np.float64)
_NUMBERS = (float, int, np.float64)


def quat_from_matrix(m: list[list[float]]) -> list[float] | None:
    """scipy's ``Rotation.from_matrix(m).as_quat()`` for a 3x3 rotation, or None.

    Reproduces the Cython backend (scipy 1.17): Shepperd's method on the largest of the
    diagonal and the trace, then normalisation, with the same operations in the same
    order (so the same rounding). Returns None (use scipy) unless ``m`` passes scipy's
    determinant and orthogonality checks with a wide margin: near their thresholds
    scipy's own matmul/LU rounding decides, and it may orthogonalise with an SVD.
    """
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    if not det > 0.5:
        return None
    rows = ((a, b, c), (d, e, f), (g, h, i))
    for r in range(3):
        for s in range(r, 3):
            x, y = rows[r], rows[s]
            dot = x[0] * y[0] + x[1] * y[1] + x[2] * y[2]
            # scipy: isclose(gram, eye, atol=1e-12), i.e. 1e-12 + 1e-5 on the diagonal
            error, tol = (abs(dot - 1.0), 0.5e-5) if r == s else (abs(dot), 0.5e-12)
            if not error < tol:
                return None
    trace = a + e + i
    choice, best = 0, a
    if e > best:
        choice, best = 1, e
    if i > best:
        choice, best = 2, i
    if trace > best:
        choice = 3
    if choice == 0:
        q = [1 - trace + 2 * a, d + b, g + c, h - f]
    elif choice == 1:
        q = [b + d, 1 - trace + 2 * e, h + f, c - g]
    elif choice == 2:
        q = [c + g, f + h, 1 - trace + 2 * i, d - b]
    else:
        q = [h - f, c - g, d - b, 1 + trace]
    norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    if norm == 0:
        return None
    return [q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm]


class _Rotation:
    """A rotation made by :meth:`RotationShim.from_matrix`: ``as_quat()`` is exact and
    cheap; anything else is answered by a real scipy ``Rotation`` built from the same
    matrix."""

    __slots__ = ("_quat", "_matrix")

    def __init__(self, quat: list[float], matrix: np.ndarray) -> None:
        self._quat = quat
        self._matrix = matrix

    def as_quat(self, canonical: bool = False, *, scalar_first: bool = False) -> np.ndarray:
        if canonical or scalar_first:
            return self._scipy().as_quat(canonical=canonical, scalar_first=scalar_first)
        return np.array(self._quat)

    def _scipy(self) -> Any:
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(self._matrix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scipy(), name)


class RotationShim:
    """Stands in for ``scipy.spatial.transform.Rotation`` in the env modules' globals."""

    def __init__(self) -> None:
        from scipy.spatial.transform import Rotation

        self._stock = Rotation

    def from_matrix(self, matrix: Any, *, assume_valid: bool = False) -> Any:
        if (not assume_valid and type(matrix) is np.ndarray and matrix.shape == (3, 3)
                and matrix.dtype == np.float64):
            quat = quat_from_matrix(matrix.tolist())
            if quat is not None:
                return _Rotation(quat, matrix.copy())
        return self._stock.from_matrix(matrix, assume_valid=assume_valid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stock, name)


@functools.cache
def _sigmoid_scale(sigmoid: str, value_at_1: float) -> float:
    # The same expressions as reward_utils._sigmoids, evaluated once.
    if sigmoid == "long_tail":
        return float(np.sqrt(1 / value_at_1 - 1))
    return float(np.sqrt(-2 * np.log(value_at_1)))  # gaussian


def make_tolerance(stock: Callable[..., Any]) -> Callable[..., Any]:
    """``reward_utils.tolerance`` for a scalar ``x`` with a ``long_tail`` or ``gaussian``
    sigmoid, on Python floats; other inputs go to ``stock``.

    The stock version runs ``np.where`` on 0-d arrays; every arithmetic step there works
    on float64 scalars, whose ``+ - * /`` round like Python's and whose ``** 2`` calls the
    C ``pow`` as Python's does, and ``np.exp`` is still what computes the exponential.
    Where Python would raise (overflow) instead of returning inf, the stock path runs.
    """

    def tolerance(x: Any, bounds: tuple[float, float] = (0.0, 0.0), margin: Any = 0.0,
                  sigmoid: str = "gaussian", value_at_margin: float = 0.1) -> Any:
        lower, upper = bounds
        if (type(x) not in _FLOATS or type(margin) not in _NUMBERS or type(lower) not in _NUMBERS
                or type(upper) not in _NUMBERS or sigmoid not in ("long_tail", "gaussian")
                or type(value_at_margin) not in _FLOATS or not 0 < value_at_margin < 1
                or margin < 0 or lower > upper):
            return stock(x, bounds=bounds, margin=margin, sigmoid=sigmoid,
                         value_at_margin=value_at_margin)
        in_bounds = lower <= x and x <= upper
        if margin == 0:
            return 1.0 if in_bounds else 0.0
        if in_bounds:
            return 1.0
        try:
            d = float((lower - x if x < lower else x - upper) / margin)
            scale = _sigmoid_scale(sigmoid, float(value_at_margin))
            if sigmoid == "long_tail":
                return 1 / ((d * scale) ** 2 + 1)
            return float(np.exp(-0.5 * (d * scale) ** 2))
        except (OverflowError, ZeroDivisionError):
            return stock(x, bounds=bounds, margin=margin, sigmoid=sigmoid,
                         value_at_margin=value_at_margin)

    tolerance.__doc__ = stock.__doc__
    return tolerance


def make_norm(stock: Callable[..., Any]) -> Callable[..., Any]:
    """``np.linalg.norm`` for a float64 array or scalar with the default order and no
    axis: the branch numpy itself takes there (``sqrt(x.dot(x))`` of the raveled array),
    without its argument handling; anything else goes to ``stock``."""

    def norm(x: Any, ord: Any = None, axis: Any = None, keepdims: bool = False) -> Any:
        if axis is None and not keepdims:
            if (type(x) is np.ndarray and (x.dtype is _F64 or x.dtype == np.float64)
                    and (ord is None or (ord == 2 and x.ndim == 1))):
                x = x.ravel(order="K")
                return np.sqrt(x.dot(x))
            if type(x) in _FLOATS and ord is None:  # a one-element dot product: x * x
                x = np.float64(x)
                return np.sqrt(x * x)
        return stock(x, ord=ord, axis=axis, keepdims=keepdims)

    norm.__doc__ = stock.__doc__
    return norm


def _module_copy(module: types.ModuleType, **replace: Any) -> types.ModuleType:
    copy = types.ModuleType(module.__name__, module.__doc__)
    copy.__dict__.update({k: v for k, v in vars(module).items() if k not in ("__name__", "__doc__")})
    copy.__dict__.update(replace)
    return copy


@functools.cache
def _shims() -> dict[int, Any]:
    """id(stock object) -> its stand-in, for re-binding env module globals."""
    import scipy
    from metaworld.utils import reward_utils
    from scipy.spatial.transform import Rotation

    shims: dict[int, Any] = {}
    helpers = _stock_helpers()
    if _verified_helper("tolerance", helpers):
        tolerance = make_tolerance(reward_utils.tolerance)
        shims[id(reward_utils)] = _module_copy(reward_utils, tolerance=tolerance)
        shims[id(reward_utils.tolerance)] = tolerance
    if _verified_helper("norm", helpers):
        shims[id(np)] = _module_copy(np, linalg=_module_copy(np.linalg, norm=make_norm(np.linalg.norm)))
    if scipy.__version__.startswith(VERIFIED_SCIPY):
        shims[id(Rotation)] = RotationShim()
    else:
        _say_once(f"scipy {scipy.__version__} is not one whose Rotation.from_matrix was verified "
                  f"({', '.join(v + '*' for v in VERIFIED_SCIPY)}); using scipy's")
    return shims


def _stock_helpers() -> dict[str, tuple[str, Any]]:
    """The stock functions the shims reproduce: name -> (qualified name, function)."""
    from metaworld.utils import reward_utils

    return {"tolerance": ("metaworld.utils.reward_utils.tolerance", reward_utils.tolerance),
            "sigmoids": ("metaworld.utils.reward_utils._sigmoids", reward_utils._sigmoids),
            "norm": ("numpy.linalg.norm", np.linalg.norm)}


def _verified_helper(name: str, helpers: dict[str, tuple[str, Any]]) -> bool:
    keys = [helpers[name]] + ([helpers["sigmoids"]] if name == "tolerance" else [])
    for key, func in keys:
        if VERIFIED_BASE.get(key) != fingerprint(func):
            _say_once(f"{key} differs from the verified source; the env code keeps calling it")
            return False
    return True


class _Rebinder:
    """Copies of one stock class's functions whose module globals point at the shims
    (and the class's own name at the fast class, for ``Cls._static(...)`` calls)."""

    def __init__(self, stock: type) -> None:
        self.stock = stock
        self.globals: dict[int, dict[str, Any] | None] = {}

    def module_globals(self, g: dict[str, Any]) -> dict[str, Any] | None:
        if id(g) not in self.globals:
            shims = _shims()
            hits = {k: shims[id(v)] for k, v in g.items() if id(v) in shims}
            self.globals[id(g)] = {**g, **hits} if hits else None
        return self.globals[id(g)]

    def point_name_at(self, fast: type) -> None:
        for g in self.globals.values():
            if g is not None and g.get(self.stock.__name__) is self.stock:
                g[self.stock.__name__] = fast

    def __call__(self, f: Any) -> Any:
        """``f`` (a function, possibly wrapping one in a closure, a property, static or
        class method) on shimmed globals; ``f`` itself when it uses none of them."""
        if isinstance(f, property):
            fget = self(f.fget)
            return f if fget is f.fget else property(fget, f.fset, f.fdel, f.__doc__)
        if isinstance(f, (staticmethod, classmethod)):
            inner = self(f.__func__)
            return f if inner is f.__func__ else type(f)(inner)
        if not isinstance(f, types.FunctionType):
            return f
        closure = f.__closure__
        if closure:
            cells = tuple(types.CellType(self(c.cell_contents))
                          if isinstance(c.cell_contents, types.FunctionType) else c for c in closure)
            if any(n is not o for n, o in zip(cells, closure, strict=True)):
                closure = cells
        g = self.module_globals(f.__globals__)
        if g is None and closure is f.__closure__:
            return f
        new = types.FunctionType(f.__code__, g if g is not None else f.__globals__, f.__name__,
                                 f.__defaults__, closure)
        new.__kwdefaults__ = f.__kwdefaults__
        new.__dict__.update(f.__dict__)
        new.__qualname__, new.__doc__, new.__module__ = f.__qualname__, f.__doc__, f.__module__
        return new


# --------------------------------------------------------------------------------------
# Base-class methods, redone with less Python.
# --------------------------------------------------------------------------------------


_BODY, _SITE, _GEOM = mujoco.mjtObj.mjOBJ_BODY, mujoco.mjtObj.mjOBJ_SITE, mujoco.mjtObj.mjOBJ_GEOM


class _Ids(dict):
    """name -> MuJoCo id of one object type, looked up on first use."""

    def __init__(self, model: Any, objtype: Any) -> None:
        super().__init__()
        self.model, self.objtype = model, objtype

    def __missing__(self, name: str) -> int:
        i = mujoco.mj_name2id(self.model, self.objtype, name)
        if i < 0:
            raise KeyError(f"Invalid name '{name}'.")
        self[name] = i
        return i


_MOCAP_QUAT = np.array([1, 0, 1, 0])  # what set_xyz_action writes (copied into data)
_MOCAP_QUAT_ROW = _MOCAP_QUAT[None].astype(np.float64)  # the same, for the one-mocap view
_ZEROS3 = np.zeros(3)
_GRIP_TYPES = (np.float32, np.float64, float)
_F32_F64 = (np.dtype(np.float32), np.dtype(np.float64))

_ID_TABLES = {"_fast_body": _BODY, "_fast_site": _SITE, "_fast_geom": _GEOM}

# np.clip(a, lo, hi) on a float array ends in this ufunc call; calling it directly skips
# ~3 us of argument handling per call.
_clip_ufunc = getattr(getattr(getattr(np, "_core", None), "umath", None), "clip", None)


def _clip(a: Any, lo: Any, hi: Any, **kwargs: Any) -> Any:
    """``np.clip(a, lo, hi, **kwargs)``."""
    if _clip_ufunc is not None and type(a) is np.ndarray and a.dtype.kind == "f":
        return _clip_ufunc(a, lo, hi, **kwargs)
    return np.clip(a, lo, hi, **kwargs)


@functools.cache
def _scale_bound(dtype: np.dtype, scale: float) -> float:
    """``1 * scale`` as numpy computes it for an action array of ``dtype``."""
    return float((np.ones(1, dtype) * scale)[0])


class _Rows(dict):
    """name -> the row of one (n, 3) position array of an MjData (a view), found on
    first use."""

    def __init__(self, array: np.ndarray, ids: _Ids) -> None:
        super().__init__()
        self.array, self.ids = array, ids

    def __missing__(self, name: str) -> np.ndarray:
        row = self[name] = self.array[self.ids[name]]
        return row


class _Views:
    """Numpy views of one MjData's arrays, made once: MuJoCo never moves them, and each
    ``data.xpos`` would build a new array object."""

    __slots__ = ("data", "body_xpos", "site_xpos", "mocap_pos", "mocap_quat", "ctrl")

    def __init__(self, data: Any, env: Any = None) -> None:
        self.data = data
        if data is not None:
            self.body_xpos = _Rows(data.xpos, env._fast_body)
            self.site_xpos = _Rows(data.site_xpos, env._fast_site)
            self.mocap_pos, self.mocap_quat, self.ctrl = data.mocap_pos, data.mocap_quat, data.ctrl

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickled or deep-copied env has a new MjData: its views are made anew.
        return (_Views, (None,))


class FastSawyerMixin:
    """Drop-in bodies for stock methods; each is used only where the env class inherits
    the verified stock method (see :func:`fast_class`)."""

    _fast_direct_sim = False
    """Set by :func:`fast_class` where ``do_simulation`` and ``_step_mujoco_simulation``
    are the verified stock ones, so ``step`` may make their MuJoCo calls itself."""

    _fast_obs_fused = False
    """Set by :func:`fast_class` where ``_get_curr_obs_combined_no_goal`` is ours:
    ``_get_obs`` then writes it straight into the observation."""

    _fast_sites_skip = False
    """Set by :func:`fast_class` where ``_set_pos_site`` is the verified stock one: its
    writes to ``data.site_xpos`` in ``step`` are overwritten by the ``mj_forward`` that
    follows (``mj_kinematics`` recomputes every site), so ``step`` only checks what its
    asserts check."""

    def __getattr__(self, name: str) -> Any:
        # Id tables and views are made on first use: the stock __init__ already calls the
        # methods below before any code of ours could run.
        if name in _ID_TABLES:
            table = self.__dict__[name] = _Ids(self.model, _ID_TABLES[name])
            return table
        if name == "_fast_views":
            return self._fast_new_views()
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _fast_new_views(self) -> _Views:
        views = self.__dict__["_fast_views"] = _Views(self.data, self)
        return views

    # gymnasium MujocoEnv.get_body_com
    def get_body_com(self, body_name: str) -> np.ndarray:
        v = self._fast_views
        if v.data is not self.data:
            v = self._fast_new_views()
        return v.body_xpos[body_name]

    # SawyerMocapBase.get_endeff_pos
    def get_endeff_pos(self) -> np.ndarray:
        v = self._fast_views
        if v.data is not self.data:
            v = self._fast_new_views()
        return v.body_xpos["hand"]

    # SawyerMocapBase.tcp_center
    @property
    def tcp_center(self) -> np.ndarray:
        v = self._fast_views
        if v.data is not self.data:
            v = self._fast_new_views()
        site = v.site_xpos
        return (site["rightEndEffector"] + site["leftEndEffector"]) / 2.0

    # SawyerXYZEnv.step
    def step(self, action: np.ndarray) -> tuple[np.ndarray, Any, bool, bool, dict[str, Any]]:
        if not self._set_task_called:  # SawyerXYZEnv._Decorators.assert_task_is_set
            raise RuntimeError("You must call env.set_task before using env.step")
        assert len(action) == 4, f"Actions should be size 4, got {len(action)}"
        self.set_xyz_action(action[:3])
        if self.curr_path_length >= self.max_path_length:
            raise ValueError("You must reset the env manually once truncate==True")
        grip = action[-1]
        model, data = self.model, self.data
        if self._fast_direct_sim and type(grip) in _GRIP_TYPES and model.nu == 2:
            # MujocoEnv.do_simulation + _step_mujoco_simulation, minus the shape check
            # that a scalar grip and nu == 2 already pass.
            v = self._fast_views
            if v.data is not data:
                v = self._fast_new_views()
            ctrl = v.ctrl
            ctrl[0] = grip
            ctrl[1] = -grip
            mujoco.mj_step(model, data, nstep=self.frame_skip)
            mujoco.mj_rnePostConstraint(model, data)
        else:
            self.do_simulation([grip, -grip], n_frames=self.frame_skip)
        self.curr_path_length += 1
        if self._did_see_sim_exception:
            for site in self._target_site_config:
                self._set_pos_site(*site)
            assert self._last_stable_obs is not None
            return self._last_stable_obs, 0.0, False, False, {
                "success": False, "near_object": 0.0, "grasp_success": False,
                "grasp_reward": 0.0, "in_place_reward": 0.0, "obj_to_target": 0.0,
                "unscaled_reward": 0.0}
        if self._fast_sites_skip:
            sites = self._fast_site
            for site in self._target_site_config:
                if not (type(site) is tuple and len(site) == 2 and type(site[0]) is str
                        and site[0] in sites and isinstance(site[1], np.ndarray)
                        and site[1].ndim == 1 and site[1].shape[0] >= 3):
                    self._set_pos_site(*site)  # resolves the name, or raises as stock does
        else:
            for site in self._target_site_config:
                self._set_pos_site(*site)
        mujoco.mj_forward(model, data)
        obs = self._get_obs()
        space = self.sawyer_observation_space
        obs = self._last_stable_obs = _clip(obs, space.low, space.high, dtype=np.float64)
        reward, info = self.evaluate_state(obs, action)
        truncate = self.curr_path_length == self.max_path_length
        return np.array(obs, dtype=np.float64), reward, False, truncate, info

    # SawyerXYZEnv.set_xyz_action
    def set_xyz_action(self, action: np.ndarray) -> None:
        v = self._fast_views
        if v.data is not self.data:
            v = self._fast_new_views()
        mocap_pos, scale, low, high = v.mocap_pos, self.action_scale, self.mocap_low, self.mocap_high
        if (type(action) is np.ndarray and action.shape == (3,) and action.dtype in _F32_F64
                and type(scale) is float and scale > 0 and mocap_pos.shape == (1, 3)
                and type(low) is np.ndarray and low.shape == (3,) and low.dtype in _F32_F64
                and type(high) is np.ndarray and high.shape == (3,) and high.dtype in _F32_F64):
            # clip(action, -1, 1) * scale is clip(action * scale, -b, b) with b = 1 * scale
            # in the action's dtype (rounding is monotone, and exact at +-1): one numpy
            # operation, then the float64 rest on Python floats. Without NaNs, numpy's
            # clip (t = x if x > lo else lo; t if t < hi else hi) is Python's
            # min(hi, max(lo, x)): both keep the bound unless x is strictly inside.
            b = _scale_bound(action.dtype, scale)
            dx, dy, dz = (action * scale).tolist()
            x, y, z = mocap_pos[0].tolist()
            if dx == dx and dy == dy and dz == dz and x == x and y == y and z == z:
                lx, ly, lz = low.tolist()
                hx, hy, hz = high.tolist()
                mocap_pos[0] = (min(hx, max(lx, x + min(b, max(-b, dx)))),
                                min(hy, max(ly, y + min(b, max(-b, dy)))),
                                min(hz, max(lz, z + min(b, max(-b, dz)))))
                v.mocap_quat[...] = _MOCAP_QUAT_ROW
                return
        action = _clip(action, -1, 1)
        pos_delta = action * scale
        new_mocap_pos = mocap_pos + pos_delta[None]
        new_mocap_pos[0, :] = _clip(new_mocap_pos[0, :], low, high)
        self.data.mocap_pos = new_mocap_pos
        self.data.mocap_quat = _MOCAP_QUAT

    # SawyerXYZEnv._gripper_caging_reward
    def _gripper_caging_reward(self, action: Any, obj_pos: Any, obj_radius: float,
                               pad_success_thresh: float, object_reach_radius: float,
                               xz_thresh: float, desired_gripper_effort: float = 1.0,
                               high_density: bool = False, medium_density: bool = False) -> float:
        init, init_tcp = self.obj_init_pos, self.init_tcp
        if not (_is_vec3(obj_pos) and _is_vec3(init) and _is_vec3(init_tcp)
                and type(pad_success_thresh) is float):
            return _stock_caging(self, action, obj_pos, obj_radius, pad_success_thresh,
                                 object_reach_radius, xz_thresh, desired_gripper_effort,
                                 high_density, medium_density)
        if high_density and medium_density:
            raise ValueError("Can only be either high_density or medium_density")
        tolerance, norm, hamacher = _caging_helpers()
        # np.hstack of the pads' y, then np.abs of differences: the same float64 operations
        # element by element, on Python floats; tolerance gets the np.float64 elements.
        left_y = self.get_body_com("leftpad").item(1)
        right_y = self.get_body_com("rightpad").item(1)
        obj_y, init_y = obj_pos.item(1), init.item(1)
        caging_lr = [
            tolerance(np.float64(abs(pad_y - obj_y)), bounds=(obj_radius, pad_success_thresh),
                      margin=np.float64(abs(abs(pad_y - init_y) - pad_success_thresh)),
                      sigmoid="long_tail")
            for pad_y in (left_y, right_y)
        ]
        caging_y = hamacher(*caging_lr)
        tcp = self.tcp_center
        # a[[0, 2]] - b[[0, 2]], built from the same two differences
        i0, _, i2 = init.tolist()
        t0, _, t2 = init_tcp.tolist()
        caging_xz_margin = norm(np.array([i0 - t0, i2 - t2]))
        caging_xz_margin -= xz_thresh
        o0, _, o2 = obj_pos.tolist()
        if _is_vec3(tcp):
            c0, _, c2 = tcp.tolist()
            tcp_to_obj_xz = norm(np.array([c0 - o0, c2 - o2]))
        else:
            tcp_to_obj_xz = norm(tcp[[0, 2]] - obj_pos[[0, 2]])
        caging_xz = tolerance(tcp_to_obj_xz, bounds=(0, xz_thresh), margin=caging_xz_margin,
                              sigmoid="long_tail")
        gripper_closed = min(max(0, action[-1]), desired_gripper_effort) / desired_gripper_effort
        caging = hamacher(caging_y, float(caging_xz))
        gripping = gripper_closed if caging > 0.97 else 0.0
        caging_and_gripping = hamacher(caging, gripping)
        if high_density:
            caging_and_gripping = (caging_and_gripping + caging) / 2
        if medium_density:  # as stock
            tcp = self.tcp_center
            tcp_to_obj = norm(obj_pos - tcp)
            tcp_to_obj_init = norm(init - init_tcp)
            reach_margin = abs(tcp_to_obj_init - object_reach_radius)
            reach = tolerance(tcp_to_obj, bounds=(0, object_reach_radius), margin=reach_margin,
                              sigmoid="long_tail")
            caging_and_gripping = (caging_and_gripping + float(reach)) / 2
        return caging_and_gripping

    # SawyerXYZEnv._get_site_pos
    def _get_site_pos(self, site_name: str) -> np.ndarray:
        v = self._fast_views
        if v.data is not self.data:
            v = self._fast_new_views()
        return v.site_xpos[site_name].copy()

    # SawyerXYZEnv._set_pos_site
    def _set_pos_site(self, name: str, pos: np.ndarray) -> None:
        assert isinstance(pos, np.ndarray)
        assert pos.ndim == 1
        self.data.site_xpos[self._fast_site[name]] = pos[:3]

    # SawyerXYZEnv.touching_object
    def touching_object(self, object_geom_id: int) -> bool:
        data = self.data
        if data.ncon == 0:
            return False
        contact = data.contact
        left_id, right_id = self._fast_geom["leftpad_geom"], self._fast_geom["rightpad_geom"]
        # The stock sums: Python's sum() from int 0 over float64 scalars, each pad's
        # contacts in contact order, efc_force[-1] for a contact without constraint rows.
        left = right = 0
        address = efc_force = None
        for k, (g1, g2) in enumerate(contact.geom.tolist()):
            if g1 != object_geom_id and g2 != object_geom_id:
                continue
            if address is None:
                address, efc_force = contact.efc_address, data.efc_force
            if g1 == left_id or g2 == left_id:
                left = left + efc_force[address[k]]
            if g1 == right_id or g2 == right_id:
                right = right + efc_force[address[k]]
        return 0 < left and 0 < right

    # SawyerXYZEnv._get_curr_obs_combined_no_goal
    def _get_curr_obs_combined_no_goal(self) -> np.ndarray:
        out = np.empty(4 + self._obs_obj_max_len)
        if self._fast_fill_curr_obs(out):
            return out
        return _stock_curr_obs(self)  # its asserts and errors, unchanged

    def _fast_fill_curr_obs(self, out: np.ndarray) -> bool:
        """Writes what ``_get_curr_obs_combined_no_goal`` returns into ``out[:n]``; False
        (``out`` unused) for object arrays the stock code would reject."""
        pos_hand = self.get_endeff_pos()
        v = self._fast_views
        if v.data is not self.data:
            v = self._fast_new_views()
        body = v.body_xpos
        apart = body["rightclaw"] - body["leftclaw"]
        # np.linalg.norm of a 1-D float vector is sqrt(x.dot(x)); np.clip(., 0.0, 1.0)
        gripper = min(max(math.sqrt(apart.dot(apart)) / 0.1, 0.0), 1.0)
        obj_pos = self._get_pos_objects()
        obj_quat = self._get_quat_objects()
        n_pos, n_quat, n = len(obj_pos), len(obj_quat), 4 + self._obs_obj_max_len
        if (n_pos == 0 or n_pos % 3 or n_quat % 4 or n_pos // 3 != n_quat // 4
                or n_pos + n_quat > n - 4):
            return False
        out[0:3] = pos_hand
        out[3] = gripper
        if n_pos == 3:
            out[4:7] = obj_pos
            out[7:11] = obj_quat
            k = 11
        else:
            k = 4
            for j in range(n_pos // 3):
                out[k:k + 3] = obj_pos[3 * j:3 * j + 3]
                out[k + 3:k + 7] = obj_quat[4 * j:4 * j + 4]
                k += 7
        out[k:n] = 0.0
        return True

    # SawyerXYZEnv._get_obs
    def _get_obs(self) -> np.ndarray:
        pos_goal = self._get_pos_goal()
        prev_obs = self._prev_obs
        if (self._fast_obs_fused and type(prev_obs) is np.ndarray and prev_obs.ndim == 1
                and prev_obs.dtype in _F32_F64 and type(pos_goal) is np.ndarray
                and pos_goal.ndim == 1 and pos_goal.dtype in _F32_F64):
            # np.hstack((curr_obs, prev_obs, pos_goal)) of float64/float32 vectors, with
            # curr_obs written in place: one array instead of two and a concatenation.
            n, m = 4 + self._obs_obj_max_len, len(prev_obs)
            obs = np.empty(n + m + len(pos_goal))
            if self._fast_fill_curr_obs(obs):
                obs[n:n + m] = prev_obs
                obs[n + m:] = 0.0 if self._partially_observable else pos_goal
                self._prev_obs = obs[:n].copy()
                return obs
        curr_obs = self._get_curr_obs_combined_no_goal()
        if self._partially_observable:
            # np.zeros_like(pos_goal): whatever its dtype, it joins float arrays as 0.0
            pos_goal = _ZEROS3 if np.shape(pos_goal) == (3,) else np.zeros_like(pos_goal)
        if (type(curr_obs) is np.ndarray and type(prev_obs) is np.ndarray and curr_obs.ndim == 1
                and prev_obs.ndim == 1 and type(pos_goal) is np.ndarray and pos_goal.ndim == 1):
            obs = np.concatenate((curr_obs, prev_obs, pos_goal))
        else:
            obs = np.hstack((curr_obs, prev_obs, pos_goal))
        self._prev_obs = curr_obs
        return obs


def _stock_curr_obs(self: Any) -> np.ndarray:
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    return SawyerXYZEnv._get_curr_obs_combined_no_goal(self)


def _is_vec3(x: Any) -> bool:
    """A float64 3-vector (dtype compared by number: unpickled task data carries its own
    float64 dtype instance)."""
    return type(x) is np.ndarray and x.shape == (3,) and x.dtype.num == _F64.num


def _stock_caging(self: Any, *args: Any) -> float:
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    return _rebound_stock_caging(SawyerXYZEnv._gripper_caging_reward)(self, *args)


@functools.cache
def _rebound_stock_caging(stock: Callable[..., Any]) -> Callable[..., Any]:
    """The stock method on the same shims as the env code around it."""
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    return _Rebinder(SawyerXYZEnv)(stock)


@functools.cache
def _caging_helpers() -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """tolerance, norm and hamacher_product as the stock method sees them (shims where
    verified)."""
    from metaworld.utils import reward_utils

    shims = _shims()
    tolerance = shims.get(id(reward_utils.tolerance), reward_utils.tolerance)
    norm = shims[id(np)].linalg.norm if id(np) in shims else np.linalg.norm
    return tolerance, norm, reward_utils.hamacher_product


@functools.cache
def _stock_bases() -> dict[str, tuple[str, Any]]:
    """name -> (qualified name, stock definition) of each method FastSawyerMixin replaces,
    and of the two whose work ``step`` does itself (see ``_fast_direct_sim``)."""
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    from metaworld.sawyer_xyz_env import SawyerMocapBase, SawyerXYZEnv

    owners = {"get_body_com": MujocoEnv, "get_endeff_pos": SawyerMocapBase,
              "tcp_center": SawyerMocapBase, **dict.fromkeys(_DIRECT_SIM, MujocoEnv)}
    names = [k for k, v in vars(FastSawyerMixin).items()
             if isinstance(v, (types.FunctionType, property)) and not k.startswith(("__", "_fast"))]
    bases = {}
    for name in names + list(_DIRECT_SIM):
        owner = owners.get(name, SawyerXYZEnv)
        bases[name] = (f"{owner.__module__}.{owner.__qualname__}.{name}", vars(owner).get(name))
    return bases


_DIRECT_SIM = ("do_simulation", "_step_mujoco_simulation")


def current_fingerprints() -> dict[str, dict[str, str | None]]:
    """Fingerprints of the installed stock code this module depends on."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    base = {key: fingerprint(v) for key, v in [*_stock_bases().values(), *_stock_helpers().values()]}
    classes = {cls.__name__: fingerprint(cls) for cls in ALL_V3_ENVIRONMENTS.values()}
    return {"base": base, "classes": classes}


def _lookup(cls: type, name: str) -> Any:
    """The attribute ``name`` as ``cls`` resolves it (no descriptor binding); None if absent."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


_fast_classes: dict[type, type | None] = {}


def fast_class(stock: type) -> type | None:
    """The fast subclass of a Meta-World env class, or None when the class's source is
    not one that was verified. Within a fast class, each replaced base method and each
    shim is used only where its stock counterpart was verified (and not overridden)."""
    if stock in _fast_classes:
        return _fast_classes[stock]
    fast = None
    if VERIFIED_CLASSES.get(stock.__name__) != fingerprint(stock) or hasattr(stock, "__getattr__"):
        _say_once(f"{stock.__name__} differs from the verified source; using the stock class")
    else:
        ns: dict[str, Any] = {}
        direct_sim = True
        for name, (key, base) in _stock_bases().items():
            if base is None or VERIFIED_BASE.get(key) != fingerprint(base):
                _say_once(f"{key} differs from the verified source; keeping it")
                usable = False
            else:
                usable = _lookup(stock, name) is base  # not overridden by the env class
            if name in _DIRECT_SIM:
                direct_sim = direct_sim and usable
            elif usable:
                ns[name] = vars(FastSawyerMixin)[name]
        ns["_fast_direct_sim"] = direct_sim
        ns["_fast_sites_skip"] = "_set_pos_site" in ns
        ns["_fast_obs_fused"] = "_get_curr_obs_combined_no_goal" in ns
        rebound = _Rebinder(stock)
        for klass in stock.__mro__:
            if not klass.__module__.startswith("metaworld."):
                continue
            for name, attr in vars(klass).items():
                if name in ns or _lookup(stock, name) is not attr:
                    continue
                new = rebound(attr)
                if new is not attr:
                    ns[name] = new
        ns["__getattr__"] = FastSawyerMixin.__getattr__  # the id tables and views
        ns["_fast_new_views"] = FastSawyerMixin._fast_new_views
        ns["_fast_fill_curr_obs"] = FastSawyerMixin._fast_fill_curr_obs
        ns["__module__"] = __name__
        ns["__qualname__"] = f"Fast{stock.__name__}"
        ns["__doc__"] = f"{stock.__name__} on metarl's bit-identical fast step path."
        fast = type(stock.__name__, (stock,), ns)  # same __name__: envs record it as task_name
        rebound.point_name_at(fast)
    _fast_classes[stock] = fast
    return fast


def __getattr__(name: str) -> type:
    """Lets pickle find ``FastSawyer...`` classes by their qualified name."""
    if name.startswith("Fast"):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        for stock in ALL_V3_ENVIRONMENTS.values():
            if f"Fast{stock.__name__}" == name:
                cls = fast_class(stock)
                if cls is not None:
                    return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def env_class(env_name: str, fast: bool) -> type:
    """The class to instantiate for ``env_name`` (a Meta-World v3 name)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    stock = ALL_V3_ENVIRONMENTS[env_name]
    if not fast:
        return stock
    return fast_class(stock) or stock


def _main() -> None:
    import argparse
    from importlib.metadata import version

    ap = argparse.ArgumentParser(description="Fingerprints of the stock Meta-World code the "
                                 "fast step path replaces or re-binds.")
    ap.add_argument("--write", action="store_true",
                    help=f"record them as verified in {VERIFIED_FILE.name} (run the "
                    "equivalence tests first)")
    args = ap.parse_args()
    table = {"versions": {p: version(p) for p in ("metaworld", "gymnasium", "mujoco", "scipy", "numpy")},
             **current_fingerprints()}
    text = json.dumps(table, indent=1, sort_keys=True) + "\n"
    if args.write:
        VERIFIED_FILE.write_text(text)
        print(f"wrote {VERIFIED_FILE}")
    else:
        print(text, end="")


if __name__ == "__main__":
    _main()
