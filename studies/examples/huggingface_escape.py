"""A small Hugging Face ``Trainer`` run recorded by escapestat's callback: a one-layer
BERT built from a config (random weights, nothing downloaded) learns a sequence's class
from its first token; its escape (eval accuracy ≥ 0.9, committed) lands in an escape
table like the engine's.

Run: ``.venv/bin/python studies/examples/huggingface_escape.py runs/hf-escapes.csv``
(needs ``pip install -e ".[huggingface]"``).
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch
import transformers

from escapestat.integrations.huggingface import EscapeCallback


class FirstTokenTask(torch.utils.data.Dataset):
    """Sequences of 8 tokens; the class is whether the first token is in the upper half."""

    def __init__(self, n: int, seed: int, vocab: int = 32):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] >= vocab // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def accuracy(prediction) -> dict:
    return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}


def main(path: str, seed: int = 0, lr: float = 3e-4, callbacks=()) -> None:
    transformers.set_seed(seed)
    config = transformers.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    escape = EscapeCallback(path, metric="eval_accuracy", threshold=0.9, fallback=0.8,
                            commit_steps=10, stop_on_decision=True, lr=lr, seed=seed)
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, max_steps=200, learning_rate=lr, per_device_train_batch_size=32,
            eval_strategy="steps", eval_steps=5, save_strategy="no", logging_strategy="no",
            report_to="none", use_cpu=True, seed=seed, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args,
                                       train_dataset=FirstTokenTask(1024, seed),
                                       eval_dataset=FirstTokenTask(256, seed + 1),
                                       compute_metrics=accuracy,
                                       callbacks=[escape, *callbacks])
        trainer.remove_callback(transformers.PrinterCallback)  # no metrics dicts printed
        trainer.train()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/hf-escapes.csv")
