"""The package's version, and the check that its Python part and its native module match.

There is one version: ``Cargo.toml``'s. maturin writes it into the distribution's metadata (in
PEP 440 spelling) and Cargo compiles it into the native module (``_native.__version__``). Both
come from the same build, so when they differ, the Python files and the native module were
installed by different builds (a stale ``_native`` left next to newer Python files, or the
reverse) and the package refuses to import rather than fail later in obscure ways.

This module is imported first by the package, before anything touches the native module.
"""

from __future__ import annotations

import argparse
import platform
import re
from importlib import metadata
from types import ModuleType
from typing import Any, Optional, Sequence, Union

__all__ = [
    "DISTRIBUTION",
    "PrintVersion",
    "__version__",
    "check_native",
    "native_version",
    "pep440",
    "version_text",
]

#: The distribution's name on PyPI.
DISTRIBUTION = "memory-service-processor"

_SEMVER = re.compile(
    r"^(?P<release>\d+(?:\.\d+)*)"
    r"(?:-(?P<pre>alpha|a|beta|b|rc|c|pre|preview|dev)(?:\.?(?P<n>\d+))?)?"
    r"(?:\+(?P<local>[0-9A-Za-z.]+))?$"
)
_PRE = {"alpha": "a", "a": "a", "beta": "b", "b": "b", "rc": "rc", "c": "rc", "pre": "rc",
        "preview": "rc", "dev": ".dev"}


def pep440(cargo_version: str) -> str:
    """Cargo's (semver) spelling of a version in PEP 440's, as maturin writes it into metadata.

    ``1.2.3`` stays; ``1.2.3-alpha.1`` becomes ``1.2.3a1``, ``-beta.2`` ``b2``, ``-rc.1``
    ``rc1``, ``-dev.4`` ``.dev4``; ``+build`` becomes a local version. Other spellings are
    returned unchanged.
    """
    m = _SEMVER.match(cargo_version.strip())
    if m is None:
        return cargo_version
    out = m.group("release")
    if m.group("pre"):
        out += _PRE[m.group("pre")] + (m.group("n") or "0")
    if m.group("local"):
        out += "+" + m.group("local")
    return out


def _installed_version() -> Optional[str]:
    """The version in the installed distribution's metadata, or None (e.g. run from a source
    tree put on ``sys.path`` by hand)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def check_native(native: ModuleType, installed: Optional[str] = None) -> str:
    """Returns the package version after checking that ``native`` comes from the same build.

    ``installed`` is the distribution's metadata version (looked up when None). Raises
    :class:`ImportError` with the two versions and how to fix it when they differ, or when the
    native module carries no version at all (it predates this check).
    """
    location = getattr(native, "__file__", None) or "?"
    core = getattr(native, "__version__", None)
    if not isinstance(core, str):
        raise ImportError(
            f"{DISTRIBUTION}: the native module {location} carries no version: it is from an "
            "older build than the Python files. Reinstall the package (pip install "
            f"--force-reinstall {DISTRIBUTION}) or, in a source checkout, rebuild it "
            "(pip install . or maturin develop --release)."
        )
    version = pep440(core)
    if installed is None:
        installed = _installed_version()
    if installed is not None and installed.lower() != version.lower() and installed != core:
        raise ImportError(
            f"{DISTRIBUTION}: the installed package is version {installed} but its native module "
            f"{location} is version {core}: they come from different builds. Reinstall the package "
            f"(pip install --force-reinstall {DISTRIBUTION}) or, in a source checkout, rebuild it "
            "(pip install . or maturin develop --release)."
        )
    return version


def _import_native() -> ModuleType:
    try:
        from . import _native
    except ImportError as e:
        raise ImportError(
            f"{DISTRIBUTION}: its native module (memory_service_processor._native) cannot be "
            f"imported ({e}). Install a wheel (pip install {DISTRIBUTION}) or build from source "
            "with a Rust toolchain (pip install . or maturin develop --release)."
        ) from e
    return _native


_native_module = _import_native()

#: The package version (PEP 440), which is also the native core's.
__version__: str = check_native(_native_module)


def native_version() -> str:
    """The native core's version as Cargo spells it, with its build profile if not release."""
    core: str = _native_module.__version__
    profile = getattr(_native_module, "BUILD_PROFILE", "release")
    return core if profile == "release" else f"{core} ({profile} build)"


def version_text() -> str:
    """What ``memory-service-processor --version`` prints: this package's version, the native
    core's, and the Python and platform it runs on."""
    return (
        f"{DISTRIBUTION} {__version__} (native core {native_version()}; "
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.system()} {platform.machine()})"
    )


class PrintVersion(argparse.Action):
    """``--version`` for an :class:`argparse.ArgumentParser`: prints :func:`version_text` on one
    line (argparse's own ``version`` action wraps it to the terminal's width) and exits 0."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS,
                 help: str = "print the version, with the native core's, and exit") -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Union[str, Sequence[Any], None], option_string: Optional[str] = None) -> None:
        print(version_text())
        parser.exit()
