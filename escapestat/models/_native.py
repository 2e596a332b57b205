"""C kernels for the grokking MLP and for AdamW on the CPU, compiled on first use.

Why: the MLP ensemble's step in batched torch ops streams every activation ([R, B, width]:
8 MB at R 256) through memory six or seven times, and AdamW its state three times; the
two together do not fit the cache. ``native/kernels.c`` runs one replica's whole
forward, backward and update inside one thread's cache, replicas shared out over OpenMP
threads (measured at R 256, p 23, width 128, B 64, 2 cores: loss and gradients 1.3 ms
against 5.2 ms for the batched ops; benchmarks/grok_throughput.py has the whole step).

How: the source is compiled once per machine with the system's C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``; ``-O3 -march=native``, OpenMP where the compiler has it) into
a cache folder (``$ESCAPESTAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/escapestat`` or
``~/.cache/escapestat``), keyed by the source, the compiler and the CPU, and loaded with
ctypes. OpenMP threads follow ``torch.set_num_threads`` (the library shares torch's
libgomp). Without a compiler, after a failed build, or with ``ESCAPESTAT_NATIVE=0``,
``kernels()`` is None and the callers run their torch code, which has the same formulas
(tests/models/test_native.py holds the two together).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

SOURCES = ("kernels.c", "kernel_body.h", "attention_body.h")
ABI_VERSION = 3
#: Tried in turn until one compiles: the fast build, then without -march=native (a
#: compiler that lacks it), then without OpenMP (one thread).
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fPIC", "-shared"),
    ("-O3", "-fopenmp", "-fno-math-errno", "-fPIC", "-shared"),
    ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared"),
    ("-O3", "-fno-math-errno", "-fPIC", "-shared"),
)
#: Vector lanes per dtype: the MLP kernel needs the width to be a multiple.
LANES = {torch.float32: 16, torch.float64: 8}
ACTIVATION_CODES = {"quadratic": 0, "relu": 1}

_lock = threading.Lock()
_loaded: NativeKernels | None = None
_why_not: str | None = None


class NativeKernels:
    """The compiled library: ``mlp_loss_grads``, ``mlp_hits`` and ``adamw``, float32 and
    float64."""

    def __init__(self, path: Path, compiler: str, flags: Sequence[str], version: str = ""):
        self.path, self.compiler, self.flags = path, compiler, tuple(flags)
        #: the compiler's own first line of ``--version``
        self.version = version
        lib = ctypes.CDLL(str(path))
        if lib.escapestat_abi_version() != ABI_VERSION:
            raise OSError(f"{path} is not this version's kernel library")
        self.openmp = bool(lib.escapestat_openmp())
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            mlp = getattr(lib, f"mlp_loss_grads_{suffix}")
            mlp.restype = ctypes.c_int
            mlp.argtypes = [i64, i64, i64, i64, ctypes.c_int] + [ptr] * 7 + [real]
            hits = getattr(lib, f"mlp_hits_{suffix}")
            hits.restype = ctypes.c_int
            hits.argtypes = [i64, i64, i64, i64, ctypes.c_int] + [ptr] * 5
            fwd = getattr(lib, f"attn_forward_{suffix}")
            fwd.restype = ctypes.c_int
            fwd.argtypes = [i64] * 6 + [ptr] * 5 + [real] + [ptr] * 5
            bwd = getattr(lib, f"attn_backward_{suffix}")
            bwd.restype = ctypes.c_int
            bwd.argtypes = [i64] * 6 + [ptr] * 5 + [real] + [ptr] * 11
            adam = getattr(lib, f"adamw_{suffix}")
            adam.restype = None
            adam.argtypes = [i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr,
                             ctypes.c_double, ctypes.c_double, ctypes.c_double, i64]
        self._lib = lib

    def _fn(self, name: str, dtype: torch.dtype):
        """The kernel ``name`` for float32 or float64 tensors."""
        return getattr(self._lib, f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")

    def describe(self) -> str:
        """What runs the kernels, for run records and benchmark tables."""
        words = self.version.split()
        compiler = " ".join(words[:1] + words[-1:]) if words else Path(self.compiler).name
        return f"C kernels ({compiler}{', OpenMP' if self.openmp else ', one thread'})"

    def mlp_loss_grads(self, activation: str, embed: torch.Tensor, weight: torch.Tensor,
                       pairs: torch.Tensor, labels: torch.Tensor, grad_embed: torch.Tensor,
                       grad_weight: torch.Tensor, floor_logp: float) -> torch.Tensor:
        """Loss [R] and, written into ``grad_embed``/``grad_weight``, the MLP's gradients
        (``mlp_ensemble.MLPEnsemble.loss_and_grads``' formulas, bias-free)."""
        for t in (embed, weight, grad_embed, grad_weight):
            _check_dense(t, embed.dtype)
        p, width = _mlp_shapes(embed, weight, pairs, labels)
        r, b = labels.shape
        for g, t in ((grad_embed, embed), (grad_weight, weight)):
            _check_shape(g, tuple(t.shape), "gradient")
        pairs, labels = _indices(pairs, p, "pairs"), _indices(labels, p, "labels")
        loss = embed.new_empty(r)
        _status(self._fn("mlp_loss_grads", embed.dtype)(
            r, b, p, width, ACTIVATION_CODES[activation], embed.data_ptr(), weight.data_ptr(),
            pairs.data_ptr(), labels.data_ptr(), grad_embed.data_ptr(), grad_weight.data_ptr(),
            loss.data_ptr(), floor_logp))
        return loss

    def mlp_hits(self, activation: str, embed: torch.Tensor, weight: torch.Tensor,
                 pairs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[R] int64: how many of each replica's ``pairs`` [R, N, 2] the MLP classifies as
        ``labels`` [R, N] (argmax logit, ties to the first, as torch.argmax)."""
        for t in (embed, weight):
            _check_dense(t, embed.dtype)
        p, width = _mlp_shapes(embed, weight, pairs, labels)
        r, n = labels.shape
        pairs, labels = _indices(pairs, p, "pairs"), _indices(labels, p, "labels")
        hits = torch.zeros(r, dtype=torch.long)
        _status(self._fn("mlp_hits", embed.dtype)(
            r, n, p, width, ACTIVATION_CODES[activation], embed.data_ptr(), weight.data_ptr(),
            pairs.data_ptr(), labels.data_ptr(), hits.data_ptr()))
        return hits

    def attn_forward(self, emb: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                     w_v: torch.Tensor, tokens: torch.Tensor, scale: float
                     ) -> tuple[torch.Tensor, ...]:
        """The transformer's attention up to the attended values (attention_body.h):
        (q [R, H, dh], kq [R, H, d], v [R, H, N, dh], attn [R, B, 3, H], z [R, B, H·dh])."""
        r, n, d = emb.shape
        h, dh = w_q.shape[1], w_q.shape[3]
        b = tokens.shape[1]
        _attention_inputs(emb, w_q, w_k, w_v, tokens)
        tokens = _indices(tokens, n - 3, "tokens")
        out = [emb.new_empty(shape) for shape in
               ((r, h, dh), (r, h, d), (r, h, n, dh), (r, b, 3, h), (r, b, h * dh))]
        _status(self._fn("attn_forward", emb.dtype)(
            r, b, n, d, h, dh, emb.data_ptr(), w_q.data_ptr(), w_k.data_ptr(), w_v.data_ptr(),
            tokens.data_ptr(), scale, *(t.data_ptr() for t in out)))
        return tuple(out)

    def attn_backward(self, emb: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                      w_v: torch.Tensor, tokens: torch.Tensor, scale: float,
                      saved: Sequence[torch.Tensor], d_z: torch.Tensor, d_x: torch.Tensor,
                      grads: Sequence[torch.Tensor]) -> None:
        """The attention's backward from ∂z and ∂x_eq into ``grads`` = (∇W_Q, ∇W_K, ∇W_V,
        ∇W_E, ∇W_pos); ``saved`` is ``attn_forward``'s (q, kq, v, attn)."""
        r, n, d = emb.shape
        h, dh = w_q.shape[1], w_q.shape[3]
        b = tokens.shape[1]
        d_z, d_x = d_z.contiguous(), d_x.contiguous()
        _attention_inputs(emb, w_q, w_k, w_v, tokens)
        expected = [(r, h, dh), (r, h, d), (r, h, n, dh), (r, b, 3, h), (r, b, h * dh),
                    (r, d), tuple(w_q.shape), tuple(w_k.shape), tuple(w_v.shape),
                    (r, n - 3, d), (r, 3, d)]
        for t, shape in zip((*saved, d_z, d_x, *grads), expected, strict=True):
            _check_dense(t, emb.dtype)
            _check_shape(t, shape, "attention buffer")
        tokens = _indices(tokens, n - 3, "tokens")
        _status(self._fn("attn_backward", emb.dtype)(
            r, b, n, d, h, dh, emb.data_ptr(), w_q.data_ptr(), w_k.data_ptr(), w_v.data_ptr(),
            tokens.data_ptr(), scale, *(t.data_ptr() for t in (*saved, d_z, d_x, *grads))))

    def adamw(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
              exp_avg: Sequence[torch.Tensor], exp_avg_sq: Sequence[torch.Tensor],
              lr: torch.Tensor, weight_decay: torch.Tensor, decay: Sequence[bool],
              betas: tuple[float, float], eps: float, step: int) -> None:
        """One AdamW step in place (``optimizers.AdamW``' formula), lr and weight decay [R]."""
        dtype, r = params[0].dtype, int(params[0].shape[0])
        groups = (params, grads, exp_avg, exp_avg_sq)
        for group in groups:
            if len(group) != len(params):
                raise ValueError(f"{len(group)} tensors for {len(params)} parameters")
            for t, param in zip(group, params, strict=True):
                _check_dense(t, dtype)
                _check_shape(t, tuple(param.shape), "optimizer tensor")
        for t in (lr, weight_decay):
            _check_dense(t, dtype)
            if t.shape != (r,):
                raise ValueError(f"lr and weight decay must be [{r}], got {tuple(t.shape)}")
        n = len(params)
        sizes = (ctypes.c_int64 * n)(*(t.numel() // max(r, 1) for t in params))
        flags = (ctypes.c_int8 * n)(*(1 if d else 0 for d in decay))
        ptrs = [(ctypes.c_void_p * n)(*(t.data_ptr() for t in group)) for group in groups]
        self._fn("adamw", dtype)(r, n, sizes, flags, *ptrs, lr.data_ptr(),
                                 weight_decay.data_ptr(), float(betas[0]), float(betas[1]),
                                 float(eps), int(step))


def _indices(t: torch.Tensor, high: int, what: str = "indices") -> torch.Tensor:
    """``t`` as contiguous int64 with every entry in [0, high): the kernels index memory
    with them, so a bad one must be an error here, not a stray read there."""
    if t.dtype != torch.long:
        raise TypeError(f"{what} must be int64")
    if t.numel():
        low, top = torch.aminmax(t)
        if int(low) < 0 or int(top) >= high:
            raise IndexError(f"{what} must lie in [0, {high}), got [{int(low)}, {int(top)}]")
    return t.contiguous()


def _check_shape(t: torch.Tensor, shape: tuple, what: str) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{what} of shape {tuple(t.shape)} where the kernel needs {shape}")


def _mlp_shapes(embed: torch.Tensor, weight: torch.Tensor, pairs: torch.Tensor,
                labels: torch.Tensor) -> tuple[int, int]:
    """(p, width), after checking that E [R, 2p, width], W [R, p, width], pairs [R, B, 2]
    and labels [R, B] agree: the kernel reads memory by these shapes."""
    r, p, width = (int(x) for x in weight.shape)
    _check_shape(embed, (r, 2 * p, width), "E")
    if width % LANES[weight.dtype]:
        raise ValueError(f"the MLP kernel needs a width that is a multiple of "
                         f"{LANES[weight.dtype]}, got {width}")
    if labels.dim() != 2 or labels.shape[0] != r:
        raise ValueError(f"labels of shape {tuple(labels.shape)}; the kernel needs [{r}, B]")
    _check_shape(pairs, (r, labels.shape[1], 2), "pairs")
    return p, width


def _attention_inputs(emb: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                      w_v: torch.Tensor, tokens: torch.Tensor) -> None:
    """Dense, and shaped as the attention kernels read them: emb [R, N, d], W_Q/K/V
    [R, H, d, dh], tokens [R, B, 3]."""
    r, _, d = emb.shape
    for t in (emb, w_q, w_k, w_v):
        _check_dense(t, emb.dtype)
    for t in (w_k, w_v):
        _check_shape(t, tuple(w_q.shape), "W_K/W_V")
    if w_q.dim() != 4 or w_q.shape[0] != r or w_q.shape[2] != d:
        raise ValueError(f"W_Q of shape {tuple(w_q.shape)} for rows of shape {tuple(emb.shape)}")
    if tokens.dim() != 3 or tokens.shape[0] != r or tokens.shape[2] != 3:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)}; the kernel needs [{r}, B, 3]")


def _status(code: int) -> None:
    if code == -2:
        raise MemoryError("a C kernel could not allocate its scratch memory")
    if code != 0:
        raise ValueError(f"a C kernel refused its input (code {code})")


def _check_dense(t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"the C kernels take contiguous CPU {dtype} tensors, got "
                         f"{t.dtype} on {t.device} (contiguous: {t.is_contiguous()})")


def kernels() -> NativeKernels | None:
    """The compiled kernels, building them on the first call; None where they cannot be had
    (``why_not`` says why)."""
    global _loaded, _why_not
    with _lock:
        if _loaded is None and _why_not is None:
            try:
                _loaded = _build()
            except (OSError, subprocess.SubprocessError) as err:
                _why_not = str(err).splitlines()[0] if str(err) else type(err).__name__
        return _loaded


def required() -> NativeKernels:
    """``kernels()`` for a caller that ``usable`` has cleared to run on them (never None)."""
    loaded_kernels = kernels()
    assert loaded_kernels is not None  # usable() said the kernels can be had
    return loaded_kernels


def loaded() -> NativeKernels | None:
    """The kernels if an earlier call built or loaded them (never starts a build)."""
    return _loaded


def why_not() -> str | None:
    """Why ``kernels()`` gave None (None if it has not been called or succeeded)."""
    return _why_not


def usable(t: torch.Tensor) -> bool:
    """Whether a model with parameters like ``t`` can run on the kernels (building them)."""
    return t.device.type == "cpu" and t.dtype in LANES and kernels() is not None


def reset() -> None:
    """Forget the loaded library and any failure, so the next ``kernels()`` tries again
    (for tests; the environment is read anew)."""
    global _loaded, _why_not
    with _lock:
        _loaded, _why_not = None, None


def _compiler() -> str:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        found = shutil.which(name)
        if found:
            return found
    raise OSError("no C compiler found (set CC, or install gcc or clang)")


def cache_dir() -> Path:
    """Where built libraries are kept."""
    if os.environ.get("ESCAPESTAT_CACHE_DIR"):
        return Path(os.environ["ESCAPESTAT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "escapestat"


def _cpu_id() -> str:
    """The CPU's model and feature flags (-march=native code runs only on its own kind)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(keep))


def _digest_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_digest(built: Path, target: Path) -> None:
    """The built library's SHA-256 beside where it will lie, written atomically first."""
    fd, tmp = tempfile.mkstemp(suffix=".sha256", dir=target.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(_sha256(built))
    os.replace(tmp, _digest_path(target))


def _intact(target: Path) -> bool:
    """Whether a cached library is the one built (a truncated copy, loaded, killed every
    later run with SIGBUS and was never rebuilt)."""
    try:
        return _digest_path(target).read_text().strip() == _sha256(target)
    except OSError:
        return False


def _build() -> NativeKernels:
    if os.environ.get("ESCAPESTAT_NATIVE", "1").strip().lower() in ("0", "no", "off", "false"):
        raise OSError("turned off by ESCAPESTAT_NATIVE")
    src_dir = Path(__file__).resolve().parent.parent / "native"  # escapestat/native/
    source = b"".join((src_dir / name).read_bytes() for name in SOURCES)
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, cc.encode(), version.stdout.encode(),
                                         " ".join(flags).encode(), platform.machine().encode(),
                                         _cpu_id().encode()])).hexdigest()[:16]
        target = cache_dir() / "native" / f"kernels-{key}.so"
        if target.exists() and not _intact(target):
            target.unlink(missing_ok=True)  # truncated or unverified: loading it can SIGBUS
        if not target.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                target = Path(tempfile.gettempdir()) / f"escapestat-{os.getuid()}" / target.name
                target.parent.mkdir(parents=True, exist_ok=True)
            # Built under a temporary name and renamed: workers that build at once never
            # load a half-written file.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            done = subprocess.run([cc, *flags, "-I", str(src_dir), str(src_dir / "kernels.c"),
                                   "-o", tmp, "-lm"], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode != 0:
                os.unlink(tmp)
                errors.append(done.stderr.strip().splitlines()[-1:] or ["failed"])
                continue
            _write_digest(Path(tmp), target)
            os.replace(tmp, target)
        return NativeKernels(target, cc, flags, version.stdout.strip().splitlines()[0]
                             if version.stdout.strip() else "")
    raise OSError(f"the C kernels did not compile with {cc}: {errors[-1][0]}")
