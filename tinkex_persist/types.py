"""Public result types returned through the Futures."""

from typing import Optional

import attrs


@attrs.frozen(kw_only=True)
class SaveStateResult:
    """A committed training checkpoint."""

    path: str
    """``tinker://<model_id>/weights/<name>``: pass it to ``load_state*`` or ``create_training_client_from_state*``."""
    model_id: str
    """The training run that was saved."""
    seq_id: int
    """Position of the save in the run's request order."""


@attrs.frozen(kw_only=True)
class LoadStateResult:
    """Checkpoint state loaded onto a training model."""

    path: str
    """The checkpoint that was loaded."""
    model_id: str
    """The model that now holds it."""
    optimizer: bool
    """Whether the optimizer (Adam moments) was restored too."""


@attrs.frozen(kw_only=True)
class WeightsInfo:
    """What a training checkpoint holds, from ``weights_info``."""

    base_model: str
    is_lora: bool
    lora_rank: Optional[int] = None
    train_unembed: Optional[bool] = None
    train_mlp: Optional[bool] = None
    train_attn: Optional[bool] = None
    optimizer: Optional[str] = None
    """Optimizer family recorded with the checkpoint (e.g. ``adamw``), if the server says."""
