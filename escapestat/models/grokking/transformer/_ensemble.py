"""R replicas of a one-layer transformer for a∘b mod p, as one batched model.

The architecture is Nanda et al.'s ("Progress measures for grokking via mechanistic
interpretability", 2023): the input for a∘b is the sequence [a, b, "="] over a vocabulary
of p + 1 tokens ("=" is token p); token and position embeddings; one attention layer of
``n_heads`` heads (no biases, causal, scores scaled by 1/√d_head); a ReLU MLP; residual
connections around both; no LayerNorm; the logits are read out (unembedded) at the last
position, over the p answer classes (``classes`` p, the default) or, as Nanda et al.'s
unembedding, over all p + 1 tokens ("=" included: a class no label ever takes). Per
replica, with t = [a, b, p]:

    x_s    = W_E[t_s] + W_pos[s]
    α_hs   = softmax_s(q_h · k_hs / √d_head),  q_h = x_2 W_Q[h],  k_hs = x_s W_K[h]  (s ≤ 2)
    x'_2   = x_2 + Σ_h Σ_s α_hs x_s W_V[h] W_O[h]
    x''_2  = x'_2 + relu(x'_2 W_in + b_in) W_out + b_out
    logits = x''_2 W_U

One layer, read out at the last position: only that position's query matters, and it may
see all three positions, so the causal mask hides nothing from it; the other positions'
queries and MLP outputs are never formed. Each x_s is the sum of two rows of the table
[W_E; W_pos] (V + 3 rows) and x_2 is the same for every input, so the attention works on
those rows once per call: each row's score per head is row · (W_K[h] q_h), its value per
head row · W_V[h]; a sample gathers its rows' scores, and its attended values z_h =
Σ_s α_hs (v_h[t_s] + v_h[V + s]) meet W_O in one [B, d] · [d, d] matmul: O(V d²) per
replica for the tables, not O(B d²).

Every parameter is a tensor [R, ...] (``params``, named by ``param_names``), laid out as
TransformerLens's (row vectors times matrices): W_E [V, d], W_pos [3, d], W_Q/W_K/W_V
[H, d, d_head], W_O [H, d_head, d], W_in [d, d_mlp], b_in [d_mlp], W_out [d_mlp, d],
b_out [d], W_U [d, classes]. The backward is written out (``loss_and_grads``), as for the MLP:
one autograd pass over these batched ops spent much of its time allocating and filling
fresh megabyte gradients and took the weight gradients' matmuls at half speed. The MLP
block and the readout are batched matmuls in torch; on the CPU the attention (many
small ops on 27-row tables) is a C kernel (``native.py``, ``native/attention_body.h``),
elsewhere the same formulas in torch (``backend``). Measured at R 32, p 23, d 128, 2
cores, per loss and gradients: autograd 21.5 ms, written-out torch 15.0 ms, with the C
attention 14.1 ms. Once softmax saturates its outputs
may underflow to denormals, which made a CPU ``bmm`` ~100× slower here: the
backward floors the probabilities (as mlp_ensemble.py does), and callers on CPU should
also set ``torch.set_flush_denormal(True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from escapestat.models import _native as native
from escapestat.models._optimizers import pack
from escapestat.models._xent import floor_logp, xent_and_delta
from escapestat.models.grokking._scores import chunked_accuracy, finite_replicas


@dataclass
class _Forward:
    """One forward pass: the row table, the readout residual x_eq, the token sequences, what
    the attention keeps for its backward, the attended values z, W_O flattened, x', h,
    x'' and the logits."""

    emb: torch.Tensor
    x_eq: torch.Tensor
    tokens: torch.Tensor
    saved: tuple | list
    z: torch.Tensor
    w_o: torch.Tensor
    resid: torch.Tensor
    hidden: torch.Tensor
    resid2: torch.Tensor
    logits: torch.Tensor


PARAM_NAMES = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out",
               "W_U")


class TransformerEnsemble:
    """R one-layer transformers for a∘b mod p (see the module docstring for the formula).

    Parameters
    ----------
    replicas, p : number of replicas R and the modulus (vocabulary p + 1, p answer classes).
    classes : columns of the readout W_U: p (default) or p + 1 (Nanda et al.'s, "=" too).
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
        classes: int | None = None,
    ):
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        classes = p if classes is None else classes
        if classes not in (p, p + 1):
            raise ValueError(f"classes must be p ({p}) or p + 1, got {classes}")
        self.p, self.n_heads, self.d_head = p, n_heads, d_model // n_heads
        vocab, d, h, dh = p + 1, d_model, n_heads, self.d_head
        shapes = {"W_E": (vocab, d), "W_pos": (3, d), "W_Q": (h, d, dh), "W_K": (h, d, dh),
                  "W_V": (h, d, dh), "W_O": (h, dh, d), "W_in": (d, d_mlp), "b_in": (d_mlp,),
                  "W_out": (d_mlp, d), "b_out": (d,), "W_U": (d, classes)}
        self.param_names = list(PARAM_NAMES)
        self.decay_mask = [name.startswith("W_") for name in self.param_names]
        self.params = []
        #: "native" (the attention's C kernels) on the CPU where they are built, else
        #: "torch"; either may be set by hand.
        self.backend = "native" if native.usable(torch.empty(0, dtype=dtype, device=device)) \
            else "torch"
        self._grads: list[torch.Tensor] | None = None
        self._work: list[torch.Tensor] | None = None
        #: log-probabilities floored here in the backward, as in mlp_ensemble.py
        self._floor = floor_logp(dtype)
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

    def _forward(self, pairs: torch.Tensor, hidden: torch.Tensor | None = None) -> _Forward:
        """The forward pass for ``pairs`` [R, B, 2], keeping what the backward needs; the
        MLP's activations go into ``hidden`` [R, B, d_mlp] when given (a kept buffer)."""
        W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U = self.params
        R, B, _ = pairs.shape
        if R != W_E.shape[0]:
            raise ValueError(f"pairs has {R} replicas, the model {W_E.shape[0]}")
        p, scale = self.p, 1 / math.sqrt(self.d_head)
        emb = torch.cat([W_E, W_pos], 1)  # [R, N, d], N = V + 3 rows
        x_eq = emb[:, p] + emb[:, -1]  # [R, d]: the residual at the readout position
        tokens = torch.cat([pairs, pairs.new_full((R, B, 1), p)], 2)  # [R, B, 3]
        if self.backend == "native":
            *saved, z = native.required().attn_forward(emb, W_Q, W_K, W_V, tokens, scale)
        else:
            saved, z = self._attention(emb, x_eq, W_Q, W_K, W_V, tokens, scale)
        w_o = W_O.flatten(1, 2)  # [R, H·dh, d]
        resid = torch.baddbmm(x_eq.unsqueeze(1), z, w_o)  # x'
        if hidden is None:
            hidden = W_in.new_empty(R, B, W_in.shape[-1])
        hidden.copy_(b_in.unsqueeze(1).expand_as(hidden)).baddbmm_(resid, W_in).relu_()
        resid2 = torch.baddbmm(resid, hidden, W_out).add_(b_out.unsqueeze(1))  # x''
        return _Forward(emb, x_eq, tokens, saved, z, w_o, resid, hidden, resid2,
                        resid2 @ W_U)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Logits [R, B, classes] (the answers, then "=" when classes is p + 1), for
        ``pairs`` [R, B, 2] (long, each < p)."""
        return self._forward(pairs).logits

    def _grad_buffers(self, b: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Gradients (one packed buffer, aligned with ``params``) and the two [R, b, d_mlp]
        activations, kept from step to step: fresh tensors of megabytes cost page faults
        every step (as in mlp_ensemble.py)."""
        w = self.params[0]
        if self._grads is None or self._grads[0].shape[0] != self.replicas:
            self._grads = pack([torch.zeros_like(t) for t in self.params])
        if self._work is None or self._work[0].shape[:2] != (self.replicas, b):
            d_mlp = self.params[PARAM_NAMES.index("W_in")].shape[-1]
            self._work = [w.new_empty(self.replicas, b, d_mlp) for _ in range(2)]
        return self._grads, self._work

    def loss_and_grads(
        self, pairs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-replica mean cross-entropy [R] on ``pairs`` [R, B, 2], ``labels`` [R, B],
        and its gradient per parameter (aligned with ``params``; no decay).

        The backward is written out (the forward's formulas, module docstring, read in
        reverse), into buffers kept between calls: the model's own, overwritten by the next
        call. With δ = (softmax − onehot)/B at the readout:

            ∇W_U = x''ᵀ δ,   ∂x'' = δ W_Uᵀ,   ∇W_out = hᵀ ∂x'',   ∂h = ∂x'' W_outᵀ ⊙ [h > 0],
            ∇W_in = x'ᵀ ∂h,   ∂x' = ∂x'' + ∂h W_inᵀ,

        then ∇W_O = zᵀ ∂x', ∂z = ∂x' W_Oᵀ, and through the attention's row tables (scores
        S = emb · (W_K q)ᵀ, value rows emb W_V) to the embeddings: torch ops, or the C
        kernel (``backend``).
        """
        W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U = self.params
        R, B, _ = pairs.shape
        H, scale = self.n_heads, 1 / math.sqrt(self.d_head)
        grads, (hidden, d_hidden) = self._grad_buffers(B)
        gW_E, gW_pos, gW_Q, gW_K, gW_V, gW_O, gW_in, gb_in, gW_out, gb_out, gW_U = grads
        f = self._forward(pairs, hidden)
        resid, resid2, z, d = f.resid, f.resid2, f.z, W_E.shape[-1]
        nll, delta = xent_and_delta(f.logits, labels, -1, self._floor)  # [R, B(, p)]
        loss = nll.mean(1)
        # backward: the readout and the MLP
        delta.div_(B)
        torch.bmm(resid2.mT, delta, out=gW_U)
        d_resid2 = delta @ W_U.mT  # [R, B, d]
        torch.sum(d_resid2, 1, out=gb_out)
        torch.bmm(hidden.mT, d_resid2, out=gW_out)
        torch.bmm(d_resid2, W_out.mT, out=d_hidden)
        torch.ops.aten.threshold_backward.grad_input(d_hidden, hidden, 0, grad_input=d_hidden)
        torch.sum(d_hidden, 1, out=gb_in)
        torch.bmm(resid.mT, d_hidden, out=gW_in)
        d_resid = torch.baddbmm(d_resid2, d_hidden, W_in.mT)  # ∂x'
        # backward: the attention
        d_x_eq = d_resid.sum(1)  # [R, d]
        torch.bmm(z.mT, d_resid, out=gW_O.view(R, -1, d))
        d_z = d_resid @ f.w_o.mT  # [R, B, H·dh]
        attention_grads = (gW_Q, gW_K, gW_V, gW_E, gW_pos)
        if self.backend == "native":
            native.required().attn_backward(f.emb, W_Q, W_K, W_V, f.tokens, scale, f.saved,
                                            d_z, d_x_eq, attention_grads)
        else:
            self._attention_backward(f.emb, f.x_eq, W_Q, W_K, W_V, pairs, f.tokens, scale,
                                     f.saved, d_z.view(R, B, H, -1).transpose(1, 2), d_x_eq,
                                     attention_grads)
        return loss, grads

    def _attention(self, emb: torch.Tensor, x_eq: torch.Tensor, W_Q: torch.Tensor,
                   W_K: torch.Tensor, W_V: torch.Tensor, tokens: torch.Tensor, scale: float):
        """The attention up to the attended values z [R, B, H·dh], by batched torch ops
        (native/attention_body.h is the C kernel of the same): (saved for the backward, z)."""
        R, B, _ = tokens.shape
        H, p, n_rows = self.n_heads, self.p, emb.shape[1]
        q = (x_eq[:, None, None] @ W_Q).squeeze(-2).mul_(scale)  # [R, H, dh]
        kq = (W_K * q.unsqueeze(-2)).sum(-1)  # [R, H, d]: score of a row = row · kq
        table = emb @ kq.mT  # [R, N, H]
        v_rows = emb.unsqueeze(1) @ W_V  # [R, H, N, dh]
        # Position s of [a, b, "="] reads its token's row and row V + s (the one-hot
        # selection of _rows, here as gathers and scatters).
        by_head = tokens.unsqueeze(1).expand(R, H, B, 3)
        attn = (table.unsqueeze(1).expand(R, B, n_rows, H)
                .gather(2, tokens.unsqueeze(-1).expand(R, B, 3, H))
                + table[:, None, p + 1:]).softmax(2)  # [R, B, 3, H]
        attn_h = attn.permute(0, 3, 1, 2)  # [R, H, B, 3]
        mix = attn_h.new_zeros(R, H, B, n_rows)  # [R, H, B, N]: weight of each row
        mix[..., p + 1:] = attn_h
        mix.scatter_add_(3, by_head, attn_h)
        z = (mix @ v_rows).transpose(1, 2).flatten(2)  # [R, B, H·dh]: attended values
        return (q, kq, v_rows, attn, mix), z

    def _attention_backward(self, emb, x_eq, W_Q, W_K, W_V, pairs, tokens, scale, saved,
                            d_z, d_x_eq, grads) -> None:
        """``_attention``'s backward from ∂z [R, H, B, dh] and ∂x_eq [R, d] into ``grads``
        = (∇W_Q, ∇W_K, ∇W_V, ∇W_E, ∇W_pos)."""
        q, kq, v_rows, attn, mix = saved
        gW_Q, gW_K, gW_V, gW_E, gW_pos = grads
        R, B, _ = tokens.shape
        H, p = self.n_heads, self.p
        by_head = tokens.unsqueeze(1).expand(R, H, B, 3)
        d_mix = d_z @ v_rows.mT  # [R, H, B, N]
        d_v = mix.mT @ d_z  # [R, H, N, dh]
        d_attn = (d_mix.gather(3, by_head) + d_mix[..., p + 1:]).permute(0, 2, 3, 1)
        d_score = attn * (d_attn - (attn * d_attn).sum(2, keepdim=True))  # softmax over s
        # ∂table by a matmul with the one-hot selection, not a scatter-add: on CUDA that
        # would add in a nondeterministic order (same seed, same table).
        d_table = self._rows(pairs, emb.dtype).flatten(1, 2).mT @ d_score.flatten(1, 2)
        d_emb = d_table @ kq  # [R, N, d]
        d_kq = d_table.mT @ emb  # [R, H, d]
        torch.mul(d_kq.unsqueeze(-1), q.unsqueeze(-2), out=gW_K)
        d_q = (W_K * d_kq.unsqueeze(-1)).sum(-2).mul_(scale)  # ∂q · scale, [R, H, dh]
        torch.mul(x_eq[:, None, :, None], d_q.unsqueeze(-2), out=gW_Q)
        d_x_eq += (W_Q * d_q.unsqueeze(-2)).sum((1, 3))
        torch.matmul(emb.unsqueeze(1).mT, d_v, out=gW_V)
        d_emb += (d_v @ W_V.mT).sum(1)
        d_emb[:, p] += d_x_eq
        d_emb[:, -1] += d_x_eq
        gW_E.copy_(d_emb[:, :p + 1])
        gW_pos.copy_(d_emb[:, p + 1:])

    @torch.no_grad()
    def accuracy(
        self, pairs: torch.Tensor, labels: torch.Tensor, chunk: int | None = None
    ) -> torch.Tensor:
        """Per-replica fraction [R] of ``pairs`` [R, N, 2] whose argmax logit is ``labels``
        [R, N], ``chunk`` samples per replica at a time (default 32768 // R: about 64 MB of
        MLP activations in float32)."""
        return chunked_accuracy(self.forward, pairs, labels,
                                chunk or max(1, 32768 // self.replicas), self.params[0].dtype)

    def finite(self) -> torch.Tensor:
        """[R] bool: every parameter of the replica is finite."""
        return finite_replicas(self.params)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep, in place, only the replicas at positions ``idx`` (1-D integers, in that order).

        The gradient and activation buffers are dropped and made anew at the next call.
        """
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.params[0].device)
        self.params = [w[idx] for w in self.params]
        self._grads = self._work = None
