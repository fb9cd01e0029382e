"""Coverage instrumentation of slimrt's Python code for the atheris fuzz targets.

``atheris.instrument_imports`` does not work with the editable install: scikit-build-core's
redirecting import finder loads slimrt through a custom loader, and atheris's loader override then
runs the code uninstrumented (libFuzzer reports no coverage at all: "Is the code instrumented for
coverage?", the corpus collapses to one empty input). So the targets import slimrt normally and
this module patches, in place, the code of every function and method defined in the given slimrt
modules (nested functions, lambdas and comprehensions are constants of that code and get patched
with it).
"""

from __future__ import annotations

import sys
import types


def _functions(module: types.ModuleType):
    for obj in vars(module).values():
        if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
            yield obj
        elif isinstance(obj, type) and obj.__module__ == module.__name__:
            for attr in vars(obj).values():
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if isinstance(attr, property):
                    yield from (f for f in (attr.fget, attr.fset, attr.fdel) if isinstance(f, types.FunctionType))
                elif isinstance(attr, types.FunctionType):
                    yield attr


def instrument(prefixes: tuple[str, ...] = ("slimrt",)) -> int:
    """Instruments every function of the loaded modules named by ``prefixes`` (a name or a dotted
    prefix of one); returns how many were patched."""
    import atheris

    seen: set[int] = set()
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        for fn in _functions(module):
            if id(fn.__code__) not in seen:
                atheris.instrument_func(fn)
                seen.add(id(fn.__code__))
    return len(seen)
