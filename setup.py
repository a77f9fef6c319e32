"""Build glue that pyproject.toml cannot express.

* ``plugins/<name>/`` is installed as the package ``gatewayd_<name>`` (the first-party
  plugins live in the source tree under short names, see ARCHITECTURE.md).
* The native core is compiled by cffi in API mode (``native/build_native.py``).
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

packages = find_packages(where=HERE, include=["gatewayd", "gatewayd.*"])
package_dir = {}
plugins_root = os.path.join(HERE, "plugins")
for name in sorted(os.listdir(plugins_root)):
    src = os.path.join("plugins", name)
    if not os.path.isfile(os.path.join(HERE, src, "__init__.py")):
        continue
    pkg = f"gatewayd_{name}"
    packages.append(pkg)
    package_dir[pkg] = src
    for sub in find_packages(where=os.path.join(HERE, src)):
        packages.append(f"{pkg}.{sub}")
        package_dir[f"{pkg}.{sub}"] = os.path.join(src, *sub.split("."))

cffi_modules = []
if os.path.exists(os.path.join(HERE, "native", "build_native.py")):
    cffi_modules.append("native/build_native.py:ffibuilder")

class BuildExt(build_ext):
    """One clear line when the native extension cannot be compiled (usually: no C compiler)."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # CompileError / DistutilsExecError / CCompilerError, depending on setuptools
            if "Compile" not in type(e).__name__ and "Exec" not in type(e).__name__ \
                    and "CCompiler" not in type(e).__name__ and "PlatformError" not in type(e).__name__:
                raise
            raise SystemExit(
                "gatewayd: cannot build the native extension (native/*.c): a C compiler and the Python headers "
                f"are needed (Debian: apt-get install gcc python3-dev). Compiler said: {e}") from None


setup(packages=packages, package_dir=package_dir, cffi_modules=cffi_modules, cmdclass={"build_ext": BuildExt})
