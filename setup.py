"""Build of the optional C extension; everything else is declared in pyproject.toml.

``processors._logscan`` (processors/_logscan.c) reads the hot path's per-record fields
straight from the OTLP bytes. It is optional: without a C compiler the install still
succeeds and processors/base.py reads the decoded messages instead (slower; see
docs/performance.md); ``lipservice run`` then warns at start, saying why.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("processors._logscan", ["processors/_logscan.c"],
                             optional=True, extra_compile_args=["-O3"])])
