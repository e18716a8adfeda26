"""A faster, bit-identical step path for Meta-World's Sawyer environments.

Meta-World's ``step`` spends most of its time in Python around the physics: a list
comprehension over every contact (``touching_object``), scipy's ``Rotation.from_matrix``
for each object quaternion, ``np.hstack``/``np.split`` to build the observation, named
look-ups (``data.body("hand")``), and ``reward_utils.tolerance``/``np.linalg.norm`` on
scalars and 3-vectors. This module builds, for each stock env class, a subclass that

- replaces a few base-class methods (``SawyerXYZEnv`` / ``SawyerMocapBase`` /
  gymnasium's ``MujocoEnv``) with versions that do the same arithmetic with less Python:
  ids and numpy views of the MjData arrays made once, one pass over the contact pairs,
  the observation written into one array, the action read once and the mocap update
  on Python floats, the MuJoCo calls of ``do_simulation`` made directly, and the
  target-site writes that the following ``mj_forward`` overwrites left out;
- where an env's ``_get_pos_objects``/``_get_quat_objects`` is a single named look-up
  (``self.data.body("obj").xquat`` and the like), resolves the name once
  (:func:`resolve_lookups`);
- runs the env's own methods unchanged but with their module globals ``Rotation``,
  ``reward_utils`` (``tolerance``, ``hamacher_product``) and ``np`` (``np.linalg.norm``)
  pointing at exact re-implementations (:class:`RotationShim`, :func:`make_tolerance`,
  :func:`make_hamacher_product`, :func:`make_norm`) that handle the common inputs and
  pass anything else to the stock function.

Every substitution performs the same floating-point operations in the same order as
the code it replaces, so observations, rewards and ``info`` are bit-for-bit those of
the stock classes, and so is the simulator state after each step
(``tests/test_metaworld_fast.py``'s slow tests check all 50 v3 environments over full episodes).
What was verified is pinned by source fingerprints (:data:`VERIFIED_BASE`,
:data:`VERIFIED_CLASSES`, :data:`VERIFIED_SCIPY`): a method, env class, helper or scipy
version that was not verified is left stock, and that is logged once. Two things are
checked on the installed code instead: the method bodies :func:`resolve_lookups`
rewrites (matched on their source) and whether numpy's dot product of a 3-vector is a
sequential sum on this machine's BLAS (:func:`dot_is_sequential`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import logging
import math
import re
import struct
import textwrap
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
    The comparisons are made on the arguments as given, as the stock code makes them.
    The sigmoid's scale is computed once per ``value_at_margin``. Where Python would
    raise (overflow) instead of returning inf, the stock path runs.
    """

    scales: dict[str, dict[float, float]] = {"long_tail": {}, "gaussian": {}}

    def slow(x: Any, bounds: Any, margin: Any, sigmoid: Any, value_at_margin: Any) -> Any:
        return stock(x, bounds=bounds, margin=margin, sigmoid=sigmoid, value_at_margin=value_at_margin)

    def tolerance(x: Any, bounds: tuple[float, float] = (0.0, 0.0), margin: Any = 0.0,
                  sigmoid: str = "gaussian", value_at_margin: float = 0.1) -> Any:
        lower, upper = bounds
        tx = type(x)
        table = scales.get(sigmoid) if type(sigmoid) is str else None
        if (table is None or not (tx is float or tx is np.float64) or type(margin) not in _NUMBERS
                or type(lower) not in _NUMBERS or type(upper) not in _NUMBERS
                or type(value_at_margin) not in _FLOATS):
            return slow(x, bounds, margin, sigmoid, value_at_margin)
        scale = table.get(value_at_margin)
        if scale is None:
            if not 0 < value_at_margin < 1:
                return slow(x, bounds, margin, sigmoid, value_at_margin)  # its ValueError
            scale = table[value_at_margin] = _sigmoid_scale(sigmoid, float(value_at_margin))
        # The comparisons on the objects as given, as stock makes them (a Python float
        # and an int compare exactly; an np.float64 converts the int); the arithmetic
        # on float64, which is what numpy and Python both do with these.
        if margin < 0 or lower > upper:
            return slow(x, bounds, margin, sigmoid, value_at_margin)  # its ValueError
        in_bounds = lower <= x and x <= upper
        if margin == 0:
            return 1.0 if in_bounds else 0.0
        if in_bounds:
            return 1.0
        try:
            if x < lower:
                d = (float(lower) - float(x)) / float(margin)
            else:
                d = (float(x) - float(upper)) / float(margin)
            if sigmoid == "long_tail":
                return 1 / ((d * scale) ** 2 + 1)
            return float(np.exp(-0.5 * (d * scale) ** 2))
        except OverflowError:  # an int beyond float64, or a square past it: numpy gives inf
            return slow(x, bounds, margin, sigmoid, value_at_margin)

    tolerance.__doc__ = stock.__doc__
    return tolerance


