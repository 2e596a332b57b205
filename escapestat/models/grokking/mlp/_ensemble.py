"""R one-hidden-layer MLPs on modular arithmetic as one batched model, with an explicit backward.

Per replica, on an index pair (a, b) with a, b ∈ {0, …, p − 1}:

    z = E[a] + E[p + b] (+ c),   h = σ(z),   logits = W h (+ d),

with E [2p, width] (rows 0…p − 1 embed operand a, rows p…2p − 1 operand b: the first
layer acting on the concatenated one-hot [e_a; e_b], done as a gather), W [p, width], and
optional biases c [width], d [p] (default none: Gromov's form f = W σ(U e_a + V e_b)).
σ is ``quadratic`` (z², Gromov's), ``relu`` or ``gelu`` (exact, erf form). The loss of a
minibatch of B pairs is the mean cross-entropy −(1/B) Σ log softmax(logits)[y].

The gradients are written out by hand (``loss_and_grads``), without autograd:

    δ = (softmax − onehot(y)) / B,   ∇W = δᵀ h,   ∇d = Σ δ,
    ∂z = (δ W) ⊙ σ'(z),   ∇c = Σ ∂z,   ∇E = ∂z rows added at a and at p + b,

the cross-entropy and δ by ``xent.xent_and_delta``, which keeps float32's digits once the
label's probability nears 1 (log_softmax does not, and that moved grokking times).

Parameters and gradients each live in one packed buffer (``optimizers.pack``), so the
fused optimizers read them in place.

Two routes compute the same formulas (``backend``): on the CPU, for the quadratic and
ReLU activations without biases, a C kernel that runs each replica's whole step in one
thread's cache (``native.py``, ``native/kernel_body.h``); elsewhere batched torch ops
(bmm, embedding_bag), which on the CPU stream each [R, B, width] activation through
memory several times per step.

Denormals: once the softmax saturates, the smallest probabilities underflow to subnormal
floats, which some CPUs multiply ~100× slower. The shifted logits are
floored at ``xent.PROB_FLOOR_DECADES`` decades above the log of the smallest normal number
(far below the float32 resolution of the loss or its gradient), so δ stays normal.
Products can still underflow, and so can AdamW's second moments: callers on the CPU
should also set ``torch.set_flush_denormal(True)`` (the C kernels flush in their own
threads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from escapestat.errors import EscapestatError
from escapestat.models import _native as native
from escapestat.models._optimizers import keep_packed_, pack
from escapestat.models._xent import floor_logp, xent_and_delta
from escapestat.models.grokking._scores import finite_replicas

ACTIVATIONS = ("quadratic", "relu", "gelu")

_SQRT_HALF = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _activate(name: str, z: torch.Tensor,
              out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(σ(z), s, c) with σ'(z) = c·s; σ(z) written to ``out`` if given."""
    if name == "quadratic":
        return torch.mul(z, z, out=out), z, 2.0
    if name == "relu":
        return torch.clamp(z, min=0, out=out), z > 0, 1.0
    cdf = 0.5 * (1 + torch.erf(z * _SQRT_HALF))
    return torch.mul(z, cdf, out=out), cdf + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI, 1.0


