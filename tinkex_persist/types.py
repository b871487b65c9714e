"""Public result types returned through the Futures."""

import datetime
from typing import Any, Dict, List, Optional, Tuple

import attrs

from ._paths import SCHEME
from ._time import format_time


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
class SaveWeightsForSamplerResult:
    """Committed sampler weights (the SDK's ``SaveWeightsForSamplerResponse``, with the run and order added)."""

    path: str
    """``tinker://<model_id>/sampler_weights/<name>``: for sampling, listing, ``get_weights_info``, deletion.
    Not training state: ``load_state*`` and ``create_training_client_from_state*`` refuse it."""
    model_id: str
    """The training run whose weights were saved."""
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
    optimizer_config: Optional[Dict[str, Any]] = None
    """The checkpoint's whole optimizer configuration as the server gave it, ``type`` first and the family's
    other keys after it (e.g. ``{"type": "dimuon", "version": 1}``); None if the server does not say."""


@attrs.frozen(kw_only=True)
class CheckpointInfo:
    """One stored checkpoint, as listed by the service. Field names follow the official SDK's ``Checkpoint``."""

    checkpoint_id: str
    """``weights/<name>`` or ``sampler_weights/<name>``."""
    checkpoint_type: str
    """``training``, ``sampler`` or ``external``."""
    time: datetime.datetime
    """Creation time, timezone-aware UTC."""
    tinker_path: str
    """``tinker://<run_id>/<kind>/<name>``: the handle every other function takes."""
    size_bytes: Optional[int] = None
    """Stored size in bytes; ``None`` if the server does not say."""
    expires_at: Optional[datetime.datetime] = None
    """When the service deletes it (aware UTC); ``None`` means never."""
    public: bool = False
    user_metadata: Optional[Dict[str, str]] = None

    @property
    def run_id(self) -> str:
        """The training run (model id) the checkpoint belongs to."""
        return self.tinker_path[len(SCHEME) :].split("/", 1)[0]

    @property
    def name(self) -> str:
        """The checkpoint's name within its run."""
        return self.checkpoint_id.split("/", 1)[-1]

    def to_json(self) -> Dict[str, Any]:
        """Return a JSON-ready dict; times are RFC 3339 UTC strings."""
        return {
            "checkpoint_id": self.checkpoint_id,
            "checkpoint_type": self.checkpoint_type,
            "time": format_time(self.time),
            "tinker_path": self.tinker_path,
            "size_bytes": self.size_bytes,
            "expires_at": format_time(self.expires_at),
            "public": self.public,
            "user_metadata": self.user_metadata,
        }


@attrs.frozen(kw_only=True)
class TrainingRun:
    """A training run (model) as the service describes it. Field names follow the official SDK's ``TrainingRun``."""

    training_run_id: str
    """The run's id (the model id), e.g. ``<session>:train:0``."""
    base_model: str
    model_owner: Optional[str] = None
    is_lora: bool = True
    lora_rank: Optional[int] = None
    corrupted: bool = False
    """Whether the service marked the run's state as corrupted (do not resume from it)."""
    last_request_time: Optional[datetime.datetime] = None
    """When the run last received a request (aware UTC)."""
    last_checkpoint: Optional[CheckpointInfo] = None
    """The newest training checkpoint (``tinker://<run>/weights/<name>``): where to resume from."""
    last_sampler_checkpoint: Optional[CheckpointInfo] = None
    """The newest sampler checkpoint, if any."""
    user_metadata: Optional[Dict[str, str]] = None

    def to_json(self) -> Dict[str, Any]:
        """Return a JSON-ready dict; times are RFC 3339 UTC strings."""
        return {
            "training_run_id": self.training_run_id,
            "base_model": self.base_model,
            "model_owner": self.model_owner,
            "is_lora": self.is_lora,
            "lora_rank": self.lora_rank,
            "corrupted": self.corrupted,
            "last_request_time": format_time(self.last_request_time),
            "last_checkpoint": None if self.last_checkpoint is None else self.last_checkpoint.to_json(),
            "last_sampler_checkpoint": (
                None if self.last_sampler_checkpoint is None else self.last_sampler_checkpoint.to_json()
            ),
            "user_metadata": self.user_metadata,
        }


