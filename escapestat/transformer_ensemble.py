"""R replicas of a one-layer transformer for a∘b mod p, as one batched model.

The architecture is Nanda et al.'s ("Progress measures for grokking via mechanistic
interpretability", 2023): the input for a∘b is the sequence [a, b, "="] over a vocabulary
of p + 1 tokens ("=" is token p); token and position embeddings; one attention layer of
``n_heads`` heads (no biases, causal, scores scaled by 1/√d_head); a ReLU MLP; residual
connections around both; no LayerNorm; the logits are read out (unembedded) at the last
position, over the p answer classes only. Per replica r, with x_s the residual at s:

    x_s  = W_E[t_s] + W_pos[s]
    x'_2 = x_2 + W_O concat_h Σ_s softmax_s(q_h·k_hs / √d_head) v_hs,
           q_h = W_Q[h] x_2,  k_hs = W_K[h] x_s,  v_hs = W_V[h] x_s
    x''_2 = x'_2 + W_out relu(W_in x'_2 + b_in) + b_out
    logits = W_Uᵀ x''_2

Only the last position is read out and there is one layer, so only its query is needed;
that query may see all three positions, so the causal mask never hides anything from it
(the other queries are never formed). x_2 is the same for every input ("=" at position 2),
and keys and values are linear in the embeddings, so the (p + 1)-row table W_E is
projected once per call and each operand's key and value are a one-hot matmul (bmm, also
in the backward; no gather/scatter).

Every parameter is a tensor [R, ...] (``params``, named by ``param_names``, in Nanda's
layout: W_E [V, d], W_pos [3, d], W_Q/W_K/W_V [H, d_head, d], W_O [d, H·d_head],
W_in [d_mlp, d], b_in [d_mlp], W_out [d, d_mlp], b_out [d], W_U [d, p]). Gradients come
from one autograd backward of the summed per-replica losses: the replicas share no
parameter, so each replica's gradient is exactly its own (design §5: nonlinear models use
autograd). Once softmax saturates its outputs may underflow to denormals, which made a
CPU ``bmm`` ~100× slower here (design §5): callers on CPU should set
``torch.set_flush_denormal(True)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PARAM_NAMES = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out",
               "W_U")


class TransformerEnsemble:
    """R one-layer transformers for a∘b mod p (see the module docstring for the formula).

    Parameters
    ----------
    replicas, p : number of replicas R and the modulus (vocabulary p + 1, p answer classes).
    d_model, n_heads, d_mlp : widths (Nanda et al.: 128, 4, 512; d_head = d_model / n_heads).
    init_scale : multiplies every initial weight. The init is Nanda et al.'s: every weight
        matrix and embedding N(0, 1/d_model), except the unembedding W_U, N(0, 1/(p + 1))
        (1/√d_vocab); biases zero. Each replica draws its own from ``generator``.

    Attributes
    ----------
    params : list of [R, ...] tensors, in the order of ``param_names``. They do not
        require grad; an optimizer may update them in place.
    param_names : the names above (``PARAM_NAMES``).
    decay_mask : per parameter, True for the weight matrices and embeddings (W_*), False
        for the biases (b_in, b_out). Nanda et al. decay every parameter (AdamW's default
        over ``model.parameters()``); to reproduce that exactly, ignore the mask.
    """

    def __init__(
        self, replicas: int, p: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512,
        init_scale: float = 1.0, generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    ):
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.p, self.n_heads, self.d_head = p, n_heads, d_model // n_heads
        vocab, d, h, dh = p + 1, d_model, n_heads, self.d_head
        shapes = {"W_E": (vocab, d), "W_pos": (3, d), "W_Q": (h, dh, d), "W_K": (h, dh, d),
                  "W_V": (h, dh, d), "W_O": (h, dh, d), "W_in": (d_mlp, d), "b_in": (d_mlp,),
                  "W_out": (d, d_mlp), "b_out": (d,), "W_U": (d, p)}
        self.param_names = list(PARAM_NAMES)
        self.decay_mask = [name.startswith("W_") for name in self.param_names]
        self.params = []
        for name in self.param_names:
            shape = (replicas, *shapes[name])
            if name.startswith("b_"):
                self.params.append(torch.zeros(shape, dtype=dtype, device=device))
                continue
            std = init_scale / math.sqrt(vocab if name == "W_U" else d)
            w = torch.randn(shape, generator=generator, dtype=dtype, device=device)
            self.params.append(w.mul_(std))

    @property
    def replicas(self) -> int:
        return int(self.params[0].shape[0])

    def _rows(self, pairs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[R, B, 3, V + 3]: position s of [a, b, "="] selects its token's row and row V + s."""
        R, B, _ = pairs.shape
        tokens = torch.cat([pairs, pairs.new_full((R, B, 1), self.p)], 2)
        rows = torch.zeros(R, B, 3, self.p + 4, dtype=dtype, device=pairs.device)
        rows.scatter_(3, tokens[..., None], 1.0)
        rows[..., self.p + 1:] += torch.eye(3, dtype=dtype, device=pairs.device)
        return rows

    def _logits(self, params: list[torch.Tensor], pairs: torch.Tensor) -> torch.Tensor:
        W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U = params
        R, B, _ = pairs.shape
        if R != W_E.shape[0]:
            raise ValueError(f"pairs has {R} replicas, the model {W_E.shape[0]}")
        h, dh = self.n_heads, self.d_head
        emb = torch.cat([W_E, W_pos], 1)  # [R, V + 3, d]: every token's and position's row
        x_eq = emb[:, self.p] + emb[:, -1]  # [R, d]: the residual at the readout position
        # Queries, keys, values of every row (bmm, K = d; the query is a sum of two rows).
        q_rows, k_rows, v_rows = ((emb @ w.flatten(1, 2).mT).view(R, -1, h, dh)
                                  for w in (W_Q, W_K, W_V))  # [R, V + 3, H, dh]
        q = (q_rows[:, self.p] + q_rows[:, -1])[:, None] / math.sqrt(dh)
        qk_rows = (k_rows * q).sum(-1)  # [R, V + 3, H]: QK circuit, per row
        ov_rows = v_rows.transpose(1, 2) @ W_O  # [R, H, V + 3, d]: OV circuit, per row
        rows = self._rows(pairs, W_E.dtype)
        attn = (rows.flatten(1, 2) @ qk_rows).view(R, B, 3, h).softmax(2)  # over positions
        mix = torch.einsum("rbsv,rbsh->rbhv", rows, attn)  # [R, B, H, V + 3]
        resid = x_eq[:, None] + mix.flatten(2) @ ov_rows.flatten(1, 2)  # [R, B, d]
        hidden = torch.baddbmm(b_in[:, None], resid, W_in.mT).relu_()
        resid = resid + torch.baddbmm(b_out[:, None], hidden, W_out.mT)
        return resid @ W_U  # [R, B, p]

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Logits [R, B, p] over the answers, for ``pairs`` [R, B, 2] (long, each < p)."""
        return self._logits(self.params, pairs)

    def loss_and_grads(
        self, pairs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-replica mean cross-entropy [R] on ``pairs`` [R, B, 2], ``labels`` [R, B],
        and its gradient per parameter (aligned with ``params``; no weight decay)."""
        leaves = [w.detach().requires_grad_() for w in self.params]  # share storage
        with torch.enable_grad():
            logits = self._logits(leaves, pairs)
            nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
            loss = nll.view(labels.shape).mean(1)
            grads = torch.autograd.grad(loss.sum(), leaves)
        return loss.detach(), list(grads)

    @torch.no_grad()
    def accuracy(
        self, pairs: torch.Tensor, labels: torch.Tensor, chunk: int = 1024
    ) -> torch.Tensor:
        """Per-replica fraction [R] of ``pairs`` [R, N, 2] whose argmax logit is ``labels``
        [R, N]; ``chunk`` samples per replica at a time bound the memory."""
        right = torch.zeros(self.replicas, dtype=torch.long, device=labels.device)
        for start in range(0, labels.shape[1], chunk):
            guess = self._logits(self.params, pairs[:, start:start + chunk]).argmax(-1)
            right += (guess == labels[:, start:start + chunk]).sum(1)
        return right.to(self.params[0].dtype) / labels.shape[1]

    def finite(self) -> torch.Tensor:
        """[R] bool: every parameter of the replica is finite."""
        ok = torch.ones(self.replicas, dtype=torch.bool, device=self.params[0].device)
        for w in self.params:
            ok &= torch.isfinite(w).flatten(1).all(1)
        return ok

    def keep(self, idx: torch.Tensor) -> None:
        """Keep, in place, only the replicas at positions ``idx`` (1-D integers, in that order).

        The model caches nothing between calls, so the parameters are all there is to shrink.
        """
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.params[0].device)
        self.params = [w[idx] for w in self.params]
