"""Package metadata for gluon_elastic."""
from setuptools import find_packages, setup

setup(
    name="gluon_elastic",
    version="0.1.0",
    description="Elastic distributed training for MXNet/Gluon with Dynamic mini-batch SGD",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gluon_elastic", "gluon_elastic.*"]),
    # Compiled on first use against the installed MXNet (gluon_elastic.kernels).
    package_data={"gluon_elastic.kernels": ["*.cc"]},
    python_requires=">=3.11,<3.12",
    install_requires=[
        "mxnet==1.9.1",
        "numpy>=1.21,<1.24",
        "gluoncv==0.10.5.post0",
    ],
    extras_require={
        # tools/bootstrap.sh builds it from the source release for MXNet with Gloo, with the
        # fixes of tools/patch_horovod.py (HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 ...).
        "horovod": ["horovod==0.28.1"],
        "examples": ["mlxtend==0.23.1"],
        "test": ["pytest", "pytest-timeout", "mlxtend==0.23.1", "matplotlib"],
    },
    entry_points={"console_scripts": ["gluon-elastic-launch=gluon_elastic.launch:main"]},
)
