"""TensorBoard event files beside a cell's metrics.jsonl, when `tensorboard` is installed.

The curve itself is always in `cells/<id>/metrics.jsonl` (Store.append_metrics); both toolkits users
come from (torchreid, fast-reid) also write TensorBoard events, so reidbench does too when the
optional extra is installed (`pip install reidbench[tensorboard]`), imported only then.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_writer(folder: Path):
    """A SummaryWriter into `folder`, or None without tensorboard."""
    if not tensorboard_available():
        return None
    from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

    return SummaryWriter(log_dir=str(folder))