def make_hamacher_product(stock: Callable[..., Any]) -> Callable[..., Any]:
    """``reward_utils.hamacher_product`` for two floats (Python or np.float64) in [0, 1],
    on Python floats: the same operations in the same order, and the result an np.float64
    where either argument is one, as numpy's scalar arithmetic gives; anything else, and
    every input that would raise, goes to ``stock``."""

    def hamacher_product(a: Any, b: Any) -> Any:
        ta, tb = type(a), type(b)
        if (ta is float or ta is np.float64) and (tb is float or tb is np.float64):
            x, y = float(a), float(b)
            if 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0:
                denominator = x + y - (x * y)
                if not denominator > 0:
                    return 0
                h = (x * y) / denominator
                if 0.0 <= h <= 1.0:
                    return np.float64(h) if ta is np.float64 or tb is np.float64 else h
        return stock(a, b)

    hamacher_product.__doc__ = stock.__doc__
    return hamacher_product


def _sum_of_squares(values: list[float]) -> float:
    """``x.dot(x)`` of a float64 vector as numpy computes it here (BLAS ``ddot``, one
    product after the other from 0.0); only used where :func:`dot_is_sequential` holds."""
    total = 0.0
    for value in values:
        total += value * value
    return total


@functools.cache
def dot_is_sequential() -> bool:
    """Whether numpy's ``x.dot(x)`` for float64 vectors of 1 to 3 elements equals
    :func:`_sum_of_squares` on this machine, bit for bit. numpy hands these to the BLAS
    its wheel ships, whose kernel is picked for the CPU at run time: one with fused
    multiply-adds or another order gives other roundings, so this is checked, on
    vectors where those differ, rather than assumed.

    It says no with numpy 2.4's OpenBLAS on this project's AMD EPYC machines and on its
    AVX-512 Xeon, whose kernel forms ``fma(x2, x2, fma(x1, x1, x0 * x0))`` (checked on
    every probe vector). Python 3.11 has no ``fma``; libm's through ctypes makes a
    3-vector norm slower than numpy's ``dot`` does (2.4 us against 1.0 us; the Python
    sum: 0.7 us), so there the shims call numpy's ``dot``, as stock does.
    ``scripts/bench_metaworld.py --dot-probe`` times either branch."""
    rng = np.random.default_rng(12345)
    for n in (1, 2, 3):
        x = rng.normal(size=(4000, n)) * 10.0 ** rng.integers(-6, 4, size=(4000, 1))
        for row in x:
            if row.dot(row) != _sum_of_squares(row.tolist()):
                _say_once("numpy's dot differs from a sequential sum of squares here; using it")
                return False
    return True


def make_norm(stock: Callable[..., Any]) -> Callable[..., Any]:
    """``np.linalg.norm`` for a float64 array or scalar with the default order and no
    axis: the branch numpy itself takes there (``sqrt(x.dot(x))`` of the raveled array),
    without its argument handling; anything else goes to ``stock``. A contiguous vector
    of up to 3 elements is summed in Python where :func:`dot_is_sequential` (the square
    root is IEEE's in both)."""
    sequential = dot_is_sequential()

    def norm(x: Any, ord: Any = None, axis: Any = None, keepdims: bool = False) -> Any:
        if axis is None and not keepdims:
            if (type(x) is np.ndarray and (x.dtype is _F64 or x.dtype == np.float64)
                    and (ord is None or (ord == 2 and x.ndim == 1))):
                if sequential and x.strides == (8,) and x.shape[0] <= 3:  # 1-D, contiguous
                    values = x.tolist()
                    if len(values) == 3:
                        a, b, c = values
                        return np.float64(math.sqrt(a * a + b * b + c * c))
                    return np.float64(math.sqrt(_sum_of_squares(values)))
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
    replaced = {}
    if _verified_helper("tolerance", helpers):
        replaced["tolerance"] = make_tolerance(reward_utils.tolerance)
    if _verified_helper("hamacher_product", helpers):
        replaced["hamacher_product"] = make_hamacher_product(reward_utils.hamacher_product)
    if replaced:
        shims[id(reward_utils)] = _module_copy(reward_utils, **replaced)
        for name, shim in replaced.items():
            shims[id(getattr(reward_utils, name))] = shim
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
            "hamacher_product": ("metaworld.utils.reward_utils.hamacher_product",
                                 reward_utils.hamacher_product),
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
_ZEROS3 = np.zeros(3)
_GRIP_TYPES = (np.float32, np.float64, float)
_F32_NUM, _F64_NUM = np.dtype(np.float32).num, np.dtype(np.float64).num
_FLOAT_NUMS = (_F32_NUM, _F64_NUM)  # dtype.num: also matches non-canonical dtype instances
_ROUND3_F32 = struct.Struct("3f")  # packing a double as "f" rounds it to float32 (C cast)

