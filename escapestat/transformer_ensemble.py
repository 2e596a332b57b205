"""R replicas of a one-layer transformer for a∘b mod p, as one batched model.

The architecture is Nanda et al.'s ("Progress measures for grokking via mechanistic
interpretability", 2023): the input for a∘b is the sequence [a, b, "="] over a vocabulary
of p + 1 tokens ("=" is token p); token and position embeddings; one attention layer of
``n_heads`` heads (no biases, causal, scores scaled by 1/√d_head); a ReLU MLP; residual
connections around both; no LayerNorm; the logits are read out (unembedded) at the last
position, over the p answer classes only. Per replica, with t = [a, b, p]:

    x_s    = W_E[t_s] + W_pos[s]
    α_hs   = softmax_s(q_h · k_hs / √d_head),  q_h = x_2 W_Q[h],  k_hs = x_s W_K[h]  (s ≤ 2)
    x'_2   = x_2 + Σ_h Σ_s α_hs x_s W_V[h] W_O[h]
    x''_2  = x'_2 + relu(x'_2 W_in + b_in) W_out + b_out
    logits = x''_2 W_U

One layer, read out at the last position: only that position's query matters, and it may
see all three positions, so the causal mask hides nothing from it; the other positions'
queries and MLP outputs are never formed. Each x_s is the sum of two rows of the table
[W_E; W_pos] (V + 3 rows) and x_2 is the same for every input, so the attention works on
those rows once per call: the QK circuit gives each row's score per head, the OV circuit
its output per head (row · W_V[h] W_O[h]), and a sample's scores and attention output are
matmuls of its 0/1 row-selection [3, V + 3] with them: O(V d²) per replica, not O(B d²),
and bmm in the backward too (no gather/scatter).

Every parameter is a tensor [R, ...] (``params``, named by ``param_names``), laid out as
TransformerLens's (row vectors times matrices): W_E [V, d], W_pos [3, d], W_Q/W_K/W_V
[H, d, d_head], W_O [H, d_head, d], W_in [d, d_mlp], b_in [d_mlp], W_out [d_mlp, d],
b_out [d], W_U [d, p]. Gradients come from one autograd backward of the summed
per-replica losses: the replicas share no parameter, so each replica's gradient is
exactly its own (design §5: nonlinear models use autograd). Once softmax saturates its
outputs may underflow to denormals, which made a CPU ``bmm`` ~100× slower here (design
§5): callers on CPU should set ``torch.set_flush_denormal(True)``.
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
        shapes = {"W_E": (vocab, d), "W_pos": (3, d), "W_Q": (h, d, dh), "W_K": (h, d, dh),
                  "W_V": (h, d, dh), "W_O": (h, dh, d), "W_in": (d, d_mlp), "b_in": (d_mlp,),
                  "W_out": (d_mlp, d), "b_out": (d,), "W_U": (d, p)}
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
        # Queries, keys and values of every row: bmm with K = d (forming q from x_eq instead
        # would make its backward an outer product, slow as a bmm).
        q_rows, k_rows, v_rows = (emb[:, None] @ w for w in (W_Q, W_K, W_V))  # [R, H, V+3, dh]
        q = (q_rows[:, :, self.p] + q_rows[:, :, -1])[:, :, None] / math.sqrt(dh)
        qk_rows = (k_rows * q).sum(-1)  # [R, H, V + 3]: QK circuit, per row
        ov_rows = v_rows @ W_O  # [R, H, V + 3, d]: OV circuit, per row
        rows = self._rows(pairs, W_E.dtype)
        attn = (rows.flatten(1, 2) @ qk_rows.mT).view(R, B, 3, h).softmax(2)  # over positions
        mix = torch.einsum("rbsv,rbsh->rbhv", rows, attn)  # [R, B, H, V + 3]
        resid = x_eq[:, None] + mix.flatten(2) @ ov_rows.flatten(1, 2)  # [R, B, d]
        hidden = torch.baddbmm(b_in[:, None], resid, W_in).relu_()
        resid = resid + torch.baddbmm(b_out[:, None], hidden, W_out)
        return resid @ W_U  # [R, B, p]

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Logits [R, B, p] over the answers, for ``pairs`` [R, B, 2] (long, each < p)."""
        return self._logits(self.params, pairs)

    def loss_and_grads(
        self, pairs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-replica mean cross-entropy [R] on ``pairs`` [R, B, 2], ``labels`` [R, B],
        and its gradient per parameter (contiguous, aligned with ``params``; no decay)."""
        leaves = [w.detach().requires_grad_() for w in self.params]  # share storage
        with torch.enable_grad():
            logits = self._logits(leaves, pairs)
            nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
            loss = nll.view(labels.shape).mean(1)
            grads = torch.autograd.grad(loss.sum(), leaves)
        return loss.detach(), [g.contiguous() for g in grads]  # W_E, W_pos: views of a cat

    @torch.no_grad()
    def accuracy(
        self, pairs: torch.Tensor, labels: torch.Tensor, chunk: int | None = None
    ) -> torch.Tensor:
        """Per-replica fraction [R] of ``pairs`` [R, N, 2] whose argmax logit is ``labels``
        [R, N], ``chunk`` samples per replica at a time (default 32768 // R: about 64 MB of
        MLP activations in float32)."""
        chunk = chunk or max(1, 32768 // self.replicas)
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
