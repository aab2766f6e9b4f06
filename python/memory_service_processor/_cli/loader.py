"""Loading the user's processor from ``package.module:ClassName`` or ``path/to/file.py:ClassName``.

A module (or constructor) that calls ``sys.exit()`` or raises another ``BaseException`` is a
usage error saying so (exit 2), not a silent exit with the module's status.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import signal
import sys
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .._processor import EventProcessor
from .errors import UsageError

__all__ = ["load_processor", "processor_kwargs"]


@contextlib.contextmanager
def _user_code(what: str) -> Iterator[None]:
    """Runs the user's module-level code or constructor (``what``: ``importing 'mod'``).

    A ``sys.exit()``, a ``KeyboardInterrupt`` the code raised itself or any other
    ``BaseException`` that is not an ``Exception`` becomes a :class:`UsageError` saying so
    (exit 2, one line) instead of ending the command silently with the code's exit status. A
    real Ctrl-C meanwhile stays a ``KeyboardInterrupt`` (exit 130). Ordinary exceptions pass
    through unchanged.
    """
    signals: List[int] = []
    handler: Any = None
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:

                def on_sigint(signum: int, frame: Any) -> None:
                    signals.append(signum)
                    raise KeyboardInterrupt

                signal.signal(signal.SIGINT, on_sigint)
                handler = on_sigint
        except (ValueError, OSError):  # no signals here (e.g. an embedded interpreter)
            handler = None
    try:
        yield
    except SystemExit as e:
        call = "sys.exit()" if e.code is None else f"sys.exit({e.code!r})"
        raise UsageError(f"{what} called {call}") from None
    except KeyboardInterrupt:
        if signals:
            raise
        raise UsageError(f"{what} raised KeyboardInterrupt") from None
    except Exception:
        raise
    except BaseException as e:
        detail = f": {e}" if str(e) else ""
        raise UsageError(f"{what} raised {type(e).__name__}{detail}") from None
    finally:
        if handler is not None and signal.getsignal(signal.SIGINT) is handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _import_target(spec: str) -> Tuple[Any, str]:
    """(module, attribute name or "") for ``module:attr`` / ``file.py:attr``."""
    module_part, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not module_part:
        raise UsageError(f"processor {spec!r}: expected package.module:ClassName or path/to/file.py:ClassName")
    # Windows drive letters ("C:\\x.py") have no attribute part.
    if len(module_part) == 1 and module_part.isalpha() and ("\\" in attr or "/" in attr):
        module_part, attr = spec, ""
    is_file = module_part.endswith(".py") or os.sep in module_part or "/" in module_part
    if is_file:
        path = os.path.abspath(module_part)
        if not os.path.isfile(path):
            raise UsageError(f"processor {spec!r}: no such file {module_part!r}")
        name = os.path.splitext(os.path.basename(path))[0]
        mod_name = name if name.isidentifier() and name not in sys.modules else f"_msp_target_{abs(hash(path))}"
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)  # sibling imports of the user's file
        spec_obj = importlib.util.spec_from_file_location(mod_name, path)
        if spec_obj is None or spec_obj.loader is None:
            raise UsageError(f"processor {spec!r}: cannot load {module_part!r} as Python")
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[mod_name] = module
        try:
            with _user_code(f"importing {module_part!r}"):
                spec_obj.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(mod_name, None)  # as a failed import leaves no module behind
            raise
        return module, attr
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the working directory
    try:
        with _user_code(f"importing {module_part!r}"):
            module = importlib.import_module(module_part)
    except ModuleNotFoundError as e:
        if e.name and (module_part == e.name or module_part.startswith(e.name + ".")):
            raise UsageError(f"processor {spec!r}: no module named {e.name!r}") from None
        raise
    return module, attr


def _is_processor(obj: Any) -> bool:
    return all(callable(getattr(obj, m, None)) for m in ("content_type", "load", "handle", "snapshot"))


def load_processor(spec: str, kwargs: Optional[Mapping[str, str]] = None) -> Any:
    """The processor named by ``spec`` (``module:Name`` or ``file.py:Name``), instantiated.

    ``Name`` may be a class or a factory (called with ``kwargs``) or an instance. Without
    ``:Name``, the module must define exactly one :class:`EventProcessor` subclass.
    Raises :class:`UsageError` for anything that is not a processor.
    """
    module, attr = _import_target(spec)
    if not attr:
        found = [
            v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, EventProcessor) and v is not EventProcessor
            and v.__module__ == module.__name__
        ]
        if len(found) != 1:
            names = ", ".join(sorted(c.__name__ for c in found)) or "none"
            raise UsageError(f"processor {spec!r}: name the class as {spec}:ClassName (processor classes found: {names})")
        target: Any = found[0]
    else:
        target = module
        for part in attr.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise UsageError(f"processor {spec!r}: {module.__name__} has no attribute {attr!r}") from None
    kwargs = dict(kwargs or {})
    if isinstance(target, type) or (callable(target) and not _is_processor(target)):
        try:
            with _user_code(f"creating the processor {spec!r}"):
                processor = target(**kwargs)
        except TypeError as e:
            raise UsageError(f"processor {spec!r}: cannot create it: {e}") from None
    else:
        if kwargs:
            raise UsageError(f"processor {spec!r} is an instance: --arg cannot be used")
        processor = target
    if not _is_processor(processor):
        raise UsageError(
            f"processor {spec!r}: {type(processor).__name__} is not an event processor "
            "(needs content_type, load, handle and snapshot methods)"
        )
    return processor


def processor_kwargs(items: Sequence[str]) -> Dict[str, str]:
    """``run --arg NAME=VALUE`` items as keyword arguments; UsageError for a malformed one."""
    kwargs: Dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name.isidentifier():
            raise UsageError(f"--arg {item!r}: expected NAME=VALUE")
        kwargs[name] = value
    return kwargs
