"""A small Lightning run recorded by escapestat's callback: a linear classifier whose
validation accuracy climbs from chance; its escape (val_acc ≥ 0.9, committed) lands in
an escape table like the engine's.

Run: ``.venv/bin/python studies/examples/lightning_escape.py runs/lightning-escapes.csv``
(needs ``pip install -e ".[lightning]"``).
"""

from __future__ import annotations

import sys

import lightning
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from escapestat.integrations.lightning import EscapeCallback


class Classifier(lightning.LightningModule):
    def __init__(self, lr: float):
        super().__init__()
        self.save_hyperparameters()  # a logger records lr (TensorBoard: as hparams)
        self.lr = lr
        self.net = torch.nn.Linear(8, 2)
        torch.nn.init.zeros_(self.net.weight)  # start at chance

    def training_step(self, batch, _):
        x, y = batch
        logits = self.net(x)
        self.log("train_acc", (logits.argmax(1) == y).float().mean())
        return F.cross_entropy(logits, y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main(path: str, seed: int = 0, lr: float = 0.02, callbacks=(), logger=False) -> None:
    """Train, recording the escape in ``path``; ``logger`` is Lightning's (e.g. a
    ``TensorBoardLogger``: ``escapestat ingest tensorboard`` then reads the same escape)."""
    lightning.seed_everything(seed, verbose=False)
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(seed))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    train = DataLoader(TensorDataset(x[:384], y[:384]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[384:], y[384:]), batch_size=128)
    escape = EscapeCallback(path, metric="val_acc", threshold=0.9, fallback=0.8,
                            commit_steps=8, lr=lr, seed=seed)
    trainer = lightning.Trainer(max_epochs=4, val_check_interval=4, accelerator="cpu",
                                callbacks=[escape, *callbacks], logger=logger,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.fit(Classifier(lr), train, val)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/lightning-escapes.csv")
