"""R replicas of a two-layer decoder-only transformer for a∘b mod p, as one batched model.

The architecture of Power et al. (2022, "Grokking: generalization beyond overfitting on
small algorithmic datasets") as Grokfast's baseline trains it (Lee et al. 2024): the
input is the sequence [a, ∘, b, =] over a vocabulary of p + 2 tokens ("=" is token p,
"∘" token p + 1); token and position embeddings; ``n_layers`` pre-LayerNorm blocks, each

    x ← x + Attn(LN₁(x)),    x ← x + W₂ GELU(W₁ LN₂(x) + b₁) + b₂

with causal multi-head self-attention (``n_heads`` heads, fused QKV projection with bias,
output projection with bias, scores scaled by 1/√d_head), then a final LayerNorm and the
logits read out (unembedded, no bias) at the last position over the p answer classes.

Every parameter is a tensor [R, ...] (``params``, named by ``param_names``), laid out as
row vectors times matrices: per layer ``ln1_w``, ``ln1_b`` [d], ``W_qkv`` [d, 3d] (q, k,
v side by side, heads consecutive within each), ``b_qkv`` [3d], ``W_o`` [d, d], ``b_o``
[d], ``ln2_w``, ``ln2_b`` [d], ``W_1`` [d, d_mlp], ``b_1`` [d_mlp], ``W_2`` [d_mlp, d],
``b_2`` [d]; then ``ln_f_w``, ``ln_f_b`` [d] and ``W_U`` [d, p]. The gradients come from
autograd over these batched ops (no C kernel): this model is the proof that a model is
one folder, not a speed record.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from escapestat.models._xent import cross_entropy
from escapestat.models.grokking._scores import chunked_accuracy, finite_replicas

LAYER_PARAMS = ("ln1_w", "ln1_b", "W_qkv", "b_qkv", "W_o", "b_o", "ln2_w", "ln2_b", "W_1",
                "b_1", "W_2", "b_2")
LN_EPS = 1e-5  # torch.nn.LayerNorm's


def param_names(n_layers: int) -> list[str]:
    """``W_E``, ``W_pos``, each layer's parameters (``L0.ln1_w`` …), ``ln_f_*``, ``W_U``."""
    return (["W_E", "W_pos"] + [f"L{i}.{n}" for i in range(n_layers) for n in LAYER_PARAMS]
            + ["ln_f_w", "ln_f_b", "W_U"])


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension with per-replica weight and bias [R, d]."""
    shape = (w.shape[0],) + (1,) * (x.dim() - 2) + (w.shape[1],)
    return F.layer_norm(x, x.shape[-1:], eps=LN_EPS) * w.view(shape) + b.view(shape)


def _affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [R, …, d_in] @ w [R, d_in, d_out] (+ b [R, d_out]) per replica."""
    r, d_in = x.shape[0], x.shape[-1]
    y = torch.bmm(x.reshape(r, -1, d_in), w).reshape(*x.shape[:-1], w.shape[-1])
    if b is not None:
        y = y + b.view((r,) + (1,) * (x.dim() - 2) + (w.shape[-1],))
    return y