_ID_TABLES = {"_fast_body": _BODY, "_fast_site": _SITE, "_fast_geom": _GEOM}

# np.clip(a, lo, hi) on a float array ends in this ufunc call; calling it directly skips
# ~3 us of argument handling per call.
_clip_ufunc = getattr(getattr(getattr(np, "_core", None), "umath", None), "clip", None)


def _clip(a: Any, lo: Any, hi: Any, **kwargs: Any) -> Any:
    """``np.clip(a, lo, hi, **kwargs)``."""
    if _clip_ufunc is not None and type(a) is np.ndarray and a.dtype.kind == "f":
        return _clip_ufunc(a, lo, hi, **kwargs)
    return np.clip(a, lo, hi, **kwargs)


def _clip_float64(a: Any, lo: Any, hi: Any) -> Any:
    """``np.clip(a, lo, hi, dtype=np.float64)``; for three float64 arrays, the ufunc
    without the ``dtype`` argument (the same loop, less argument handling)."""
    if (_clip_ufunc is not None and type(a) is np.ndarray and type(lo) is np.ndarray
            and type(hi) is np.ndarray and a.dtype is _F64 and lo.dtype is _F64 and hi.dtype is _F64):
        return _clip_ufunc(a, lo, hi)
    return _clip(a, lo, hi, dtype=np.float64)


@functools.cache
def _float32_scale(scale: float) -> float | None:
    """``scale`` as numpy converts it to multiply a float32 array (``float32 * Python
    float`` is a float32 product), or None where that is not a finite float32."""
    with np.errstate(over="ignore"):
        s32 = float(np.float32(scale))
    return s32 if math.isfinite(s32) else None


def _flat(array: np.ndarray) -> memoryview | None:
    """A flat memoryview of a C-contiguous float64 array: reading or writing one element
    costs a tenth of numpy indexing, and stores the same double."""
    if array.dtype != np.float64 or not array.flags.c_contiguous:
        return None
    return memoryview(array).cast("B").cast("d")


class _Rows(dict):
    """name -> the row of one per-object array of an MjData (a view), found on first
    use."""

    def __init__(self, array: np.ndarray, ids: _Ids) -> None:
        super().__init__()
        self.array, self.ids = array, ids

    def __missing__(self, name: str) -> np.ndarray:
        row = self[name] = self.array[self.ids[name]]
        return row


_PAIRS = {"tcp": ("_fast_site", "rightEndEffector", "leftEndEffector"),
          "claws": ("_fast_body", "rightclaw", "leftclaw"),
          "pads": ("_fast_body", "leftpad", "rightpad")}
"""The named pairs the fast methods read off the flat views: (id table, first, second)."""


