"""One version (Cargo.toml's) everywhere, and a clear refusal to import mismatched builds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import memory_service_processor as msp
from memory_service_processor import _native, _version

ROOT = Path(__file__).resolve().parents[1]


def cargo_version() -> str:
    m = re.search(r'^version = "([^"]+)"$', (ROOT / "Cargo.toml").read_text(), re.M)
    assert m is not None
    return m.group(1)


def test_the_version_is_cargo_tomls_everywhere() -> None:
    assert _native.__version__ == cargo_version()
    assert msp.__version__ == _version.pep440(cargo_version())
    assert _native.BUILD_PROFILE in ("release", "debug")


def test_version_text_names_the_native_core() -> None:
    r = subprocess.run([sys.executable, "-m", "memory_service_processor", "--version"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"memory-service-processor {msp.__version__} (native core {_native.__version__}")


@pytest.mark.parametrize("cargo, pep440", [
    ("0.1.0", "0.1.0"),
    ("1.2.3-alpha.1", "1.2.3a1"),
    ("1.2.3-beta.2", "1.2.3b2"),
    ("1.2.3-rc.1", "1.2.3rc1"),
    ("1.2.3-dev.4", "1.2.3.dev4"),
    ("1.2.3+build.5", "1.2.3+build.5"),
])
def test_pep440_spelling_matches_the_metadata(cargo: str, pep440: str) -> None:
    assert _version.pep440(cargo) == pep440
    packaging_version = pytest.importorskip("packaging.version")
    assert str(packaging_version.Version(cargo)) == pep440


def test_check_native_accepts_the_same_build_and_refuses_another() -> None:
    native = types.ModuleType("fake_native")
    native.__version__ = "1.2.3-rc.1"  # type: ignore[attr-defined]
    assert _version.check_native(native, installed="1.2.3rc1") == "1.2.3rc1"
    with pytest.raises(ImportError, match=r"installed package is version 1\.2\.4 but its native module .* "
                                          r"is version 1\.2\.3-rc\.1: they come from different builds"):
        _version.check_native(native, installed="1.2.4")
    with pytest.raises(ImportError, match="carries no version"):
        _version.check_native(types.ModuleType("older_native"), installed="1.2.3")


def _package_copy_without_native(tmp_path: Path) -> Path:
    src = Path(msp.__file__).parent
    dst = tmp_path / "memory_service_processor"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    return dst


def test_a_stale_native_module_makes_the_import_fail_clearly(tmp_path: Path) -> None:
    """Python files of this build next to a native module of another: a clear ImportError."""
    pkg = _package_copy_without_native(tmp_path)
    (pkg / "_native.py").write_text('__version__ = "0.0.1"\n')
    r = subprocess.run([sys.executable, "-c", "import memory_service_processor"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: memory-service-processor: the installed package is version "
                           f"{msp.__version__} but its native module"), r.stderr
    assert "is version 0.0.1: they come from different builds" in last and "pip install" in last


def test_a_missing_native_module_makes_the_import_fail_clearly(tmp_path: Path) -> None:
    _package_copy_without_native(tmp_path)
    r = subprocess.run([sys.executable, "-c", "import memory_service_processor"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "its native module (memory_service_processor._native) cannot be imported" in last, r.stderr
    assert "Rust toolchain" in last
