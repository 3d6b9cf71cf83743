"""Build the one extension, fastq._core, from _core.pyx and the C11 core.

Environment switches:
  FASTQ_DEBUG=1        -O0 -g, assertions on
  FASTQ_SANITIZE=address,undefined   build the extension with sanitizers
"""
import glob
import os

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - build requirement in pyproject.toml
    raise SystemExit("building fastq needs Cython>=3 (pip install cython)")

native = sorted(glob.glob("src/fastq/_native/*.c"))
cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-unused-function"]
ldflags = []
if os.environ.get("FASTQ_DEBUG"):
    cflags += ["-O0", "-g", "-UNDEBUG"]
else:
    cflags += ["-O2"]
san = os.environ.get("FASTQ_SANITIZE")
if san:
    cflags += [f"-fsanitize={san}", "-fno-omit-frame-pointer", "-g"]
    ldflags += [f"-fsanitize={san}"]

ext = Extension(
    "fastq._core",
    sources=["src/fastq/_core.pyx"] + native,
    include_dirs=["src/fastq/_native"],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
    depends=glob.glob("src/fastq/_native/*.h") + ["src/fastq/_capi.pxd"],
)

setup(
    ext_modules=cythonize(
        [ext],
        compiler_directives={"language_level": "3"},
        include_path=["src/fastq"],
    ),
)