class _Views:
    """Numpy views of one MjData's arrays, made once: MuJoCo never moves them, and each
    ``data.xpos`` would build a new array object. ``mocap``, ``mocap_quat`` and ``ctrl``
    are flat memoryviews (``mocap`` only for the single mocap body the Sawyer has)."""

    __slots__ = ("data", "model", "nu", "body_xpos", "site_xpos", "rows", "mocap_pos", "mocap",
                 "mocap_quat", "ctrl", "xpos_flat", "site_flat", "pairs")

    def __init__(self, data: Any, env: Any = None) -> None:
        self.data = data
        if data is not None:
            self.model, self.nu = env.model, env.model.nu
            self.body_xpos = _Rows(data.xpos, env._fast_body)
            self.site_xpos = _Rows(data.site_xpos, env._fast_site)
            # MjData array name -> its _Rows (see _Accessor)
            self.rows: dict[str, _Rows] = {"xpos": self.body_xpos, "site_xpos": self.site_xpos}
            self.mocap_pos = data.mocap_pos
            one = self.mocap_pos.shape == (1, 3) and data.mocap_quat.shape == (1, 4)
            self.mocap_quat = _flat(data.mocap_quat) if one else None
            self.mocap = _flat(self.mocap_pos) if self.mocap_quat is not None else None
            self.ctrl = _flat(data.ctrl)
            self.xpos_flat, self.site_flat = _flat(data.xpos), _flat(data.site_xpos)
            self.pairs: dict[str, tuple[int, int]] = {}  # see pair()

    def pair(self, env: Any, which: str) -> tuple[int, int]:
        """Where the rows of one of :data:`_PAIRS` start in ``xpos_flat``/``site_flat``
        (3 * id), looked up on first use."""
        found = self.pairs.get(which)
        if found is None:
            table, first, second = _PAIRS[which]
            ids = getattr(env, table)
            found = self.pairs[which] = (3 * ids[first], 3 * ids[second])
        return found

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

    _fast_fused_action = False
    """Set by :func:`fast_class` where ``set_xyz_action`` is ours: ``step`` then reads the
    whole action with one ``tolist()``."""

    _fast_body_com = False
    """Set by :func:`fast_class` where ``get_body_com`` is ours (the row of ``data.xpos``)."""

    _fast_tcp = False
    """Set by :func:`fast_class` where ``tcp_center`` is ours."""

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
        s = v.site_flat
        if s is None:
            site = v.site_xpos
            return (site["rightEndEffector"] + site["leftEndEffector"]) / 2.0
        i, j = v.pair(self, "tcp")
        # (right + left) / 2.0, element by element
        return np.array([(s[i] + s[j]) / 2.0, (s[i + 1] + s[j + 1]) / 2.0, (s[i + 2] + s[j + 2]) / 2.0])

    # SawyerXYZEnv.step
    def step(self, action: np.ndarray) -> tuple[np.ndarray, Any, bool, bool, dict[str, Any]]:
        if not self._set_task_called:  # SawyerXYZEnv._Decorators.assert_task_is_set
            raise RuntimeError("You must call env.set_task before using env.step")
        v = self._fast_views
        if v.data is not self.data:
            v = self._fast_new_views()
        model, data = self.model, self.data
        # set_xyz_action(action[:3]) and the grip action[-1], from one tolist() when the
        # action is a float vector and set_xyz_action is ours
        if (self._fast_fused_action and type(action) is np.ndarray and action.shape == (4,)
                and action.dtype.num in _FLOAT_NUMS):
            ax, ay, az, grip = action.tolist()
            moved = self._fast_move_mocap(v, ax, ay, az, action.dtype.num == _F32_NUM)
        else:
            moved = False
        if not moved:
            assert len(action) == 4, f"Actions should be size 4, got {len(action)}"
            self.set_xyz_action(action[:3])
            grip = action[-1]
        if self.curr_path_length >= self.max_path_length:
            raise ValueError("You must reset the env manually once truncate==True")
        if (self._fast_direct_sim and type(grip) in _GRIP_TYPES and v.model is model and v.nu == 2
                and v.ctrl is not None):
            # MujocoEnv.do_simulation + _step_mujoco_simulation, minus the shape check
            # that a scalar grip and nu == 2 already pass: ctrl[:] = [grip, -grip] stores
            # the same doubles (a float32 grip and its negation are exact in float64).
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
        obs = self._last_stable_obs = _clip_float64(obs, space.low, space.high)
        reward, info = self.evaluate_state(obs, action)
        truncate = self.curr_path_length == self.max_path_length
        # np.array(obs, dtype=np.float64) of what clip(..., dtype=np.float64) returned
        return obs.copy() if type(obs) is np.ndarray else np.array(obs, dtype=np.float64), \
            reward, False, truncate, info

    # SawyerXYZEnv.set_xyz_action
    def set_xyz_action(self, action: np.ndarray) -> None:
        v = self._fast_views
        if v.data is not self.data:
            v = self._fast_new_views()
        if type(action) is np.ndarray and action.shape == (3,) and action.dtype.num in _FLOAT_NUMS:
            ax, ay, az = action.tolist()
            if self._fast_move_mocap(v, ax, ay, az, action.dtype.num == _F32_NUM):
                return
        action = _clip(action, -1, 1)
        pos_delta = action * self.action_scale
        new_mocap_pos = self.data.mocap_pos + pos_delta[None]
        new_mocap_pos[0, :] = _clip(new_mocap_pos[0, :], self.mocap_low, self.mocap_high)
        self.data.mocap_pos = new_mocap_pos
        self.data.mocap_quat = _MOCAP_QUAT

    def _fast_move_mocap(self, v: _Views, ax: float, ay: float, az: float, f32: bool) -> bool:
        """``set_xyz_action`` for the action ``(ax, ay, az)`` (the values of a float32
        array if ``f32``, else of a float64 one), on Python floats. False, with nothing
        written, where the stock numpy path must run: a NaN anywhere, a scale that is not
        a finite float, bounds of other types, more than one mocap body.

        Stock: ``clip(clip(a, -1, 1) * scale + mocap, low, high)``. Without NaNs numpy's
        clip is ``t = x if x > lo else lo; t if t < hi else hi``, written out below. A
        float32 array times a Python float is the float32 product of the array and
        ``float32(scale)``: the exact double product of two float32 values, rounded once
        to float32, which packing it as "f" does. The rest is float64 arithmetic.
        """
        scale, low, high, m = self.action_scale, self.mocap_low, self.mocap_high, v.mocap
        if (m is None or type(scale) is not float or type(low) is not np.ndarray
                or type(high) is not np.ndarray or low.shape != (3,) or high.shape != (3,)
                or low.dtype.num not in _FLOAT_NUMS or high.dtype.num not in _FLOAT_NUMS):
            return False
        if f32:
            scale = _float32_scale(scale)
            if scale is None:
                return False
        elif not scale - scale == 0.0:  # inf or NaN: products that may be NaN
            return False
        lx, ly, lz = low.tolist()
        hx, hy, hz = high.tolist()
        x, y, z = m[0], m[1], m[2]
        if not (ax == ax and ay == ay and az == az and x == x and y == y and z == z
                and lx == lx and ly == ly and lz == lz and hx == hx and hy == hy and hz == hz):
            return False
        ax = ax if ax > -1.0 else -1.0
        ay = ay if ay > -1.0 else -1.0
        az = az if az > -1.0 else -1.0
        dx, dy, dz = (ax if ax < 1.0 else 1.0) * scale, (ay if ay < 1.0 else 1.0) * scale, \
            (az if az < 1.0 else 1.0) * scale
        if f32:
            dx, dy, dz = _ROUND3_F32.unpack(_ROUND3_F32.pack(dx, dy, dz))
        x, y, z = x + dx, y + dy, z + dz
        x = x if x > lx else lx
        y = y if y > ly else ly
        z = z if z > lz else lz
        m[0] = x if x < hx else hx
        m[1] = y if y < hy else hy
        m[2] = z if z < hz else hz
        q = v.mocap_quat
        q[0], q[1], q[2], q[3] = 1.0, 0.0, 1.0, 0.0
        return True

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
        tolerance, norm, norm2, hamacher = _caging_helpers()
        v = self._fast_views
        if v.data is not self.data:
            v = self._fast_new_views()
        x, site = v.xpos_flat, v.site_flat
        # np.hstack of the pads' y, then np.abs of differences: the same float64 operations
        # element by element, on Python floats; tolerance gets the np.float64 elements.
        if self._fast_body_com and x is not None:
            left, right = v.pair(self, "pads")
            left_y, right_y = x[left + 1], x[right + 1]
        else:
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
        # a[[0, 2]] - b[[0, 2]], built from the same two differences; its norm summed as
        # the norm shim sums it where that is what the env code calls
        i0, _, i2 = init.tolist()
        t0, _, t2 = init_tcp.tolist()
        o0, _, o2 = obj_pos.tolist()
        if self._fast_tcp and site is not None:
            r, c = v.pair(self, "tcp")  # tcp_center, the two elements used
            tcp = [(site[r] + site[c]) / 2.0, None, (site[r + 2] + site[c + 2]) / 2.0]
        else:
            tcp = self.tcp_center
        caging_xz_margin = norm2(i0 - t0, i2 - t2)
        caging_xz_margin -= xz_thresh
        if type(tcp) is list or _is_vec3(tcp):
            c0, _, c2 = tcp if type(tcp) is list else tcp.tolist()
            tcp_to_obj_xz = norm2(c0 - o0, c2 - o2)
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
        x = v.xpos_flat
        if x is not None and dot_is_sequential():
            r, c = v.pair(self, "claws")
            # np.linalg.norm(right - left): sqrt of the dot product, summed as numpy does
            dx, dy, dz = x[r] - x[c], x[r + 1] - x[c + 1], x[r + 2] - x[c + 2]
            apart = math.sqrt(dx * dx + dy * dy + dz * dz)
        else:
            body = v.body_xpos
            diff = body["rightclaw"] - body["leftclaw"]
            apart = math.sqrt(diff.dot(diff))
        # np.clip(apart / 0.1, 0.0, 1.0)
        gripper = min(max(apart / 0.1, 0.0), 1.0)
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
                and prev_obs.dtype.num in _FLOAT_NUMS and type(pos_goal) is np.ndarray
                and pos_goal.ndim == 1 and pos_goal.dtype.num in _FLOAT_NUMS):
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