@attrs.frozen(kw_only=True)
class SaveWeightsExternalResult:
    """A committed export of a run's weights as adapter files (``save_weights_external``)."""

    path: str
    """``tinker://<model_id>/external_weights/<name>``: pass it to ``get_external_weights_urls``."""
    size_bytes: Optional[int] = None
    """Total size of the exported files, if the server says."""
    model_id: str
    seq_id: int
    """Position of the export in the run's request order."""


@attrs.frozen(kw_only=True)
class ExternalWeightsUrls:
    """Signed download URLs of an ``external_weights`` checkpoint, one per file. The URLs are bearer secrets."""

    urls: Dict[str, str] = attrs.field(repr=False)
    """File path relative to the checkpoint -> signed URL (fetch it with a plain GET, no API key)."""
    expires: Optional[datetime.datetime] = None
    """When the URLs stop working (aware UTC)."""

    @property
    def files(self) -> List[str]:
        """The file paths, sorted."""
        return sorted(self.urls)


@attrs.frozen(kw_only=True)
class StorageUsageItem:
    """Stored checkpoints of one (project, owner) group."""

    project_id: Optional[str] = None
    org_user_urn: Optional[str] = None
    user_email: Optional[str] = None
    user_name: Optional[str] = None
    checkpoint_count: int
    size_bytes: int
    size_gigabytes: float
    estimated_monthly_cost_usd: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class CheckpointStorageUsage:
    """Current checkpoint storage (``billing/usage/checkpoints/current``); the service's figures may lag 1-2 hours."""

    effective_rate_usd_per_gigabyte_month: Optional[float] = None
    data: Tuple[StorageUsageItem, ...] = ()

    @property
    def checkpoint_count(self) -> int:
        return sum(i.checkpoint_count for i in self.data)

    @property
    def size_bytes(self) -> int:
        return sum(i.size_bytes for i in self.data)

    def to_json(self) -> Dict[str, Any]:
        return {
            "effective_rate_usd_per_gigabyte_month": self.effective_rate_usd_per_gigabyte_month,
            "checkpoint_count": self.checkpoint_count,
            "size_bytes": self.size_bytes,
            "data": [i.to_json() for i in self.data],
        }


@attrs.frozen(kw_only=True)
class DeleteOutcome:
    """What happened to one path of a delete batch.

    ``status`` is ``deleted``, ``would_delete`` (dry run), ``not_found`` or ``failed``. ``error`` holds
    the exception of a failure (``not_found`` included) and is ``None`` otherwise.
    """

    path: str
    status: str
    error: Optional[BaseException] = attrs.field(default=None, eq=False)
    size_bytes: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.status in ("deleted", "would_delete")

    def to_json(self) -> Dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "error": None if self.error is None else str(self.error),
            "size_bytes": self.size_bytes,
        }


@attrs.frozen(kw_only=True)
class DeleteReport:
    """Outcome of :func:`~tinkex_persist.delete_checkpoints`, one entry per requested path, in request order."""

    outcomes: Tuple[DeleteOutcome, ...]
    dry_run: bool

    @property
    def ok(self) -> bool:
        """True when every path was deleted (or, in a dry run, would be)."""
        return all(o.ok for o in self.outcomes)

    @property
    def deleted(self) -> List[str]:
        """Paths deleted (or that a dry run would delete)."""
        return [o.path for o in self.outcomes if o.ok]

    @property
    def failed(self) -> List[DeleteOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def to_json(self) -> Dict[str, Any]:
        return {"dry_run": self.dry_run, "results": [o.to_json() for o in self.outcomes]}


@attrs.frozen(kw_only=True)
class RetentionReport:
    """Outcome of :func:`~tinkex_persist.keep_last`: the training checkpoints kept (newest first) and the deletes."""

    run_id: str
    kept: Tuple[CheckpointInfo, ...]
    deletes: DeleteReport

    @property
    def dry_run(self) -> bool:
        return self.deletes.dry_run

    def to_json(self) -> Dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "kept": [c.to_json() for c in self.kept],
            "results": [o.to_json() for o in self.deletes.outcomes],
        }


