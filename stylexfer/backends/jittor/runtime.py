"""Jittor's environment, set up before the first ``import jittor`` so that a user never sets a flag.

jittor 1.3.11 compiles its C++ core with the machine's g++ on first import and keeps it under
``$JITTOR_HOME/.cache/jittor``; then it fetches oneDNN (CPU matmul/conv) and, on CUDA, cutt/cub. This
module points ``JITTOR_HOME`` at the project's cache folder (``<paths.cache_dir>/jittor``), lets jittor
find those archives in the ``jittor-offline`` package (installed with the ``[jittor]`` extra), so it never
downloads, and turns CUDA off (``nvcc_path=""``) unless a CUDA device was asked for: a machine with
nvcc but no GPU (or a CUDA driver but no nvcc, where jittor would download its own toolkit) stays on the
CPU. jittor also writes its ``JITTOR_HOME`` into ``~/.cache/jittor/config.json``: that is jittor's own
behaviour, not undone here.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

from ...errors import ConfigError

EXTRA = 'pip install -e ".[jittor]"'
log = logging.getLogger(__name__)
_loaded: dict = {}


def check_installed() -> None:
    """One line naming the extra when jittor or its archives are missing, or numpy is 2.x (jittor 1.3.11
    reads numpy 2 arrays wrongly: measured, an int64 array came back as float bit patterns)."""
    for mod in ("jittor", "jittor_offline"):
        if importlib.util.find_spec(mod) is None:
            raise ConfigError(f"backend=jittor: {mod} is not installed; {EXTRA}")
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise ConfigError(f"backend=jittor: jittor 1.3.11 needs numpy<2 (found {numpy.__version__}); {EXTRA}")


def jittor(cache_dir: Path, device: str = "cpu"):
    """Import jittor with its home under ``cache_dir`` and CUDA on only for a ``cuda`` device; the module."""
    if "jt" in _loaded:
        jt = _loaded["jt"]
        jt.flags.use_cuda = int(device.startswith("cuda"))
        return jt
    check_installed()
    os.environ.setdefault("JITTOR_HOME", str(Path(cache_dir).expanduser().resolve() / "jittor"))
    os.environ.setdefault("log_silent", "1")  # its import chatter (info lines, the core-compile progress): we say it
    cuda = device.startswith("cuda")
    if not cuda:
        os.environ["nvcc_path"] = ""
    elif "nvcc_path" not in os.environ:
        nvcc = shutil.which("nvcc") or (
            "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
        )
        if nvcc is None:
            raise ConfigError(
                "backend=jittor, model.device=cuda: no nvcc on PATH (jittor compiles its CUDA kernels "
                "with it); set nvcc_path or use model.device=cpu"
            )
        os.environ["nvcc_path"] = nvcc
    if cuda:
        if os.environ.get("STYLEXFER_JITTOR_ANY_CUDA") != "1":  # the bench's experiments with a patched jittor
            _check_cuda_toolkit(os.environ["nvcc_path"])
        os.environ.setdefault("use_cutlass", "0")  # not among jittor-offline's archives: it would download it
    if cuda and ":" in device:  # jittor uses the first visible GPU
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", device.split(":", 1)[1])
    home = Path(os.environ["JITTOR_HOME"])
    if not any(home.glob(".cache/jittor/**/jittor_core*.so")):
        log.info(
            "jittor: compiling its C++ core on first use (about 2 minutes on 2 CPUs; once per machine, kept under %s)",
            home,
        )
    t0 = time.time()
    import jittor as jt

    # jittor's core sets the CPU to flush subnormals to zero; numpy then warns on every finfo() it computes
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal")
    # jittor installs a SIGCHLD handler that ends the whole process ("quick exit") when any child process dies
    # of a signal (meant for its data-loader workers): a killed subprocess of a run must not take the run down
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    jt.flags.use_cuda = int(cuda)
    jt.flags.log_silent = 0  # its kernel-compile progress ("Compiling Operators") shows; its import chatter did not
    log.info("jittor %s ready in %.1fs (%s)", jt.__version__, time.time() - t0, "CUDA" if cuda else "CPU")
    _loaded["jt"] = jt
    return jt


def _check_cuda_toolkit(nvcc: str) -> None:
    """jittor 1.3.11 does not build against CUDA 13 (measured on an H100 with nvcc 13.0: its headers read
    ``cudaDeviceProp`` fields CUDA 13 removed, its kernels are compiled as C++14 while CUDA 13's CCCL needs
    C++17, its softmax uses ``cub::Max``, its cuDNN loader wants cuDNN 8; with all of that patched, sampling
    ran and training failed with an illegal memory access in the backward pass — README, Backends)."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError as e:
        raise ConfigError(f"backend=jittor, model.device=cuda: cannot run nvcc ({e})") from None
    release = next(
        (line.split("release")[1].split(",")[0].strip() for line in out.splitlines() if "release" in line), ""
    )
    if release and int(release.split(".")[0]) >= 13:
        raise ConfigError(
            f"backend=jittor, model.device=cuda: jittor 1.3.11 does not run on CUDA {release} "
            "(README: Backends); use model.device=cpu, or point nvcc_path at a CUDA 11/12 toolkit"
        )


def pick_device(name: str) -> str:
    """``model.device=auto``: CUDA where a GPU and a toolkit jittor can build with are there, else the CPU."""
    if name != "auto":
        return name
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    nvcc = os.environ.get("nvcc_path") or shutil.which("nvcc")
    try:
        if nvcc:
            _check_cuda_toolkit(nvcc)
            return "cuda"
    except ConfigError as e:
        log.warning("%s: computing on the CPU", str(e).split(": ", 1)[1])
    return "cpu"


def default_cache() -> Path:
    """``paths.cache_dir``'s default (``$STYLEXFER_CACHE`` or ``~/.cache/stylexfer``)."""
    return Path(os.environ.get("STYLEXFER_CACHE") or Path.home() / ".cache" / "stylexfer")


def loaded():
    """The jittor module, imported by :func:`jittor` (on the CPU under the default cache if nothing did)."""
    if "jt" not in _loaded:
        return jittor(default_cache(), "cuda" if os.environ.get("nvcc_path") else "cpu")
    return _loaded["jt"]
