"""R replicas of a deep linear net as one batched model, trained from data moments.

For f(x) = W_L ··· W_1 x the minibatch loss (1/2B) Σ‖y − f(x)‖² depends on the data only
through Sxx = XᵀX/B and Syx = YᵀX/B, so with P = W_L ··· W_1 and G = P Sxx − Syx

    ∇W_l = (W_L ··· W_{l+1})ᵀ G (W_{l−1} ··· W_1)ᵀ + β W_l,

a few small batched matmuls whose cost does not grow with B; for small nets
with many replicas on CPU, a few vector ops over the replicas instead (``VECTOR_MAX_MADDS``).
Per-replica lr, β and temperature are tensors of shape [R], so one launch covers a whole
ladder.

The moments come from a sampler (``MomentSampler``): the population (``PopulationMoments``),
fresh samples every step (``FreshSampler``) or minibatches without replacement from each
replica's own training set (``MinibatchSampler``). Models and samplers shrink the same
way: ``keep(idx)`` keeps, in place, the replicas at positions ``idx``.

Here: the ensemble and ``MinibatchSampler``, whose CPU path lays its moments out as the
ensemble's replica-last weights; the update rules are in ``_steps``, the other samplers in
``_samplers``, the replica-axis tensor ops in ``_replica_ops``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from escapestat.models._broadcast import per_replica
from escapestat.models.deep_linear._replica_ops import (  # noqa: F401
    Scalar,
    _replica_last,
    _vector_matmul,
)
from escapestat.models.deep_linear._samplers import (  # noqa: F401
    FreshSampler,
    Moments,
    MomentSampler,
    PopulationMoments,
    _batch,
    _permutations_by_keys,
    permutations,
)
from escapestat.models.deep_linear._steps import langevin_step, sgd_step  # noqa: F401
from escapestat.models.deep_linear._tasks import Dataset, Teacher

#: Small nets on CPU with many replicas — up to ``VECTOR_MAX_MADDS`` multiply-adds per
#: replica in one gradient (d_in · (3 Σ_{l≥2} w_l w_{l−1} + d_out d_in): 728 for the paper's
#: 2 → 10 → 10 → 2) and at least ``VECTOR_MIN_REPLICAS`` replicas — keep their weights
#: replica-last in memory and do each tiny per-replica matmul as a few vector ops over R
#: (``_vector_matmul``). Measured on this project's 2-core CPU at R 4096, paper net: an SGD
#: step in 1.4 ms against 5–6.6 ms with bmm, whose cost there is per matrix, not per flop.
#: With fewer replicas (a chunk's tail) bmm's fewer ops win; at width 16 bmm wins at any R.
VECTOR_MAX_MADDS = 2048
VECTOR_MIN_REPLICAS = 512


def _gradient_madds(widths: Sequence[int]) -> int:
    d0 = widths[0]
    return d0 * (3 * sum(a * b for a, b in zip(widths[1:-1], widths[2:], strict=True))
                 + widths[-1] * d0)


class DeepLinearEnsemble:
    """Weights as tensors [R, out, in], one per layer; layer 1 acts first.

    Small nets with many replicas on CPU keep their weights replica-last in memory (still
    shaped [R, out, in]; see ``VECTOR_MAX_MADDS``): then the ensemble holds its own copy of
    the tensors it was given, and ``keep`` may change the layout.
    """

    def __init__(self, weights: Sequence[torch.Tensor]):
        self.weights = list(weights)
        self._small = (self.weights[0].device.type == "cpu"
                       and _gradient_madds(self.widths) <= VECTOR_MAX_MADDS)
        self._layout()

    def _layout(self) -> None:
        """Replica-last weights, and vector ops, while a small net has many replicas."""
        self.replica_last = self._small and self.replicas >= VECTOR_MIN_REPLICAS
        if self.replica_last:
            self.weights = [_replica_last(w) for w in self.weights]

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

    def keep(self, idx: torch.Tensor) -> None:
        """Keep, in place, only the replicas at positions ``idx`` (1-D integers, in that order)."""
        self.weights = [w[idx] for w in self.weights]
        self._layout()

    def _matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _vector_matmul(a, b) if self.replica_last else a @ b

    def prefixes(self) -> list[torch.Tensor]:
        """[W_1, W_2 W_1, …, W_L ··· W_1]."""
        out = [self.weights[0]]
        for w in self.weights[1:]:
            out.append(self._matmul(w, out[-1]))
        return out

    def end_to_end(self) -> torch.Tensor:
        """P = W_L ··· W_1, shape [R, d_out, d_in]."""
        return self.prefixes()[-1]

    def is_finite_and_bounded(self, limit: float) -> torch.Tensor:
        """Per replica: every weight finite and no larger than ``limit`` in magnitude."""
        ok = torch.ones(self.replicas, dtype=torch.bool, device=self.weights[0].device)
        for w in self.weights:
            big = w.abs().amax((1, 2))
            ok &= torch.isfinite(big) & (big <= limit)
        return ok

    def loss(
        self, sxx: torch.Tensor, syx: torch.Tensor, syy: torch.Tensor, beta: Scalar = 0.0
    ) -> torch.Tensor:
        """Per-replica ½ mean‖y − Px‖² + (β/2) Σ‖W_l‖² from the moments (syy = mean ‖y‖²)."""
        p = self.end_to_end()
        fit = 0.5 * syy - (p * syx).sum((1, 2)) + 0.5 * (self._matmul(p, sxx) * p).sum((1, 2))
        b = per_replica(beta, p).reshape(-1)
        l2 = sum(w.square().sum((1, 2)) for w in self.weights)
        return fit + 0.5 * b * l2

    def gradients(
        self, sxx: torch.Tensor, syx: torch.Tensor, beta: Scalar = 0.0
    ) -> list[torch.Tensor]:
        """∇W_l of the loss, from the moments (backprop through P by hand)."""
        if self.replica_last:
            sxx, syx = _replica_last(sxx), _replica_last(syx)
        mm = self._matmul
        pre = self.prefixes()
        back = mm(pre[-1], sxx) - syx  # G, then (W_L ··· W_{l+1})ᵀ G going down
        b = per_replica(beta, back)
        grads: list[torch.Tensor] = []  # from the last layer down, reversed at the end
        for layer in range(len(self.weights) - 1, -1, -1):
            w = self.weights[layer]
            g = back if layer == 0 else mm(back, pre[layer - 1].transpose(1, 2))
            grads.append(g.addcmul_(b, w))
            if layer:
                back = mm(w.transpose(1, 2), back)
        grads.reverse()
        return grads


#: Per-sample moment vectors (x xᵀ's upper triangle and y xᵀ: d_in(d_in + 1)/2 + d_out·d_in
#: numbers) are kept when they are at most this long; else the data are reordered per epoch.
PER_SAMPLE_MAX = 32


class MinibatchSampler:
    """Minibatches without replacement from each replica's own training set, reshuffled per epoch.

    **Epochs.** Each epoch every replica draws its own uniform permutation of its n samples
    (``permutations``: independent across replicas and epochs, all from ``generator``) and
    a call takes the next B samples in that order. When fewer than B remain, the call gets
    those that remain — the epoch's last, smaller batch, as a DataLoader that keeps its
    last batch — and the next call starts a new epoch with fresh permutations; so each
    epoch uses every sample exactly once. A batch size ≥ n is the full-batch twin: the
    training set's moments, drawing nothing and leaving the epoch where it was.

    **Batch-size schedules.** ``next_moments(batch_size)`` takes the size per call (one int
    for all replicas; None: the constructor's). A change mid-epoch carries on through the
    current permutation with the new size; the rule above still ends the epoch (a last
    batch of what remains, then a reshuffle), so a change never skips or repeats a sample.

    **How the moments are formed.** For small inputs (``PER_SAMPLE_MAX``, e.g. the paper's
    2 → … → 2) each sample's products x xᵀ (its upper triangle) and y xᵀ are formed once,
    and a minibatch's moments are the mean of its samples' vectors: the data are never
    reordered. On CPU the drawn permutation gives each sample its place in the epoch, and
    one scatter-add by batch label forms every remaining batch of the epoch at once (again
    after a batch-size change); elsewhere (CUDA) the permutation is the epoch order and
    each call gathers and sums its B vectors (deterministic, unlike a scatter-add there).
    Either way a uniform permutation, so the same law. For larger inputs each epoch puts
    the data in permuted order once and a call forms XᵀX/B and YᵀX/B from a slice.

    ``keep(idx)`` keeps replicas in place; it does not touch the ``Dataset`` the sampler was
    built from (the sampler holds what it needs; the dataset's owner keeps it in step).
    """

    def __init__(self, data: Dataset, batch_size: int, generator: torch.Generator | None = None):
        self.generator = generator
        self.replicas, self.n, self.d_in = (int(s) for s in data.x_train.shape)
        self.d_out = int(data.y_train.shape[2])
        self.batch_size = _batch(batch_size, 1)
        x, y = data.x_train, data.y_train
        self.device = x.device
        d, o = self.d_in, self.d_out
        tri = d * (d + 1) // 2  # distinct entries of the symmetric x xᵀ
        self.per_sample = tri + o * d <= PER_SAMPLE_MAX
        # How the per-sample path forms batches: scatter by label (CPU) or gather per call.
        self.scatter = self.per_sample and self.device.type == "cpu"
        if self.per_sample:  # [R, F, n]: x xᵀ's upper triangle, then y xᵀ; F = tri + o·d
            i, j = torch.triu_indices(d, d, device=self.device)
            xx = x[..., i] * x[..., j]
            yx = (y.unsqueeze(-1) * x.unsqueeze(-2)).flatten(2)
            self._source = torch.cat([xx, yx], dim=2).transpose(1, 2).contiguous()
            # Where each entry of Sxx, then Syx (flattened), sits in a moment vector.
            where = torch.empty(d, d, dtype=torch.long, device=self.device)
            where[i, j] = where[j, i] = torch.arange(tri, device=self.device)
            self._unpack = torch.cat([where.flatten(),
                                      torch.arange(tri, tri + o * d, device=self.device)])
        else:  # [R, n, d_in + d_out]
            self._source = torch.cat([x, y], dim=2)
        self._perm: torch.Tensor | None = None  # this epoch's permutation, [R, n]
        self._xy: torch.Tensor | None = None  # data path: this epoch's data in order
        self._pos = self.n  # samples of this epoch used so far (n: none left)
        self._plan: tuple[int, int, torch.Tensor, torch.Tensor] | None = None
        self._full: Moments | None = None

    @property
    def full(self) -> bool:
        """Whether the default batch size is the whole training set (full-batch twin)."""
        return self.batch_size >= self.n

    # -------------------------------------------------------------------- the protocol
    def next_moments(self, batch_size: int | None = None) -> Moments:
        b = _batch(batch_size, self.batch_size)
        if b >= self.n:
            return self._full_moments()
        if self._pos >= self.n:
            self._shuffle()
        pos, take = self._pos, min(b, self.n - self._pos)
        self._pos += take
        if not self.per_sample:
            return self._slice_moments(pos, take)
        if not self.scatter:
            assert self._perm is not None  # drawn by _shuffle at the epoch's start
            idx = self._perm[:, pos : pos + take].unsqueeze(1)
            sums = self._source.gather(2, idx.expand(-1, self._source.shape[1], -1)).sum(2)
            return self._split(sums / take)
        plan = self._plan
        if plan is None or plan[0] != b or (pos - plan[1]) % b:
            plan = self._plan = self._scatter_plan(pos, b)
        k = (pos - plan[1]) // b
        return plan[2][k], plan[3][k]

    def keep(self, idx: torch.Tensor) -> None:
        """Keep, in place, only the replicas at positions ``idx`` (1-D integers, in that order)."""
        idx = idx.to(self.device)
        self.replicas = int(idx.numel())
        self._source = self._source[idx]
        if self._perm is not None:
            self._perm = self._perm[idx]
        if self._xy is not None:
            self._xy = self._xy[idx]
        if self._plan is not None:
            b, start, sxx, syx = self._plan
            self._plan = (b, start, sxx[:, idx], syx[:, idx])
        self._full = None

    # -------------------------------------------------------------------- internals
    def _shuffle(self) -> None:
        self._perm = permutations(self.replicas, self.n, self.generator, self.device)
        self._pos, self._plan = 0, None
        if not self.per_sample:
            r, n = self.replicas, self.n
            rows = self._perm + n * torch.arange(r, device=self.device).unsqueeze(1)
            self._xy = self._source.reshape(r * n, -1).index_select(0, rows.flatten())
            self._xy = self._xy.view(r, n, -1)

    def _split(self, vectors: torch.Tensor) -> Moments:
        """[..., F] moment vectors → (Sxx [..., d_in, d_in], Syx [..., d_out, d_in])."""
        d, lead = self.d_in, vectors.shape[:-1]
        vectors = vectors.index_select(-1, self._unpack)
        return (vectors[..., : d * d].reshape(*lead, d, d),
                vectors[..., d * d :].reshape(*lead, self.d_out, d))

    def _scatter_plan(self, pos: int, b: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        """Every batch of size b from epoch position ``pos`` on, by one scatter-add.

        ``_perm[r, i]`` is sample i's place in replica r's epoch; its batch is
        (place − pos) // b, and samples already used (place < pos) go to a dropped bucket.
        """
        r, n, f = self.replicas, self.n, self._source.shape[1]
        count = -(-(n - pos) // b)
        perm = self._perm
        assert perm is not None  # drawn by _shuffle at the epoch's start
        label = perm - pos if pos else perm
        if b & (b - 1) == 0:
            label = label >> (b.bit_length() - 1)  # floor division by a power of two
        else:
            label = torch.div(label, b, rounding_mode="floor")
        if pos:
            label = label.clamp_(min=-1).add_(1)  # bucket 0: used before pos
        sums = self._source.new_zeros(r, f, count + (1 if pos else 0))
        sums.scatter_add_(2, label.unsqueeze(1).expand(r, f, n), self._source)
        sizes = torch.full((count,), float(b), dtype=sums.dtype, device=sums.device)
        sizes[-1] = n - pos - (count - 1) * b
        means = (sums[:, :, 1:] if pos else sums) / sizes  # [R, F, count]
        # [count, d_in² + d_out·d_in, R]: each batch's Sxx, Syx entries, replica-last in
        # memory (see DeepLinearEnsemble)
        vec = means.permute(2, 1, 0).index_select(1, self._unpack)
        d, o = self.d_in, self.d_out
        sxx = vec[:, : d * d].unflatten(1, (d, d)).permute(0, 3, 1, 2)
        syx = vec[:, d * d :].unflatten(1, (o, d)).permute(0, 3, 1, 2)
        return b, pos, sxx, syx

    def _slice_moments(self, pos: int, take: int) -> Moments:
        assert self._xy is not None  # drawn by _shuffle at the epoch's start
        batch = self._xy[:, pos : pos + take]
        x, y = batch[..., : self.d_in], batch[..., self.d_in :]
        return x.transpose(1, 2) @ x / take, y.transpose(1, 2) @ x / take

    def _full_moments(self) -> Moments:
        if self._full is None:
            if self.per_sample:
                self._full = self._split(self._source.mean(2))
            else:
                x, y = self._source[..., : self.d_in], self._source[..., self.d_in :]
                self._full = (x.transpose(1, 2) @ x / self.n, y.transpose(1, 2) @ x / self.n)
        return self._full