# --------------------------------------------------------------------------------------
# Env methods of a known one-statement shape, with their named look-ups made once.
# --------------------------------------------------------------------------------------

_OBJECT_METHODS = ("_get_pos_objects", "_get_quat_objects")
"""Env methods ``_get_obs`` calls every step; most are one named look-up."""

_ACCESSOR_ARRAYS = {("body", "xpos"): "xpos", ("body", "xquat"): "xquat", ("body", "xmat"): "xmat",
                    ("geom", "xpos"): "geom_xpos", ("geom", "xmat"): "geom_xmat",
                    ("site", "xpos"): "site_xpos", ("site", "xmat"): "site_xmat"}
"""``data.<kind>(name).<attr>`` is the row ``data.<array>[id]`` (a view, as the accessor's)."""

_NAME = r"'([A-Za-z0-9_\-]+)'"
_ROW = re.compile(rf"return self\.data\.(body|geom|site)\({_NAME}\)\.(xpos|xquat)")
_QUAT = (re.compile(rf"geom_xmat = self\.data\.(body|geom|site)\({_NAME}\)\.xmat\.reshape\(3, 3\) "
                    r"\| return Rotation\.from_matrix\(geom_xmat\)\.as_quat\(\)"),
         re.compile(rf"return Rotation\.from_matrix\(self\.data\.(body|geom|site)\({_NAME}\)"
                    r"\.xmat\.reshape\(3, 3\)\)\.as_quat\(\)"))