@attrs.frozen(kw_only=True)
class PruneReport:
    """Outcome of :func:`~tinkex_persist.checkpoints.prune`: what was kept, spared (published) and deleted."""

    run_id: Optional[str]
    """The run pruned, or None for every run."""
    kept: Tuple[CheckpointInfo, ...]
    """Checkpoints kept by the rules (newest first)."""
    spared: Tuple[CheckpointInfo, ...]
    """Published checkpoints the rules would delete, left alone (``include_published`` deletes them)."""
    deletes: DeleteReport

    @property
    def dry_run(self) -> bool:
        return self.deletes.dry_run

    def to_json(self) -> Dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "kept": [c.to_json() for c in self.kept],
            "spared_published": [c.to_json() for c in self.spared],
            "results": [o.to_json() for o in self.deletes.outcomes],
        }


@attrs.frozen(kw_only=True)
class DownloadProgress:
    """A progress report of :func:`~tinkex_persist.download_checkpoint`, passed to its ``progress`` callback.

    ``phase`` is ``exporting`` (a training checkpoint is being exported as external weights), ``waiting``
    (the archive is being built; ``waited`` seconds so far), ``downloading``,
    ``verifying``, ``extracting`` or ``done``. ``bytes_total`` is ``None`` until the server says.
    """

    phase: str
    bytes_done: int = 0
    bytes_total: Optional[int] = None
    resumed_from: int = 0
    elapsed: float = 0.0
    waited: float = 0.0


@attrs.frozen(kw_only=True)
class DownloadResult:
    """A downloaded and verified checkpoint: its files under ``directory``.

    ``method`` tells how: ``external_weights`` (SDK 0.38: a training checkpoint exported with
    ``save_weights_external``, or an external-weights checkpoint, fetched file by file from signed URLs)
    or ``archive`` (the older ``.../archive`` route, used only when the server has no export).
    """

    tinker_path: str
    directory: str
    """Where the files are: ``<dest_dir>/<run_id>/<kind>/<name>``."""
    archive_bytes: int
    """Total size of what was downloaded (the archive, or the sum of the files)."""
    bytes_fetched: int
    """Bytes received by this call (less than ``archive_bytes`` after a resume)."""
    resumed_from: int
    """Bytes already on disk from an earlier call when this call started (0 for a fresh download)."""
    range_requests: int
    """Transfers of this call that continued a partial file with HTTP Range (0 when nothing broke off)."""
    sha256: Optional[str]
    """sha256 (hex) of the archive (``archive`` method); None for files (see ``file_sha256``)."""
    sha256_verified: bool
    """True when the server announced a sha256 for the archive, or for every file, and it matched."""
    files: Tuple[str, ...]
    """Relative paths of the regular files under ``directory``."""
    archive_path: Optional[str] = None
    """The kept archive (``keep_archive=True`` with the archive method), else ``None``."""
    method: str = "archive"
    """``external_weights`` or ``archive``."""
    export_path: Optional[str] = None
    """The temporary export of a training checkpoint (``tinker://.../external_weights/download``), if one was made."""
    export_reused: bool = False
    """True when an export recorded by an earlier, interrupted call was reused instead of exporting again."""
    export_deleted: bool = False
    """True when the temporary export was deleted after the download (else it expires by its TTL)."""
    url_signings: int = 0
    """Times the signed URLs were asked for (more than 1 when they were re-signed before or after expiring)."""
    file_sha256: Dict[str, str] = attrs.field(factory=dict)
    """sha256 (hex) of each file, computed while it was written."""

    def to_json(self) -> Dict[str, Any]:
        return {
            "tinker_path": self.tinker_path,
            "directory": self.directory,
            "method": self.method,
            "archive_bytes": self.archive_bytes,
            "bytes_fetched": self.bytes_fetched,
            "resumed_from": self.resumed_from,
            "range_requests": self.range_requests,
            "sha256": self.sha256,
            "sha256_verified": self.sha256_verified,
            "files": list(self.files),
            "file_sha256": dict(self.file_sha256),
            "archive_path": self.archive_path,
            "export_path": self.export_path,
            "export_reused": self.export_reused,
            "export_deleted": self.export_deleted,
            "url_signings": self.url_signings,
        }


# --------------------------------------------------------------------------- training data types
# Defined in training_types.py (SDK 0.38 names and defaults); re-exported so that
# ``tinkex_persist.types`` offers them the way ``tinker.types`` does.
from .training_types import (  # noqa: E402,F401
    AdamParams,
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageChunk,
    LossFnOutput,
    ModelInput,
    ModelInputChunk,
    OptimStepResponse,
    TensorData,
)
# --------------------------------------------------------------------------- end of training data types
