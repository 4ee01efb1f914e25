"""Builds the optional C kernels; everything else about the package is in pyproject.toml.

``strategies._xlogx`` (the fused ``-sum p log p`` kernels behind BALD and entropy) is
optional: without a C compiler the install still succeeds, setuptools prints why the
extension was skipped, and the scorers use torch instead (about 3x slower for BALD; see
docs/strategies.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "strategies._xlogx",
            sources=["strategies/_xlogx.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