_OFFSET = re.compile(rf"return self\.(get_body_com|_get_site_pos)\({_NAME}\) \+ np\.array\((\[[^\]]*\])\)")


def _statements(func: Any) -> str | None:
    """The body of ``func`` (a method taking only ``self``) as ``ast.unparse`` writes it,
    statements joined by " | "; None for anything else."""
    if not isinstance(func, types.FunctionType):
        return None
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return None
    node = tree.body[0] if len(tree.body) == 1 else None
    if (not isinstance(node, ast.FunctionDef) or node.decorator_list
            or ast.unparse(node.args) != "self"):
        return None
    body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
    return " | ".join(ast.unparse(b) for b in body)


class _Accessor:
    """``data.<kind>(name).<attr>``: the same row view, its id looked up once per MjData."""

    def __init__(self, kind: str, name: str, attr: str) -> None:
        self.array, self.name = _ACCESSOR_ARRAYS[kind, attr], name
        self.table = {"body": "_fast_body", "geom": "_fast_geom", "site": "_fast_site"}[kind]

    def __call__(self, env: Any) -> np.ndarray:
        v = env._fast_views
        if v.data is not env.data:
            v = env._fast_new_views()
        rows = v.rows.get(self.array)
        if rows is None:
            rows = v.rows[self.array] = _Rows(getattr(v.data, self.array), getattr(env, self.table))
        return rows[self.name]