class Transformer2Ensemble:
    """R two-layer decoder-only transformers for a∘b mod p (see the module docstring).

    Parameters
    ----------
    replicas, p : number of replicas R and the modulus (vocabulary p + 2, p answer classes).
    d_model, n_heads, n_layers, d_mlp : widths (Power et al., Grokfast: 128, 4, 2, 512).
    init_scale : multiplies every initial weight matrix and embedding. Embeddings are
        N(0, 1), weight matrices N(0, 1/fan_in), LayerNorm weights 1, biases 0.

    Attributes
    ----------
    params : list of [R, ...] tensors, in the order of ``param_names``.
    """

    SEQ = 4

    def __init__(self, replicas: int, p: int, d_model: int = 128, n_heads: int = 4,
                 n_layers: int = 2, d_mlp: int = 512, init_scale: float = 1.0,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.p, self.n_heads, self.n_layers = p, n_heads, n_layers
        d, vocab = d_model, p + 2
        shapes = {"W_E": (vocab, d), "W_pos": (self.SEQ, d), "ln_f_w": (d,), "ln_f_b": (d,),
                  "W_U": (d, p), "ln1_w": (d,), "ln1_b": (d,), "W_qkv": (d, 3 * d),
                  "b_qkv": (3 * d,), "W_o": (d, d), "b_o": (d,), "ln2_w": (d,),
                  "ln2_b": (d,), "W_1": (d, d_mlp), "b_1": (d_mlp,), "W_2": (d_mlp, d),
                  "b_2": (d,)}
        self.param_names = param_names(n_layers)
        self.params: list[torch.Tensor] = []
        for name in self.param_names:
            base = name.split(".")[-1]
            shape = (replicas, *shapes[base])
            if base.endswith("_w") and base.startswith("ln"):
                self.params.append(torch.ones(shape, dtype=dtype, device=device))
            elif base.startswith("b") or base.endswith("_b"):
                self.params.append(torch.zeros(shape, dtype=dtype, device=device))
            else:
                std = init_scale * (1.0 if base in ("W_E", "W_pos") else
                                    1 / math.sqrt(shapes[base][0]))
                w = torch.randn(shape, generator=generator, dtype=dtype, device=device)
                self.params.append(w.mul_(std))

    @property
    def replicas(self) -> int:
        return int(self.params[0].shape[0])

    def _named(self, params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(self.param_names, params, strict=True))

    def tokens(self, pairs: torch.Tensor) -> torch.Tensor:
        """[R, B, 4] token sequences [a, ∘, b, =] of ``pairs`` [R, B, 2]."""
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack([a, torch.full_like(a, self.p + 1), b, torch.full_like(a, self.p)],
                           dim=-1)

    def forward(self, pairs: torch.Tensor, params: list[torch.Tensor] | None = None
                ) -> torch.Tensor:
        """Logits [R, B, p] at the last position for ``pairs`` [R, B, 2]."""
        w = self._named(self.params if params is None else params)
        tok = self.tokens(pairs)
        r, b, s = tok.shape
        x = torch.gather(w["W_E"], 1, tok.reshape(r, b * s, 1).expand(-1, -1, w["W_E"].shape[-1]))
        x = x.reshape(r, b, s, -1) + w["W_pos"][:, None]
        d, h = x.shape[-1], self.n_heads
        mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        for i in range(self.n_layers):
            layer = {n: w[f"L{i}.{n}"] for n in LAYER_PARAMS}
            qkv = _affine(_layer_norm(x, layer["ln1_w"], layer["ln1_b"]), layer["W_qkv"],
                          layer["b_qkv"])
            q, k, v = (t.reshape(r, b, s, h, d // h).transpose(2, 3) for t in qkv.split(d, -1))
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
            attn = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
            x = x + _affine(attn.transpose(2, 3).reshape(r, b, s, d), layer["W_o"], layer["b_o"])
            hidden = F.gelu(_affine(_layer_norm(x, layer["ln2_w"], layer["ln2_b"]),
                                    layer["W_1"], layer["b_1"]))
            x = x + _affine(hidden, layer["W_2"], layer["b_2"])
        last = _layer_norm(x[:, :, -1], w["ln_f_w"], w["ln_f_b"])
        return _affine(last, w["W_U"])

    def loss_and_grads(self, pairs: torch.Tensor, labels: torch.Tensor
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-replica mean cross-entropy [R] on ``pairs``/``labels`` and its gradients
        (one [R, ...] tensor per parameter), by autograd; float32-accurate near p_y = 1
        (``xent.cross_entropy``)."""
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(True) for p in self.params]
            logits = self.forward(pairs, leaves)
            total = cross_entropy(logits, labels) * self.replicas  # Σ_r mean_b
            grads = torch.autograd.grad(total, leaves)
        with torch.no_grad():
            nll = torch.logsumexp(logits, -1) - logits.gather(-1, labels[..., None])[..., 0]
        return nll.mean(1).detach(), list(grads)

    @torch.no_grad()
    def accuracy(self, pairs: torch.Tensor, labels: torch.Tensor, chunk: int | None = None
                 ) -> torch.Tensor:
        """Per-replica fraction [R] of ``pairs`` [R, N, 2] whose argmax logit is ``labels``."""
        return chunked_accuracy(self.forward, pairs, labels,
                                chunk or max(1, 16384 // self.replicas), self.params[0].dtype)

    def finite(self) -> torch.Tensor:
        """[R] bool: every parameter of the replica is finite."""
        return finite_replicas(self.params)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only the replicas at positions ``idx`` (new tensors; the trial hands them to
        its optimizer)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.params[0].device)
        self.params = [p[idx] for p in self.params]
