"""Compiled update kernels, built on first use against the running MXNet and cached.

MXNet 1.9.1 loads operator libraries written against its ``mxnet/lib_api.h`` (the wheel ships the
header and ``src/lib_api.cc``). :func:`load` compiles ``nag_update.cc`` with the C++ compiler of
the machine (``$CXX``, default ``c++``) into a cache folder, loads it once per process, and
registers two operators:

* ``multi_nag_update(groups, ...)`` for float32/float64 weights;
* ``multi_mp_nag_update(groups, ...)`` for float16 weights with float32 master copies.

Both compute Nesterov momentum with the weight-decay term taken from the weight *before* the step
(MXNet's own kernels take it from the updated weight), in one pass over the arrays, for a group
of parameters per call, on CPU arrays.

The cache folder is ``$GLUON_ELASTIC_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/gluon_elastic`` (default
``~/.cache/gluon_elastic``); the file name holds a hash of the sources, the MXNet version, the
compiler and its flags (which depend on the CPU), so a change of any of them builds anew.
Concurrent processes build once (file lock).
When the build fails (no compiler) or ``GLUON_ELASTIC_KERNELS=0``, :func:`load` returns False and
logs why once; callers then use their exact multi-kernel fallback.
"""
import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

__all__ = ["load", "available", "multi_nag_update", "to_default_layout", "library_path"]

logger = logging.getLogger("gluon_elastic")

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nag_update.cc")
_state = {"loaded": None}   # None: not tried yet; True/False: the outcome


def _mxnet_sources():
    import mxnet as mx

    root = os.path.dirname(os.path.abspath(mx.__file__))
    return (os.path.join(root, "include"), os.path.join(root, "src", "lib_api.cc"),
            mx.__version__)


def _compiler():
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"


def _flags():
    """Compiler flags; on x86-64 CPUs with F16C, float16 conversions in hardware."""
    # -Bsymbolic binds the library's references to its own definitions: another extension of
    # the process may carry its own, different copy of lib_api's C++ classes (Horovod's MXNet
    # module does), and the dynamic linker would otherwise resolve ours to it (a crash while
    # the library registers its operators).
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-Wl,-Bsymbolic"]
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            with open("/proc/cpuinfo") as fin:
                if " f16c" in fin.read():
                    flags.append("-mf16c")
        except OSError:
            pass
    return flags


def library_path():
    """Where the compiled library for this MXNet and these sources lives (built or not)."""
    include, lib_api, version = _mxnet_sources()
    digest = hashlib.sha256()
    for path in (_SOURCE, os.path.join(include, "mxnet", "lib_api.h"), lib_api):
        with open(path, "rb") as fin:
            digest.update(fin.read())
    digest.update(version.encode())
    digest.update(" ".join([_compiler()] + _flags()).encode())
    cache = os.environ.get("GLUON_ELASTIC_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gluon_elastic")
    return os.path.join(cache, "libgluon_elastic_kernels-%s.so" % digest.hexdigest()[:16])


def _build(path):
    include, lib_api, _ = _mxnet_sources()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another process may be building the same file
        if os.path.exists(path):
            return
        handle, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
        os.close(handle)
        command = [_compiler()] + _flags() + ["-I" + include, lib_api, _SOURCE, "-o", partial]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise RuntimeError("%s failed: %s" % (" ".join(command), done.stderr[-2000:]))
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


def load():
    """Build (if needed) and load the kernels; True when they can be used in this process."""
    if _state["loaded"] is not None:
        return _state["loaded"]
    _state["loaded"] = False
    if os.environ.get("GLUON_ELASTIC_KERNELS", "1") == "0":
        logger.info("gluon_elastic kernels disabled (GLUON_ELASTIC_KERNELS=0): using the "
                    "multi-kernel fallback")
        return False
    try:
        import mxnet as mx

        path = library_path()
        if not os.path.exists(path):
            logger.info("building gluon_elastic's update kernels into %s", path)
            _build(path)
        mx.library.load(path, verbose=False)
        _state["loaded"] = True
    except Exception as err:  # any failure means: use the fallback, and say why once
        logger.warning("gluon_elastic's compiled update kernels are unavailable (%s); the "
                       "corrected nag update falls back to three kernels per step", err)
    return _state["loaded"]


def available():
    """Whether :func:`load` succeeded (loads on first call)."""
    return load()


def multi_nag_update(weights, grads, momenta, masters, lrs, wds, **hyper):
    """Nesterov update of a group of parameters in one operator call, in place.

    Parameters
    ----------
    weights, grads, momenta : list of NDArray
        Per parameter; float32 or float64 weights (then ``masters`` is None), or float16 weights
        and gradients with float32 momenta and ``masters`` (float32 master weights).
    masters : list of NDArray or None
    lrs, wds : list of float
        Per-parameter LR and weight decay.
    **hyper
        ``momentum``, ``rescale_grad``, ``clip_gradient`` (< 0: off), ``momentum_scale``.
    """
    import mxnet as mx

    internal = mx.nd._internal  # pylint: disable=protected-access
    if masters is None:
        groups = zip(weights, grads, momenta)
        operator = internal._gluon_elastic_multi_nag_update  # pylint: disable=protected-access
    else:
        groups = zip(weights, grads, momenta, masters)
        operator = internal._gluon_elastic_multi_mp_nag_update  # pylint: disable=protected-access
    arrays = [array for group in groups for array in group]
    operator(*arrays, out=list(weights), num_weights=len(weights), lrs=tuple(lrs),
             wds=tuple(wds), **hyper)


def to_default_layout(arrays):
    """Give every array MXNet's default memory layout, so that a library operator can read it.

    MKLDNN re-lays out convolution weights in place during an inference forward pass, from inside
    the forward operation, which MXNet's engine counts as a *read* of the weight; library
    operators cannot read such arrays. So each array is first waited for until no operation on it
    is pending (what the engine would wait for before the update writes it anyway; with nothing
    pending this costs about a microsecond), then ``MXNDArrayGetData`` turns an MKLDNN layout back
    to the default one (for the other arrays it only returns the data pointer).
    """
    from mxnet.base import _LIB, check_call

    pointer = ctypes.c_void_p()
    for array in arrays:
        check_call(_LIB.MXNDArrayWaitToWrite(array.handle))
        check_call(_LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
