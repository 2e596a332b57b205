"""Teacher–student data for deep linear nets: y = A x + ε, x ~ N(0, I), A = U diag(s) Vᵀ.

Tensors carry a leading replica dimension R so every replica can own its training set.
Moments are what the linear engine needs: Sxx = XᵀX/n and Syx = YᵀX/n per replica.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from escapestat.errors import EscapestatError


@dataclass(frozen=True)
class Teacher:
    """The teacher map A = U diag(s) Vᵀ; ``u`` [d_out, K] and ``v`` [d_in, K] orthonormal."""

    matrix: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    strengths: torch.Tensor

    @property
    def d_in(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.matrix.shape[0])


def _orthonormal(rows: int, cols: int, rotate: bool, generator, dtype, device) -> torch.Tensor:
    if not rotate:
        return torch.eye(rows, cols, dtype=dtype, device=device)
    g = torch.randn(rows, rows, generator=generator, dtype=torch.float64, device=device)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))  # Haar-uniform, not biased by QR's sign choice
    return q[:, :cols].to(dtype)


def make_teacher(
    strengths, d_in: int, d_out: int, rotate: bool = False,
    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Teacher:
    """A teacher with the given singular values; axis-aligned modes unless ``rotate``."""
    s = torch.as_tensor(list(strengths), dtype=dtype, device=device)
    k = int(s.numel())
    if k > min(d_in, d_out):
        raise EscapestatError(
            f"{k} teacher modes do not fit in a {d_in} → {d_out} map (need ≤ {min(d_in, d_out)})"
        )
    u = _orthonormal(d_out, k, rotate, generator, dtype, device)
    v = _orthonormal(d_in, k, rotate, generator, dtype, device)
    return Teacher(matrix=(u * s) @ v.T, u=u, v=v, strengths=s)


def mode_strengths(end_to_end: torch.Tensor, teacher: Teacher) -> torch.Tensor:
    """u_kᵀ P v_k for each replica's end-to-end map P [R, d_out, d_in] → [R, K]."""
    return torch.einsum("ok,roi,ik->rk", teacher.u, end_to_end, teacher.v)


def _moments(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[1]
    return x.transpose(1, 2) @ x / n, y.transpose(1, 2) @ x / n


@dataclass
class Dataset:
    """Per-replica training and test sets: x [R, n, d_in], y [R, n, d_out]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def replicas(self) -> int:
        return int(self.x_train.shape[0])

    def train_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Sxx, Syx, mean ‖y‖²) of each replica's whole training set."""
        sxx, syx = _moments(self.x_train, self.y_train)
        return sxx, syx, self.y_train.square().sum(-1).mean(-1)

    def select(self, idx: torch.Tensor) -> None:
        """Keep only the replicas in ``idx`` (in that order)."""
        for name in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, name, getattr(self, name)[idx])

    def test_error(self, end_to_end: torch.Tensor) -> torch.Tensor:
        """Half mean squared test error per replica, in the loss's convention."""
        pred = self.x_test @ end_to_end.transpose(1, 2)
        return 0.5 * (pred - self.y_test).square().sum(-1).mean(-1)

    def train_error(self, end_to_end: torch.Tensor) -> torch.Tensor:
        """Half mean squared training error per replica (the data term of the loss)."""
        pred = self.x_train @ end_to_end.transpose(1, 2)
        return 0.5 * (pred - self.y_train).square().sum(-1).mean(-1)


def sample(
    teacher: Teacher, replicas: int, n: int, noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n fresh samples per replica: x ~ N(0, I), y = A x + noise_std · ε."""
    a = teacher.matrix
    x = torch.randn(replicas, n, teacher.d_in, generator=generator, dtype=a.dtype, device=a.device)
    y = x @ a.T
    if noise_std > 0:
        y = y + noise_std * torch.randn(
            y.shape, generator=generator, dtype=a.dtype, device=a.device
        )
    return x, y


def make_dataset(
    teacher: Teacher, replicas: int, n_train: int, n_test: int, noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> Dataset:
    """A fixed training set and a held-out test set per replica (the paper uses 512 + 512)."""
    if n_train < 1 or n_test < 1:
        raise EscapestatError("n_train and n_test must be at least 1")
    x_tr, y_tr = sample(teacher, replicas, n_train, noise_std, generator)
    x_te, y_te = sample(teacher, replicas, n_test, noise_std, generator)
    return Dataset(x_tr, y_tr, x_te, y_te)


def subsample(data: Dataset, n: int, generator: torch.Generator | None = None) -> Dataset:
    """Keep n training samples per replica, drawn without replacement (sparse grokking setup)."""
    r, pool = data.x_train.shape[:2]
    if not 1 <= n <= pool:
        raise EscapestatError(f"cannot keep {n} of {pool} training samples")
    keys = torch.rand(r, pool, generator=generator, device=data.x_train.device)
    idx = keys.argsort(dim=1)[:, :n]
    rows = torch.arange(r, device=idx.device)[:, None]
    return Dataset(data.x_train[rows, idx], data.y_train[rows, idx], data.x_test, data.y_test)
