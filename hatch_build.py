"""The native build of the parser: mypyc compiles the modules in NATIVE_MODULES to C extensions.

They are where a batch spends most of the service's own CPU: parsing each event, hashing its
PII (loadtests/RESULTS.md: the server's CPU per event about a fifth lower, batches 7-24 % more
events a second). mypyc compiles our typed Python as it is: the .py files stay the source and
the reference, and every test runs against both forms (scripts/test).

- ``pip install .`` (scripts/serve, the Dockerfile) builds a wheel with them compiled, through
  the hatchling hook below. Without a C compiler, or with INGEST_PURE_PYTHON=1, it installs the
  pure-Python package instead (the service logs ``native`` at start).
- ``pip install -e .`` (development, scripts/test) never compiles: an edit to a .py file takes
  effect at once.
- ``python hatch_build.py build`` compiles them in place, next to their .py files (what
  scripts/test and the benchmark of a checkout use); ``python hatch_build.py clean`` removes
  them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
NATIVE_MODULES = ("ingest/pii.py", "ingest/events.py")

# Run in a subprocess from an empty directory: setuptools would otherwise read our
# pyproject.toml (hatchling's, not its own), and mypy our strict configuration, which needs the
# runtime dependencies' types that a build environment does not have (they compile as Any).
_SETUP = """
import sys
from mypyc.build import mypycify
from setuptools import setup

out, temp, *sources = sys.argv[1:]
setup(
    name="ingest-native",
    py_modules=[],
    packages=[],
    ext_modules=mypycify(["--ignore-missing-imports", *sources], opt_level="3"),
    script_args=["build_ext", "--build-lib", out, "--build-temp", temp],
)
"""


class NativeBuildError(Exception):
    """mypyc or the C compiler failed; the message ends with what they printed."""


def compile_native(out: Path) -> list[Path]:
    """Compile NATIVE_MODULES into ``out`` (laid out as the package); the extension files made,
    relative to ``out``."""
    with tempfile.TemporaryDirectory() as temp:
        try:
            subprocess.run(  # noqa: S603 (our interpreter, our script, our module paths)
                [
                    sys.executable,
                    "-c",
                    _SETUP,
                    str(out),
                    temp,
                    *(str(ROOT / module) for module in NATIVE_MODULES),
                ],
                cwd=temp,
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            printed = f"{getattr(exc, 'stdout', '') or ''}{getattr(exc, 'stderr', '') or ''}"
            raise NativeBuildError(f"the native build failed: {exc}\n{printed[-4000:]}") from None
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.suffix in (".so", ".pyd"))


def clean() -> list[Path]:
    """Remove extensions compiled in place; the files removed."""
    removed = [
        p
        for pattern in ("ingest/*.so", "ingest/*.pyd", "*__mypyc*.so", "*__mypyc*.pyd")
        for p in ROOT.glob(pattern)
    ]
    for path in removed:
        path.unlink()
    return removed


def build_in_place() -> list[Path]:
    clean()
    with tempfile.TemporaryDirectory() as out:
        made = compile_native(Path(out))
        for relative in made:
            shutil.copy2(Path(out) / relative, ROOT / relative)
    return made


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script, outside a build environment
    pass
else:

    class NativeBuildHook(BuildHookInterface):  # type: ignore[misc]  # hatchling: a build dependency
        """Adds the compiled modules to a standard (not editable) wheel."""

        PLUGIN_NAME = "custom"

        def initialize(self, version: str, build_data: dict[str, Any]) -> None:
            self._out: str | None = None
            if self.target_name != "wheel" or version != "standard":
                return
            if os.environ.get("INGEST_PURE_PYTHON") == "1":
                return
            out = tempfile.mkdtemp(prefix="ingest-native-")
            try:
                made = compile_native(Path(out))
            except NativeBuildError as exc:
                # The same code, uncompiled: a machine without a C compiler still installs it.
                shutil.rmtree(out, ignore_errors=True)
                sys.stderr.write(f"ingest: installing pure Python; {exc}\n")
                return
            self._out = out
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            build_data["force_include"].update(
                {str(Path(out) / relative): str(relative) for relative in made}
            )

        def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
            if self._out is not None:
                shutil.rmtree(self._out, ignore_errors=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "build":
        try:
            built = build_in_place()
        except NativeBuildError as exc:
            sys.exit(str(exc))
        for made in built:
            sys.stdout.write(f"compiled {made}\n")
    elif command == "clean":
        for gone in clean():
            sys.stdout.write(f"removed {gone.relative_to(ROOT)}\n")
    else:
        sys.exit("usage: python hatch_build.py build|clean")