class MLPEnsemble:
    """R replicas of the MLP above; every parameter has the replicas as its leading dimension.

    Parameters
    ----------
    embed : [R, 2p, width]
    weight : [R, p, width]
    hidden_bias, out_bias : [R, width] and [R, p], or None (no bias)
    activation : "quadratic", "relu" or "gelu"

    Attributes
    ----------
    params : list of tensors
        [embed, weight] then the biases present, packed in one buffer.
    """

    def __init__(self, embed: torch.Tensor, weight: torch.Tensor,
                 hidden_bias: torch.Tensor | None = None, out_bias: torch.Tensor | None = None,
                 activation: str = "quadratic"):
        if activation not in ACTIVATIONS:
            raise EscapestatError(
                f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        self.activation = activation
        self.p = int(weight.shape[1])
        self.has_hidden_bias, self.has_out_bias = hidden_bias is not None, out_bias is not None
        tensors = [embed, weight] + [b for b in (hidden_bias, out_bias) if b is not None]
        self.params = pack(tensors)
        self.grads = pack([torch.zeros_like(t) for t in self.params])
        self._floor = floor_logp(weight.dtype)
        self._work: list[torch.Tensor] | None = None
        #: How ∇E is formed (see ``_embed_grad``): "onehot" (a bmm with one-hot counts)
        #: on every device and thread count, so a run repeats bit for bit whatever the
        #: threads (choosing index_add_ at one thread made the result depend on them);
        #: "index_add" may be set by hand (3.6 against 5.4 ms at one thread).
        self.embed_grad = "onehot"
        #: "native" (the C kernel) where it can run this model, else "torch"; "torch" may
        #: be set by hand (the benchmark's comparison, the tests' cross-check).
        self.backend = "native" if self.native_fits() else "torch"
        self._offsets()

    @classmethod
    def random(cls, replicas: int, p: int, width: int, activation: str = "quadratic",
               init_scale: float = 1.0, bias: bool = False,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> MLPEnsemble:
        """Gaussian init with std α/√fan_in, α = ``init_scale`` (Omnigrok's), biases zero.

        fan_in is 2 for the embedding (each hidden unit sees the two operands' rows, so z
        starts with unit variance) and width for W.
        """
        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(replicas, *shape, generator=generator, dtype=dtype, device=device)

        def zeros(n: int) -> torch.Tensor | None:
            return torch.zeros(replicas, n, dtype=dtype, device=device) if bias else None

        return cls(normal(2 * p, width) * (init_scale / math.sqrt(2)),
                   normal(p, width) * (init_scale / math.sqrt(width)),
                   zeros(width), zeros(p), activation)

    # ------------------------------------------------------------------ views
    @property
    def replicas(self) -> int:
        return int(self.params[0].shape[0])

    @property
    def width(self) -> int:
        return int(self.params[0].shape[2])

    @property
    def embed(self) -> torch.Tensor:
        return self.params[0]

    @property
    def weight(self) -> torch.Tensor:
        return self.params[1]

    @property
    def hidden_bias(self) -> torch.Tensor | None:
        return self.params[2] if self.has_hidden_bias else None

    @property
    def out_bias(self) -> torch.Tensor | None:
        return self.params[-1] if self.has_out_bias else None

    def native_fits(self) -> bool:
        """Whether the C kernel can run this model: CPU, float32/float64, quadratic or ReLU,
        no biases, width a multiple of the kernel's vector lanes, and the kernels built."""
        w = self.weight
        return (self.activation in native.ACTIVATION_CODES and not self.has_hidden_bias
                and not self.has_out_bias and w.dtype in native.LANES
                and self.width % native.LANES[w.dtype] == 0 and native.usable(w))

    def decay_mask(self, biases: bool = True) -> list[bool]:
        """Which of ``params`` to decay: all of them, or (``biases=False``) E and W only."""
        return [True, True] + [biases] * (len(self.params) - 2)

    def _offsets(self) -> None:
        """E's row of operand j's value x is x + j·p; flattened over replicas, + r·2p."""
        r, p, dev = self.replicas, self.p, self.params[0].device
        self._operand = torch.tensor([0, p], device=dev)
        self._shift = (torch.arange(r, device=dev) * (2 * p)).view(r, 1, 1) + self._operand

    # ------------------------------------------------------------------ forward
    def _hidden(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row numbers [R, B, 2] into E flattened to [R·2p, width], and z [R, B, width]."""
        r, b = pairs.shape[:2]
        rows = pairs + self._shift
        z = F.embedding_bag(rows.view(r * b, 2), self.embed.view(-1, self.width), mode="sum")
        z = z.view(r, b, self.width)
        hidden_bias = self.hidden_bias
        if hidden_bias is not None:
            z += hidden_bias.unsqueeze(1)
        return rows, z

    def _logits_t(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits transposed, [R, p, B]: W hᵀ runs faster than h Wᵀ for these shapes."""
        logits = torch.bmm(self.weight, h.transpose(1, 2), out=out)
        out_bias = self.out_bias
        if out_bias is not None:
            logits += out_bias.unsqueeze(2)
        return logits

    def logits(self, pairs: torch.Tensor) -> torch.Tensor:
        """[R, B, p] for pairs [R, B, 2]."""
        _, z = self._hidden(pairs)
        return self._logits_t(_activate(self.activation, z)[0]).transpose(1, 2)

    def _workspace(self, b: int) -> list[torch.Tensor]:
        """Buffers reused from step to step: [R, b, width] for h, then ∂z; [R, p, b] logits.

        Fresh multi-megabyte tensors every step cost page faults (thousands per step at
        R 256, as glibc hands freed memory back to the system) that took ~20% of a step.
        """
        if self._work is None or self._work[1].shape[2] != b:
            like, r = self.weight, self.replicas
            self._work = [like.new_empty(r, b, self.width), like.new_empty(r, self.p, b)]
        return self._work

    def loss_and_grads(self, pairs: torch.Tensor,
                       labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean cross-entropy per replica [R] and its gradients, one per ``params`` entry.

        ``pairs`` [R, B, 2] and ``labels`` [R, B] are each replica's minibatch. The
        gradients are the model's own buffers, overwritten by the next call.
        """
        if self.backend == "native":
            loss = native.required().mlp_loss_grads(self.activation, self.embed, self.weight,
                                                    pairs, labels, self.grads[0],
                                                    self.grads[1], self._floor)
            return loss, self.grads
        r, b = labels.shape
        work, logits = self._workspace(b)
        rows, z = self._hidden(pairs)
        h, slope, factor = _activate(self.activation, z, out=work)
        nll, delta = xent_and_delta(self._logits_t(h, out=logits), labels, 1, self._floor)
        loss = nll.mean(1)  # delta: B·δᵀ, [R, p, B]
        g_weight = self.grads[1]
        torch.baddbmm(g_weight, delta, h, beta=0, alpha=1 / b, out=g_weight)
        dz = torch.bmm(delta.transpose(1, 2), self.weight, out=work).mul_(slope)  # B·∂z / c
        extra = 2
        if self.has_hidden_bias:
            torch.sum(dz, 1, out=self.grads[extra]).mul_(factor / b)
            extra += 1
        if self.has_out_bias:
            torch.sum(delta, 2, out=self.grads[extra]).div_(b)
        self._embed_grad(pairs, rows, dz, factor / b)
        return loss, self.grads

    def _embed_grad(self, pairs: torch.Tensor, rows: torch.Tensor, dz: torch.Tensor,
                    scale: float) -> None:
        """∇E = scale · (rows of dz added at a and at p + b), into ``grads[0]``.

        The bmm with one-hot counts C [R, 2p, B] by default: CUDA's ``index_add_`` adds in
        a nondeterministic order, and one route for every thread count keeps runs exactly
        repeatable (same seed, same table). ``index_add`` (two ``index_add_`` over E's rows)
        measured 3.6 ms against 5.4 ms at R 256, p 23, width 128, B 64 on one thread.
        """
        grad = self.grads[0]
        if self.embed_grad == "index_add":
            flat = grad.view(-1, self.width).zero_()
            dz = dz.view(-1, self.width)
            flat.index_add_(0, rows[..., 0].reshape(-1), dz, alpha=scale)
            flat.index_add_(0, rows[..., 1].reshape(-1), dz, alpha=scale)
            return
        r, b = pairs.shape[:2]
        counts = dz.new_zeros(r, 2 * self.p, b)
        counts.scatter_(1, (pairs + self._operand).transpose(1, 2), 1.0)
        torch.baddbmm(grad, counts, dz, beta=0, alpha=scale, out=grad)

    # ------------------------------------------------------------------ checks
    @torch.no_grad()
    def accuracy(self, pairs: torch.Tensor, labels: torch.Tensor,
                 chunk: int | None = None) -> torch.Tensor:
        """[R] fraction of each replica's ``pairs`` [R, n, 2] whose argmax logit is its label.

        The torch route evaluates in chunks of ``chunk`` pairs per replica (default: about
        2²² hidden activations per chunk); the C kernel in blocks of 64 per replica.
        """
        r, n = labels.shape
        if self.backend == "native":
            hits = native.required().mlp_hits(self.activation, self.embed, self.weight,
                                              pairs, labels)
            return hits.to(self.weight.dtype) / n
        chunk = chunk or max(1, (1 << 22) // (r * max(self.width, self.p)))
        hits = torch.zeros(r, dtype=torch.long, device=labels.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            _, z = self._hidden(pairs[:, start:stop])
            guess = self._logits_t(_activate(self.activation, z)[0]).argmax(1)
            hits += (guess == labels[:, start:stop]).sum(1)
        return hits.to(self.weight.dtype) / n

    def finite(self) -> torch.Tensor:
        """[R] bool: every parameter of the replica is finite."""
        return finite_replicas(self.params)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep, in place, only the replicas at ``idx``: the same ``params`` tensor objects."""
        idx = idx.to(self.weight.device)
        keep_packed_(self.params, idx)
        keep_packed_(self.grads, idx)
        self._offsets()
        self._work = None
