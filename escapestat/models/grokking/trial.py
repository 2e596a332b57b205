"""Grokking as a replica model: modular arithmetic, a network ensemble, AdamW/Adam/SGD.

``GrokTrial`` implements ``models.base.ReplicaModel`` for a network of a∘b mod p that a
subclass builds (``build_network``: one per kind, in its own folder), each replica with
its own train/test split. Every replica starts from a
fresh init (nothing is trapped by hand: the "trap" is memorisation); its order
parameter is test accuracy, and the fit (train accuracy reaching ``fit_threshold``,
committed) is a milestone the engine records beside it. At every check both
accuracies are evaluated once, on each replica's whole split, and also feed the curves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from escapestat.config._escape_rule import EscapeRule
from escapestat.config._study import Condition, OptimizerSpec, Study
from escapestat.models._grad_filter import build_grad_filter
from escapestat.models._optimizers import SGD, Adam, AdamW
from escapestat.models.base import Hyper, ReplicaModel, torch_dtype
from escapestat.models.grokking._modular import MinibatchPairs, make_task


def build_optimizer(spec: OptimizerSpec | None, params: Sequence[torch.Tensor]):
    """AdamW (decoupled decay), Adam (coupled L2, Grokfast's baseline) or SGD (momentum,
    L2), decaying every parameter as the grokking literature trains (Power et al., Nanda
    et al.)."""
    spec = spec or OptimizerSpec()
    if spec.kind == "sgd":
        return SGD(params, momentum=spec.momentum)
    if spec.kind == "adam":
        return Adam(params, betas=(spec.beta1, spec.beta2), eps=spec.eps)
    return AdamW(params, betas=(spec.beta1, spec.beta2), eps=spec.eps)


class GrokTrial(ReplicaModel):
    """R replicas learning a∘b mod p; one per entry of ``conds``."""

    flush_denormals = True
    curve_names = ("train_accuracy", "test_accuracy", "weight_norm")

    @staticmethod
    def build_network(study: Study, replicas: int, generator: torch.Generator,
                      dtype: torch.dtype, device: torch.device):
        """The kind's network ensemble, freshly initialised (``params``,
        ``loss_and_grads``, ``accuracy``, ``finite``, ``keep``, ``replicas``)."""
        raise NotImplementedError

    def __init__(self, study: Study, conds: Sequence[Condition], generator: torch.Generator,
                 device: torch.device, batch_size: int | None = None):
        t, esc, n = study.task, study.escape, len(conds)
        assert t is not None  # the grokking specs' check requires [task]
        dtype = torch_dtype(study)
        self.task = make_task(t.operation, t.p, n, t.train_fraction, t.label_noise,
                              generator, device, t.train_rounding)
        self.net = self.build_network(study, n, generator, dtype, device)
        self.optimizer = build_optimizer(study.optimizer, self.net.params)
        self.batches = MinibatchPairs(self.task, batch_size or t.p * t.p, generator)
        self.full_batch = self.batches.batch_size >= self.batches.n  # no minibatch noise
        spec = study.dynamics.grad_filter
        self.grad_filter = None if spec is None else build_grad_filter(spec.as_dict())
        self.milestone_rules = {"fit": EscapeRule(esc.fit_threshold, esc.fit_fallback,
                                                  esc.commit_steps)}
        self.loss = torch.zeros(n, dtype=dtype, device=device)
        self._accuracy: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def replicas(self) -> int:
        return self.net.replicas

    def step(self, t: int, hyper: Hyper) -> None:
        pairs, labels = self.batches.next_batch(hyper.batch_size)
        loss, grads = self.net.loss_and_grads(pairs, labels)  # explicit backward, no autograd
        if self.grad_filter is not None:
            grads = self.grad_filter(grads)
        self.optimizer.step(grads, hyper.lr, hyper.weight_decay)
        self.loss = loss.detach()
        self._accuracy = None

    def accuracies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, test) accuracy [R] on each replica's own split, once per check."""
        if self._accuracy is None:
            task = self.task
            self._accuracy = (self.net.accuracy(task.train_pairs(), task.train_labels),
                              self.net.accuracy(task.test_pairs(), task.test_labels()))
        return self._accuracy

    def order_parameter(self) -> torch.Tensor:
        return self.accuracies()[1]

    def milestones(self) -> dict[str, torch.Tensor]:
        return {"fit": self.accuracies()[0]}

    def curve_values(self) -> dict[str, torch.Tensor]:
        """Train and test accuracy, and the parameters' L2 norm (what weight decay acts
        on: Omnigrok's and Nanda et al.'s curves show it falling as the net generalises)."""
        train, test = self.accuracies()
        norm = torch.sqrt(sum(p.detach().pow(2).flatten(1).sum(1) for p in self.net.params))
        return {"train_accuracy": train, "test_accuracy": test, "weight_norm": norm}

    def finite(self) -> torch.Tensor:
        return self.net.finite() & torch.isfinite(self.loss)

    def keep(self, idx: torch.Tensor) -> None:
        self.net.keep(idx)
        self.optimizer.keep(idx)
        self.optimizer.params = list(self.net.params)  # a model may hand back new tensors
        self.batches.keep(idx)
        self.task.keep(idx)
        if self.grad_filter is not None:
            self.grad_filter.keep(idx)
        self.loss = self.loss[idx]
        self._accuracy = None