def resolve_lookups(stock: Any, current: Any = None) -> Callable[..., Any] | None:
    """A replacement for an env's ``_get_pos_objects``/``_get_quat_objects`` whose whole
    body is one of these shapes, or None:

    - ``return self.data.<body|geom|site>('name').<xpos|xquat>``: the same row of the
      same MjData array, without the named accessor;
    - ``Rotation.from_matrix(self.data.<...>('name').xmat.reshape(3, 3)).as_quat()``
      (in one or two statements): :func:`quat_from_matrix` on that row, and the method
      ``current`` (the stock one on the shims) where that declines;
    - ``return self.<get_body_com|_get_site_pos>('name') + np.array([...])``: the
      constant made once (``+`` makes a new array either way).

    Matching the installed source, not a recorded fingerprint, is what makes it safe:
    any other body keeps the env's own method.
    """
    text = _statements(stock)
    if text is None:
        return None
    g = stock.__globals__
    match = _ROW.fullmatch(text)
    if match and (match[1], match[3]) in _ACCESSOR_ARRAYS:
        row = _Accessor(match[1], match[2], match[3])

        def method(self: Any) -> np.ndarray:
            return row(self)
    elif (match := _QUAT[0].fullmatch(text) or _QUAT[1].fullmatch(text)) and current is not None:
        from scipy.spatial.transform import Rotation

        if g.get("Rotation") is not Rotation or not isinstance(current.__globals__.get("Rotation"), RotationShim):
            return None
        row, fallback = _Accessor(match[1], match[2], "xmat"), current

        def method(self: Any) -> np.ndarray:
            m = row(self).tolist()
            quat = quat_from_matrix((m[0:3], m[3:6], m[6:9]))
            return np.array(quat) if quat is not None else fallback(self)
    elif match := _OFFSET.fullmatch(text):
        if g.get("np") is not np:
            return None
        getter, name, offset = match[1], match[2], np.array(ast.literal_eval(match[3]))
        if offset.dtype != np.float64:
            return None

        def method(self: Any) -> np.ndarray:
            return getattr(self, getter)(name) + offset
    else:
        return None
    method.__name__, method.__qualname__, method.__doc__ = stock.__name__, stock.__qualname__, stock.__doc__
    return method


def _stock_curr_obs(self: Any) -> np.ndarray:
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    return SawyerXYZEnv._get_curr_obs_combined_no_goal(self)


def _is_vec3(x: Any) -> bool:
    """A float64 3-vector (dtype compared by number: unpickled task data carries its own
    float64 dtype instance)."""
    return type(x) is np.ndarray and x.shape == (3,) and x.dtype.num == _F64_NUM


def _stock_caging(self: Any, *args: Any) -> float:
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    return _rebound_stock_caging(SawyerXYZEnv._gripper_caging_reward)(self, *args)


@functools.cache
def _rebound_stock_caging(stock: Callable[..., Any]) -> Callable[..., Any]:
    """The stock method on the same shims as the env code around it."""
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    return _Rebinder(SawyerXYZEnv)(stock)


@functools.cache
def _caging_helpers() -> tuple[Callable[..., Any], ...]:
    """(tolerance, norm, norm2, hamacher_product): the helpers as the stock method sees
    them (shims where verified), and norm2(a, b), that norm of the 2-vector [a, b],
    summed in Python where the norm is our shim on a machine where
    :func:`dot_is_sequential`."""
    from metaworld.utils import reward_utils

    shims = _shims()
    tolerance = shims.get(id(reward_utils.tolerance), reward_utils.tolerance)
    norm = shims[id(np)].linalg.norm if id(np) in shims else np.linalg.norm
    hamacher = shims.get(id(reward_utils.hamacher_product), reward_utils.hamacher_product)
    if id(np) in shims and dot_is_sequential():
        def norm2(a: float, b: float) -> Any:
            return np.float64(math.sqrt(a * a + b * b))
    else:
        def norm2(a: float, b: float) -> Any:
            return norm(np.array([a, b]))
    return tolerance, norm, norm2, hamacher


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
        ns["_fast_fused_action"] = "set_xyz_action" in ns
        ns["_fast_body_com"] = "get_body_com" in ns
        ns["_fast_tcp"] = "tcp_center" in ns
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
        for name in _OBJECT_METHODS:
            resolved = resolve_lookups(_lookup(stock, name), ns.get(name))
            if resolved is not None:
                ns[name] = resolved
        ns["__getattr__"] = FastSawyerMixin.__getattr__  # the id tables and views
        ns["_fast_new_views"] = FastSawyerMixin._fast_new_views
        ns["_fast_fill_curr_obs"] = FastSawyerMixin._fast_fill_curr_obs
        ns["_fast_move_mocap"] = FastSawyerMixin._fast_move_mocap
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
