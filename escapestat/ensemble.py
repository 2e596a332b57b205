"""R replicas of a deep linear net as one batched model, trained from data moments.

For f(x) = W_L ··· W_1 x the minibatch loss (1/2B) Σ‖y − f(x)‖² depends on the data only
through Sxx = XᵀX/B and Syx = YᵀX/B, so with P = W_L ··· W_1 and G = P Sxx − Syx

    ∇W_l = (W_L ··· W_{l+1})ᵀ G (W_{l−1} ··· W_1)ᵀ + β W_l,

a few small batched matmuls whose cost does not grow with B (design §5). Per-replica lr,
β and temperature are tensors of shape [R], so one launch covers a whole ladder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .tasks import Dataset, Teacher, sample

Scalar = float | torch.Tensor


def _per_replica(value: Scalar, like: torch.Tensor) -> torch.Tensor:
    """A float or an [R] tensor, shaped [R, 1, 1] (or scalar) to broadcast over weights."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.to(like.dtype).reshape(-1, 1, 1)
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


class DeepLinearEnsemble:
    """Weights as tensors [R, out, in], one per layer; layer 1 acts first."""

    def __init__(self, weights: Sequence[torch.Tensor]):
        self.weights = list(weights)

    @property
    def replicas(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def widths(self) -> list[int]:
        return [int(self.weights[0].shape[2])] + [int(w.shape[1]) for w in self.weights]

    @classmethod
    def random(
        cls, replicas: int, widths: Sequence[int], scale: float = 1.0,
        generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> DeepLinearEnsemble:
        """Gaussian init with variance scale² / fan_in per layer."""
        layers = []
        for d_in, d_out in zip(widths[:-1], widths[1:], strict=True):
            w = torch.randn(replicas, d_out, d_in, generator=generator, dtype=dtype, device=device)
            layers.append(w * (scale / d_in**0.5))
        return cls(layers)

    @classmethod
    def aligned(
        cls, replicas: int, teacher: Teacher, widths: Sequence[int], amplitudes: Sequence[float],
        noise: float = 0.0, generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    ) -> DeepLinearEnsemble:
        """Balanced, teacher-aligned start: hidden unit k carries mode k with amplitude a_k.

        W_1 = Σ a_k e_k v_kᵀ, middle layers Σ a_k e_k e_kᵀ, W_L = Σ a_k u_k e_kᵀ, so mode k's
        end-to-end strength is a_k^L; then Gaussian noise of std ``noise`` on every weight.
        """
        k = len(amplitudes)
        if any(h < k for h in widths[1:-1]):
            raise ValueError(f"hidden widths {list(widths[1:-1])} are narrower than {k} modes")
        amp = torch.as_tensor(list(amplitudes), dtype=dtype, device=device)
        depth = len(widths) - 1
        layers = []
        for layer, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            w = torch.zeros(d_out, d_in, dtype=dtype, device=device)
            if layer == 0 and depth == 1:
                w = (teacher.u.to(dtype) * amp) @ teacher.v.to(dtype).T
            elif layer == 0:
                w[:k] = (teacher.v.to(dtype) * amp).T
            elif layer == depth - 1:
                w[:, :k] = teacher.u.to(dtype) * amp
            else:
                w[:k, :k] = torch.diag(amp)
            w = w.expand(replicas, d_out, d_in).clone()
            if noise > 0:
                w += noise * torch.randn(w.shape, generator=generator, dtype=dtype, device=device)
            layers.append(w)
        return cls(layers)

    def select(self, idx: torch.Tensor) -> DeepLinearEnsemble:
        """The replicas in ``idx`` as a new ensemble."""
        return DeepLinearEnsemble([w[idx] for w in self.weights])

    def prefixes(self) -> list[torch.Tensor]:
        """[W_1, W_2 W_1, …, W_L ··· W_1]."""
        out = [self.weights[0]]
        for w in self.weights[1:]:
            out.append(w @ out[-1])
        return out

    def end_to_end(self) -> torch.Tensor:
        """P = W_L ··· W_1, shape [R, d_out, d_in]."""
        return self.prefixes()[-1]

    def is_finite_and_bounded(self, limit: float) -> torch.Tensor:
        """Per replica: every weight finite and no larger than ``limit`` in magnitude."""
        ok = torch.ones(self.replicas, dtype=torch.bool, device=self.weights[0].device)
        for w in self.weights:
            big = w.abs().flatten(1).amax(1)
            ok &= torch.isfinite(big) & (big <= limit)
        return ok

    def loss(
        self, sxx: torch.Tensor, syx: torch.Tensor, syy: torch.Tensor, beta: Scalar = 0.0
    ) -> torch.Tensor:
        """Per-replica ½ mean‖y − Px‖² + (β/2) Σ‖W_l‖² from the moments (syy = mean ‖y‖²)."""
        p = self.end_to_end()
        fit = 0.5 * syy - (p * syx).sum((1, 2)) + 0.5 * ((p @ sxx) * p).sum((1, 2))
        b = _per_replica(beta, p).reshape(-1)
        l2 = sum(w.square().sum((1, 2)) for w in self.weights)
        return fit + 0.5 * b * l2

    def gradients(
        self, sxx: torch.Tensor, syx: torch.Tensor, beta: Scalar = 0.0
    ) -> list[torch.Tensor]:
        """∇W_l of the loss, from the moments (backprop through P by hand)."""
        pre = self.prefixes()
        back = pre[-1] @ sxx - syx  # G, then (W_L ··· W_{l+1})ᵀ G going down
        b = _per_replica(beta, back)
        grads: list[torch.Tensor] = [None] * len(self.weights)  # type: ignore[list-item]
        for layer in range(len(self.weights) - 1, -1, -1):
            w = self.weights[layer]
            g = back if layer == 0 else back @ pre[layer - 1].transpose(1, 2)
            grads[layer] = g.addcmul_(b, w)
            if layer:
                back = w.transpose(1, 2) @ back
        return grads


def sgd_step(
    model: DeepLinearEnsemble, sxx: torch.Tensor, syx: torch.Tensor, lr: Scalar, beta: Scalar
) -> None:
    """W_l ← W_l − lr ∇W_l in place (the minibatch noise is in the moments)."""
    grads = model.gradients(sxx, syx, beta)
    step = _per_replica(lr, grads[0])
    for w, g in zip(model.weights, grads, strict=True):
        w.addcmul_(step, g, value=-1)


def langevin_step(
    model: DeepLinearEnsemble, sxx: torch.Tensor, syx: torch.Tensor, lr: Scalar, beta: Scalar,
    temperature: Scalar, generator: torch.Generator | None = None,
) -> None:
    """W_l ← W_l − lr ∇W_l + √(2 lr T) ξ: Euler–Maruyama, stationary law ∝ exp(−loss / T)."""
    grads = model.gradients(sxx, syx, beta)
    step = _per_replica(lr, grads[0])
    kick = torch.sqrt(2 * step * _per_replica(temperature, grads[0]))
    for w, g in zip(model.weights, grads, strict=True):
        xi = torch.randn(w.shape, generator=generator, dtype=w.dtype, device=w.device)
        w.addcmul_(step, g, value=-1).addcmul_(kick, xi)


class PopulationMoments:
    """The population's moments (Sxx = I, Syx = A): full-gradient dynamics on the true loss."""

    def __init__(self, teacher: Teacher, replicas: int):
        self.teacher, self.replicas = teacher, replicas

    def next_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.teacher.matrix
        eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
        return (eye.expand(self.replicas, -1, -1), a.expand(self.replicas, -1, -1))

    def select(self, idx: torch.Tensor) -> None:
        self.replicas = int(idx.numel())


class FreshSampler:
    """A fresh minibatch of B samples per replica and step (online SGD)."""

    def __init__(
        self, teacher: Teacher, replicas: int, batch_size: int, noise_std: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        self.teacher, self.replicas, self.batch_size = teacher, replicas, batch_size
        self.noise_std, self.generator = noise_std, generator

    def next_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = sample(self.teacher, self.replicas, self.batch_size, self.noise_std, self.generator)
        return x.transpose(1, 2) @ x / self.batch_size, y.transpose(1, 2) @ x / self.batch_size

    def select(self, idx: torch.Tensor) -> None:
        self.replicas = int(idx.numel())


def _permutations(replicas: int, n: int, generator, device) -> torch.Tensor:
    """An independent uniform permutation of range(n) per replica, [R, n]."""
    if torch.device(device).type == "cpu":
        # On CPU one randperm per replica beats sorting random keys (≈ 2× at R 4096).
        out = torch.empty(replicas, n, dtype=torch.long)
        for row in out:
            torch.randperm(n, generator=generator, out=row)
        return out
    keys = torch.rand(replicas, n, generator=generator, device=device)
    return keys.argsort(dim=1)


class MinibatchSampler:
    """Minibatches without replacement from each replica's own training set, reshuffled per epoch.

    Each epoch every replica draws its own permutation; its data are put in that order once,
    so a minibatch is a contiguous slice. When the moments of a batch are no larger than
    the batch (d_in ≤ B), all of an epoch's batch moments are formed in one batched matmul.
    A batch size of at least the training-set size is the full-batch twin: the moments are
    the training set's, computed once. A last, smaller batch is kept (like a DataLoader).
    """

    def __init__(self, data: Dataset, batch_size: int, generator: torch.Generator | None = None):
        self.data, self.generator = data, generator
        self.n = int(data.x_train.shape[1])
        self.batch_size = min(int(batch_size), self.n)
        self.full = self.batch_size >= self.n
        self._full_moments = data.train_moments()[:2] if self.full else None
        self.d_in = int(data.x_train.shape[2])
        self._per_epoch = self.d_in <= self.batch_size
        self._starts = list(range(0, self.n, self.batch_size))
        self._step = len(self._starts)
        self._source = torch.cat([data.x_train, data.y_train], dim=2)
        self._xy: torch.Tensor | None = None  # this epoch's data, [R, n, d_in + d_out]
        self._epoch: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _shuffle(self) -> None:
        r, device = self._source.shape[0], self._source.device
        perm = _permutations(r, self.n, self.generator, device)
        perm += self.n * torch.arange(r, device=device)[:, None]
        xy = self._source.reshape(r * self.n, -1).index_select(0, perm.flatten())
        self._xy = xy.view(r, self.n, -1)
        self._step = 0
        self._epoch = []
        if self._per_epoch:
            b, full = self.batch_size, (self.n // self.batch_size) * self.batch_size
            blocks = self._xy[:, :full].reshape(r, full // b, b, -1)
            mom = blocks.transpose(2, 3) @ blocks[..., : self.d_in] / b
            self._epoch = [(mom[:, k, : self.d_in], mom[:, k, self.d_in :])
                           for k in range(full // b)]
            if full < self.n:
                self._epoch.append(self._moments(full, self.n))

    def _moments(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._xy[:, start:stop]
        x, y = batch[..., : self.d_in], batch[..., self.d_in :]
        b = stop - start
        return x.transpose(1, 2) @ x / b, y.transpose(1, 2) @ x / b

    def next_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.full:
            return self._full_moments
        if self._step >= len(self._starts):
            self._shuffle()
        k = self._step
        self._step += 1
        if self._per_epoch:
            return self._epoch[k]
        start = self._starts[k]
        return self._moments(start, min(start + self.batch_size, self.n))

    def select(self, idx: torch.Tensor) -> None:
        self.data.select(idx)
        self._source = self._source[idx]
        if self._xy is not None:
            self._xy = self._xy[idx]
        self._epoch = [(a[idx], b[idx]) for a, b in self._epoch]
        if self._full_moments is not None:
            self._full_moments = tuple(m[idx] for m in self._full_moments)
