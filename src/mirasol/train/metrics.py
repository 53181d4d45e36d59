"""What a run writes as it learns: metrics.jsonl (one JSON row per logged step and per validation),
TensorBoard when it is installed, and curves.png at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    """metrics.jsonl (appended; a resumed run first drops the rows after its checkpoint) + TensorBoard."""

    def __init__(self, out: Path, resumed_step: int | None = None):
        self.file = out / "metrics.jsonl"
        if resumed_step is not None:
            truncate_metrics(self.file, resumed_step)
        self.writer = _tensorboard(out)
        self.stream = open(self.file, "a")

    def log(self, row: dict) -> None:
        self.stream.write(json.dumps(row) + "\n")
        self.stream.flush()
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, dict):
                    for sub, v in value.items():
                        self.writer.add_scalar(f"{key}/{sub}", v, row["step"])
                elif key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.stream.close()
        if self.writer is not None:
            self.writer.close()


def truncate_metrics(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their old lines."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.jsonl and the plots are enough
        return None
    return SummaryWriter(str(out / "tensorboard"))


def plot_metrics(metrics_file: Path, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_text_loss" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "text_loss", "latent_loss"):
        axes[0].plot([r["step"] for r in train_rows], [r[key] for r in train_rows], label=key, lw=1)
    if val_rows:
        axes[0].plot([r["step"] for r in val_rows], [r["val_text_loss"] for r in val_rows], "o-", label="val_text_loss")
        axes[1].plot([r["step"] for r in val_rows], [r["val_accuracy"] for r in val_rows], "o-", label="val_accuracy")
        axes[1].set_ylim(0, 1)
    axes[0].set_yscale("log")
    for ax, title in zip(axes, ("losses", "validation accuracy")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
