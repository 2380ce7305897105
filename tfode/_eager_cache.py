"""Eager ``solve`` calls run as cached traced functions (internal).

Called eagerly, ``tfode.solve`` would dispatch every op of its loop from Python
(about 90x the cost of the same solve in a graph on a small field). Instead,
``solve`` hands an eager call to ``cached_solve``, which traces the graph path
once into a ``tf.function`` concrete function per *key* and calls it:

* the tensors of the call are the function's inputs: the state's leaves, ``t``,
  ``args``, tensor tolerances, and tensors held in the field's closure cells
  (e.g. noise drawn per call); new values need no retrace;
* everything else that shapes the graph is the key: the field, the state's
  structure, every input's shape and dtype, the ``SolverConfig`` with its tensors
  taken out, ``backward_stats``, ``raise_on_failure``, ``name``.

The field's part of the key is the callable's code and what it reads, not the
function object, so a new closure per call (``lambda t, y: self.field(t, y)``,
as layers build) finds the same entry: a Python function is keyed by its code
object, its closure cells (tensors as inputs, other values as below, nested
functions recursively), its defaults, and the globals its code names; a bound
method by its function and its ``self``; ``functools.partial`` by its parts; any
other callable (a Keras layer) by identity. Values are keyed by value when they
are plain Python scalars or dtypes, and by identity otherwise. Identity keys hold
their object weakly where Python allows it (a weak reference's death evicts the
entry, so lambdas and layers die normally) and strongly otherwise (so the id
cannot be reused while the entry lives). The cache is a bounded LRU
(``MAX_ENTRIES``).

What is read at trace time stays fixed for the entry, as in any ``tf.function``:
``tf.Variable`` reads are live, but a tensor reached through an attribute or a
container (``self.w`` holding a tensor, a list of tensors) is captured by value.
Pass such tensors as ``args`` (or keep them in variables).

A field that cannot be traced (numpy inside: ``NotImplementedError``,
``AttributeError`` for ``.numpy()``, ``TypeError`` for ``float(t)``/``bool``, each
naming a symbolic tensor) falls back to plain eager execution, and the entry
remembers it; other errors (a field returning the wrong dtype) propagate.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import types
import weakref

import tensorflow as tf

__all__ = ["MAX_ENTRIES", "UNTRACEABLE_ERRORS", "cache_info", "cached_solve", "clear_cache"]

MAX_ENTRIES = 64

# What tracing a field that needs eager values raises: np.asarray/np.sin of a symbolic
# tensor (NotImplementedError), `.numpy()` (AttributeError), float()/int()/bool() and
# Python control flow on a tensor (TypeError, tf.errors.OperatorNotAllowedInGraphError).
UNTRACEABLE_ERRORS = (NotImplementedError, AttributeError, TypeError)

_TOLERANCE_FIELDS = ("rtol", "atol", "adjoint_rtol", "adjoint_atol")
_VALUE_TYPES = (int, float, bool, str, bytes, complex, type(None), tf.dtypes.DType)
_MAX_DEPTH = 4  # nested functions in closure cells followed for keys and tensor inputs


class _Entry:
    __slots__ = ("__weakref__", "concrete", "eager", "holds", "traces")

    def __init__(self):
        self.concrete = None  # the traced solve (a ConcreteFunction)
        self.eager = False  # tracing failed: run this key eagerly
        self.holds = []  # strong references that keep identity keys unique, and the weak ones
        self.traces = 0


_lock = threading.RLock()  # re-entrant: a weak reference's callback may run while it is held
_entries: collections.OrderedDict = collections.OrderedDict()
_stats = {"hits": 0, "misses": 0, "eager_fallbacks": 0}


def clear_cache():
    """Forget every traced solve (tests; or to free their graphs)."""
    with _lock:
        _entries.clear()
        for k in _stats:
            _stats[k] = 0


def cache_info():
    """``{"entries", "hits", "misses", "eager_fallbacks"}`` of the eager-solve cache."""
    with _lock:
        return dict(_stats, entries=len(_entries))


# --------------------------------------------------------------------------- keys


class _Split:
    """A callable taken apart: ``key`` (hashable), ``tensors`` (its closure tensors), ``rebuild``.

    ``rebuild(tensors)`` returns the callable with those tensors replaced (by a
    traced function's inputs); ``refs`` are the objects keyed by identity.
    """

    __slots__ = ("key", "rebuild", "refs", "tensors")

    def __init__(self, key, tensors, rebuild, refs):
        self.key, self.tensors, self.rebuild, self.refs = key, tensors, rebuild, refs


def _is_plain_tensor(x):
    return tf.is_tensor(x) and not isinstance(x, tf.Variable) and x.dtype != tf.resource


def _value_key(x, refs):
    """A hashable stand-in for ``x``: its value (scalars, dtypes, tuples of them) or its identity."""
    if type(x) in _VALUE_TYPES or isinstance(x, tf.dtypes.DType):
        return (type(x).__name__, x)
    if type(x) is tuple:
        return ("tuple",) + tuple(_value_key(item, refs) for item in x)
    refs.append(x)
    return ("id", id(x))


def _split_callable(func, depth=0):
    refs = []
    if isinstance(func, types.MethodType):
        inner = _split_callable(func.__func__, depth + 1)
        owner = func.__self__
        return _Split(
            ("method", inner.key, _value_key(owner, refs)),
            inner.tensors,
            lambda tensors: types.MethodType(inner.rebuild(tensors), owner),
            inner.refs + refs,
        )
    if isinstance(func, functools.partial) and depth < _MAX_DEPTH:
        inner = _split_callable(func.func, depth + 1)
        n = len(inner.tensors)
        positional = [a for a in func.args if _is_plain_tensor(a)]
        keywords = {k: a for k, a in func.keywords.items() if _is_plain_tensor(a)}
        static_args = tuple(_spec_key(a) if _is_plain_tensor(a) else _value_key(a, refs) for a in func.args)
        static_kw = tuple(
            sorted((k, _spec_key(a) if _is_plain_tensor(a) else _value_key(a, refs)) for k, a in func.keywords.items())
        )

        def rebuild_partial(tensors):
            it = iter(tensors[n : n + len(positional)])
            kw_values = dict(zip(keywords, tensors[n + len(positional) :]))
            args = [next(it) if _is_plain_tensor(a) else a for a in func.args]
            kwargs = {k: kw_values.get(k, a) for k, a in func.keywords.items()}
            return functools.partial(inner.rebuild(tensors[:n]), *args, **kwargs)

        return _Split(
            ("partial", inner.key, static_args, static_kw),
            inner.tensors + positional + list(keywords.values()),
            rebuild_partial,
            inner.refs + refs,
        )
    if not isinstance(func, types.FunctionType) or depth >= _MAX_DEPTH:
        return _Split(("object", _value_key(func, refs)), [], lambda tensors: func, refs)

    code = func.__code__
    cells = func.__closure__ or ()
    cell_keys, tensors, parts = [], [], []  # parts[i]: (kind, n, split) per cell
    for cell in cells:
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell (a name assigned after the closure was made)
            cell_keys.append(("empty",))
            parts.append(("empty", 0, None))
            continue
        if _is_plain_tensor(content):
            cell_keys.append(_spec_key(content))
            tensors.append(content)
            parts.append(("tensor", 1, None))
        elif isinstance(content, (types.FunctionType, types.MethodType, functools.partial)):
            inner = _split_callable(content, depth + 1)
            cell_keys.append(inner.key)
            tensors.extend(inner.tensors)
            refs.extend(inner.refs)
            parts.append(("callable", len(inner.tensors), inner))
        else:
            cell_keys.append(_value_key(content, refs))
            parts.append(("value", 0, content))
    defaults = tuple(_value_key(d, refs) for d in func.__defaults__ or ())
    kwdefaults = tuple(sorted((k, _value_key(d, refs)) for k, d in (func.__kwdefaults__ or {}).items()))
    # Globals the code (and the code nested in it) names: a rebound global changes the key.
    namespace = func.__globals__
    named = tuple((name, _value_key(namespace[name], refs)) for name in _global_names(code) if name in namespace)
    refs.append(code)
    key = ("function", id(code), tuple(cell_keys), defaults, kwdefaults, named)

    if not tensors and not any(kind == "callable" for kind, _, _ in parts):
        return _Split(key, [], lambda _: func, refs)

    def rebuild_function(new_tensors):
        new_cells, at = [], 0
        for cell, (kind, n, part) in zip(cells, parts):
            if kind == "tensor":
                new_cells.append(types.CellType(new_tensors[at]))
            elif kind == "callable":
                new_cells.append(types.CellType(part.rebuild(new_tensors[at : at + n])))
            else:
                new_cells.append(cell)  # shared, as in the original
            at += n
        clone = types.FunctionType(code, func.__globals__, func.__name__, func.__defaults__, tuple(new_cells))
        clone.__kwdefaults__ = func.__kwdefaults__
        clone.__dict__.update(func.__dict__)
        return clone

    return _Split(key, tensors, rebuild_function, refs)


@functools.lru_cache(maxsize=1024)
def _global_names(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


def _spec_key(x):
    return ("tensor", tuple(x.shape.as_list()) if x.shape.rank is not None else None, x.dtype.name)


def _structure_key(structure):
    return repr(tf.nest.map_structure(lambda _: 0, structure))


def _split_config(config):
    """``(static config, tensor leaves, rebuild)``: tensor tolerances taken out of ``config``.

    Python-number tolerances stay in the (hashable) config; a tensor, array or
    structure of them becomes inputs, replaced by ``None`` in the key's config.
    """
    tensors, layout, changes = [], [], {}
    for name in _TOLERANCE_FIELDS:
        value = getattr(config, name)
        if value is None or type(value) in (int, float):
            continue
        leaves = tf.nest.flatten(value)
        if not all(tf.is_tensor(x) or hasattr(x, "dtype") or type(x) in (int, float) for x in leaves):
            return None  # something only the plain path understands
        converted = [x if tf.is_tensor(x) else tf.convert_to_tensor(x) for x in leaves]
        layout.append((name, value, len(converted)))
        tensors.extend(converted)
        changes[name] = None
    static = config
    if changes:  # a hashable stand-in: the fields, tensor tolerances as None
        static = tuple((f.name, changes.get(f.name, getattr(config, f.name))) for f in dataclasses.fields(config))
    structure_key = tuple((name, _structure_key(value)) for name, value, _ in layout)

    def rebuild(new_tensors):
        if not layout:
            return config
        fields, at = {}, 0
        for name, value, n in layout:
            fields[name] = tf.nest.pack_sequence_as(value, list(new_tensors[at : at + n]))
            at += n
        return dataclasses.replace(config, **fields)

    return static, structure_key, tensors, rebuild


# --------------------------------------------------------------------------- calls


def cached_solve(graph_solve, func, problem, backward_stats, raise_on_failure, name, allow_repeated_times):
    """Run ``graph_solve`` for an eager ``solve`` call through the cache.

    Args:
        graph_solve: ``graph_solve(func, y0, t, config, args, backward_stats, raise_backward, name,
            allow_repeated_times) -> (ys leaves, SolverStats)``, the graph path of ``solve``
            without the forward failure check.
        func: the user's field.
        problem: the eagerly validated ``solvers.Problem`` (its leaves, ``t``, ``args``, ``config``).
        backward_stats, raise_on_failure, name, allow_repeated_times: as ``solve``'s.

    Returns:
        ``(ys leaves, SolverStats)`` as eager tensors, or ``None`` when this call must run
        plain eagerly (an untraceable field, or parts of the call the cache cannot key).
    """
    config = problem.config
    split_config = _split_config(config)
    if split_config is None:
        return None
    static_config, tolerance_structure, tolerance_tensors, rebuild_config = split_config
    field = _split_callable(func)
    inputs = [*problem.leaves, problem.t, *problem.args, *tolerance_tensors, *field.tensors]
    refs = list(field.refs)
    stats_key = _value_key(backward_stats, refs) if backward_stats is not None else None
    try:
        key = (
            field.key,
            _structure_key(problem.structure),
            static_config,
            tolerance_structure,
            tuple(_spec_key(x) for x in inputs),
            len(problem.leaves),
            len(problem.args),
            stats_key,
            bool(raise_on_failure),
            name,
            bool(allow_repeated_times),
        )
        hash(key)
    except TypeError:  # e.g. a controller holding a tensor: not a key
        return None

    with _lock:
        entry = _entries.get(key)
        if entry is not None:
            _entries.move_to_end(key)
            _stats["hits"] += 1
        else:
            _stats["misses"] += 1
    if entry is not None and entry.eager:
        return None
    if entry is None:
        entry = _Entry()
        structure = problem.structure
        num_leaves, num_args, num_tolerances = len(problem.leaves), len(problem.args), len(tolerance_tensors)

        def body(*flat):
            entry.traces += 1
            leaves = list(flat[:num_leaves])
            t = flat[num_leaves]
            at = num_leaves + 1
            args = list(flat[at : at + num_args])
            at += num_args
            traced_config = rebuild_config(flat[at : at + num_tolerances])
            traced_func = field.rebuild(list(flat[at + num_tolerances :]))
            y0 = tf.nest.pack_sequence_as(structure, leaves)
            ys, stats = graph_solve(traced_func, y0, t, traced_config, args, backward_stats, raise_on_failure,
                                    name, allow_repeated_times)  # fmt: skip
            # Counters are no function of the inputs to differentiate: without the stop, a tape
            # around the call would send zero cotangents from them back through the loop (keeping
            # its intermediates, and 0 * NaN from rejected steps).
            return ys, tf.nest.map_structure(tf.stop_gradient, stats)

        specs = [tf.TensorSpec(x.shape, x.dtype) for x in inputs]
        try:
            entry.concrete = tf.function(body, autograph=False).get_concrete_function(*specs)
        except UNTRACEABLE_ERRORS as err:
            if not _needs_eager_values(err):
                raise  # an error of the call itself (e.g. a field returning the wrong dtype)
            entry.concrete = None
            entry.eager = True
        _remember(key, entry, refs)
        if entry.eager:
            with _lock:
                _stats["eager_fallbacks"] += 1
            return None
    ys, stats = entry.concrete(*inputs)
    return list(ys), stats


def _needs_eager_values(err):
    """Whether ``err`` (one of ``UNTRACEABLE_ERRORS``) says that code needed a value, not a symbol."""
    if isinstance(err, tf.errors.OperatorNotAllowedInGraphError):
        return True
    message = str(err)
    return "symbolic" in message.lower() or "only available when eager execution is enabled" in message


def _remember(key, entry, refs):
    """Store ``entry`` under ``key``; identity-keyed objects are held weakly where possible."""

    def evict(_ref, key=key):
        with _lock:
            if _entries.get(key) is entry_ref():
                _entries.pop(key, None)

    entry_ref = weakref.ref(entry)
    for obj in refs:
        try:
            entry.holds.append(weakref.ref(obj, evict))
        except TypeError:  # no weak references (lists, dicts, code objects): keep the id unique
            entry.holds.append(obj)
    with _lock:
        _entries[key] = entry
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)
