"""Request and response wire classes, and ``KEYS``: the table that pins every attribute to its JSON key.

Attribute names equal wire names. The converter (``_converter.py``) builds its hooks from ``KEYS`` only,
so a class or field missing from the table cannot be encoded, and a renamed attribute fails a test.
Field order follows the official SDK 0.38.0, so encoded bodies are byte-identical to its requests.
Classes are not slotted: building ~30 slotted classes costs ~8 ms more at import (see tools/bench.py).

Strictness belongs to the direction, not to the class: a class here is neither "a request" nor "a
response". Whatever is sent as a request is encoded, and decoded by the local server, strictly (unknown
keys rejected at every depth); whatever arrives as an answer is decoded tolerantly (unknown keys ignored
at every depth). Known keys keep their strict primitive types in both directions.

To add a wire class: define it below (``@attrs.frozen(kw_only=True, slots=False)``, attribute names equal
to the JSON keys, fields in the official SDK's order) and list every one of its fields in ``KEYS``.
Nothing else: both converters pick it up from the table, and ``tests/test_wire_golden.py`` checks the
table against the class. Add ``SEND_NULL`` only for a request field the SDK sends as ``null``, and map an
attribute to ``OTHER_KEYS`` only for an open object whose unknown keys must be kept, not dropped.
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

import attrs

try:  # Python 3.9 has typing.Literal; the fallback keeps static checkers quiet on odd builds.
    from typing import Literal
except ImportError:  # pragma: no cover
    from typing_extensions import Literal  # type: ignore

#: The official SDK version whose requests these classes reproduce; sent as ``sdk_version``.
WIRE_SDK_VERSION = "0.38.0"


# --------------------------------------------------------------------------- nested values


@attrs.frozen(kw_only=True, slots=False)
class LoraConfig:
    """LoRA settings inside ``create_model``."""

    rank: int
    """LoRA rank (width of the low-rank matrices); a positive int."""
    seed: Optional[int] = None
    """Seed for the initial LoRA weights; ``None`` lets the server choose (omitted on the wire)."""
    train_unembed: bool = True
    """Whether the unembedding layer gets LoRA."""
    train_mlp: bool = True
    """Whether MLP layers get LoRA."""
    train_attn: bool = True
    """Whether attention layers get LoRA."""


@attrs.frozen(kw_only=True, slots=False)
class OptimizerConfig:
    """Optimizer family of a training model, fixed at creation (``create_model``, ``weights_info``, ``get_info``).

    An open object, as the SDK's ``OptimizerConfigBase`` (``extra="allow"``): a family may carry more keys
    (``{"type": "dimuon", "version": 1}``), and they are kept as given in both directions, not dropped.
    """

    type: str = "adamw"
    """Family name; the server may add families, so this is a plain ``str``."""
    extra: Dict[str, Any] = attrs.field(factory=dict)
    """The family's other keys (e.g. dimuon's ``version``), as given; encoded after ``type``. Empty for adamw."""


@attrs.frozen(kw_only=True, slots=False)
class AdamParams:
    """AdamW hyper-parameters of one ``optim_step``."""

    learning_rate: float = 0.0001
    """Step size."""
    beta1: float = 0.9
    """Decay of the first-moment average."""
    beta2: float = 0.95
    """Decay of the second-moment average."""
    eps: float = 1e-12
    """Added to the denominator for stability."""
    weight_decay: float = 0.0
    """Decoupled weight decay; 0 disables it."""
    grad_clip_norm: float = 0.0
    """Global gradient-norm clip; 0 disables clipping."""


@attrs.frozen(kw_only=True, slots=False)
class FinishReason:
    """Why a session ended, inside ``sessions/{id}/finish``."""

    type: str = "success"
    """``"success"`` for an orderly close."""


@attrs.frozen(kw_only=True, slots=False)
class ModelData:
    """Model description inside the ``get_info`` response."""

    arch: Optional[str] = None
    """Architecture family, e.g. ``"qwen3"``; ``None`` if unknown."""
    model_name: Optional[str] = None
    """Base model name."""
    tokenizer_id: Optional[str] = None
    """Tokenizer to use with the model."""


# --------------------------------------------------------------------------- requests


@attrs.frozen(kw_only=True, slots=False)
class ClientConfigRequest:
    """Body of ``POST /api/v1/client/config`` and ``client/dynamic_config``."""

    sdk_version: str
    """SDK version used for server-side flag resolution."""


@attrs.frozen(kw_only=True, slots=False)
class CreateSessionRequest:
    """Body of ``POST /api/v1/create_session``."""

    tags: List[str] = attrs.field(factory=list)
    """Free-form tags for the session."""
    user_metadata: Optional[Dict[str, Any]] = attrs.field(factory=dict)
    """Caller's metadata about the session; sent as ``{}`` when empty."""
    sdk_version: str = WIRE_SDK_VERSION
    """Wire version this client speaks."""
    project_id: Optional[str] = None
    """Project to bill; ``None`` means the key's default project (omitted)."""
    display_name: Optional[str] = None
    """Human-readable session name; ``None`` is omitted."""
    type: Literal["create_session"] = "create_session"


@attrs.frozen(kw_only=True, slots=False)
class SessionHeartbeatRequest:
    """Body of ``POST /api/v1/session_heartbeat``."""

    session_id: str
    type: Literal["session_heartbeat"] = "session_heartbeat"


@attrs.frozen(kw_only=True, slots=False)
class FinishSessionRequest:
    """Body of ``POST /api/v1/sessions/{session_id}/finish``."""

    reason: FinishReason = attrs.field(factory=FinishReason)
    """Why the session ended."""
    detail: Optional[str] = None
    """Free text; the official SDK sends ``null`` when there is none, so this key is never omitted."""


@attrs.frozen(kw_only=True, slots=False)
class CreateModelRequest:
    """Body of ``POST /api/v1/create_model``."""

    session_id: str
    model_seq_id: int
    """Per-session counter of models; the model id is ``<session_id>:train:<model_seq_id>``."""
    base_model: str
    """Base model to fine-tune, e.g. ``"Qwen/Qwen3-8B"``."""
    user_metadata: Optional[Dict[str, Any]] = None
    """Caller's metadata about the run; ``None`` is omitted."""
    lora_config: Optional[LoraConfig] = None
    """LoRA settings; ``None`` is omitted."""
    optimizer_config: OptimizerConfig = attrs.field(factory=OptimizerConfig)
    type: Literal["create_model"] = "create_model"


@attrs.frozen(kw_only=True, slots=False)
class GetInfoRequest:
    """Body of ``POST /api/v1/get_info``."""

    model_id: str
    type: Literal["get_info"] = "get_info"


@attrs.frozen(kw_only=True, slots=False)
class SaveWeightsRequest:
    """Body of ``POST /api/v1/save_weights``."""

    model_id: str
    path: Optional[str] = None
    """Checkpoint name (not a URI); the result is ``tinker://<model_id>/weights/<path>``."""
    seq_id: Optional[int] = None
    """Position of this request in the model's request order."""
    ttl_seconds: Optional[int] = None
    """Lifetime in seconds (at least 3600); ``None`` means it never expires (omitted)."""
    overwrite: bool = False
    """Replace an existing checkpoint of the same name; ``false`` is sent, not omitted."""
    user_metadata: Optional[Dict[str, str]] = None
    """Caller's metadata attached to the checkpoint; ``None`` is omitted."""
    type: Literal["save_weights"] = "save_weights"


@attrs.frozen(kw_only=True, slots=False)
class LoadWeightsRequest:
    """Body of ``POST /api/v1/load_weights``, in either addressing.

    Model addressing sets ``model_id`` and ``seq_id``; session addressing (create-from-state) sets
    ``session_id`` and ``model_seq_id`` and creates the model from the checkpoint.
    """

    model_id: Optional[str] = None
    seq_id: Optional[int] = None
    session_id: Optional[str] = None
    model_seq_id: Optional[int] = None
    base_model: Optional[str] = None
    """Override of the checkpoint's base model (session addressing only); ``None`` is omitted."""
    user_metadata: Optional[Dict[str, Any]] = None
    path: str
    """``tinker://<run>/weights/<name>`` of a training checkpoint."""
    optimizer: bool
    """Whether the Adam moments are restored with the weights. The wire key is ``optimizer``."""
    optimizer_config: Optional[OptimizerConfig] = None
    weights_access_token: Optional[str] = attrs.field(default=None, repr=False)
    """Token for a checkpoint owned by another account; a secret, never shown in repr."""
    type: Literal["load_weights"] = "load_weights"


@attrs.frozen(kw_only=True, slots=False)
class RetrieveFutureRequest:
    """Body of ``POST /api/v1/retrieve_future`` (no ``type`` key)."""

    request_id: str
    allow_metadata_only: bool = False
    """When true the server may answer ``complete_metadata`` instead of a large payload."""


@attrs.frozen(kw_only=True, slots=False)
class WeightsInfoRequest:
    """Body of ``POST /api/v1/weights_info`` (no ``type`` key)."""

    tinker_path: str


@attrs.frozen(kw_only=True, slots=False)
class OptimStepRequest:
    """Body of ``POST /api/v1/optim_step``; the SDK appends its parameters after ``type``.

    Exactly one of ``adam_params`` (the AdamW family) and ``optimizer_params`` (any other family, an
    object with a ``type`` key, e.g. ``{"type": "dimuon", ...}``) is set.
    """

    model_id: str
    seq_id: Optional[int] = None
    type: Literal["optim_step"] = "optim_step"
    adam_params: Optional[AdamParams] = None
    """AdamW hyper-parameters; ``None`` is omitted."""
    optimizer_params: Optional[Dict[str, Any]] = None
    """Hyper-parameters of a non-Adam family, as the SDK's ``OptimParamsBase`` sends them; ``None`` is omitted."""


@attrs.frozen(kw_only=True, slots=False)
class SaveWeightsForSamplerRequest:
    """Body of ``POST /api/v1/save_weights_for_sampler``."""

    model_id: str
    path: Optional[str] = None
    """Checkpoint name; the result is ``tinker://<model_id>/sampler_weights/<path>``."""
    sampling_session_seq_id: Optional[int] = None
    """Set instead of ``path`` by the SDK's unnamed saves; ``None`` is omitted."""
    kind: str = "snapshot"
    """Sampling contract of the saved weights; the SDK always sends ``"snapshot"`` for a named save."""
    seq_id: Optional[int] = None
    ttl_seconds: Optional[int] = None
    """Lifetime in seconds (at least 3600); ``None`` means it never expires (omitted)."""
    user_metadata: Optional[Dict[str, str]] = None
    type: Literal["save_weights_for_sampler"] = "save_weights_for_sampler"


@attrs.frozen(kw_only=True, slots=False)
class SetTtlRequest:
    """Body of ``PUT /api/v1/training_runs/{run}/checkpoints/{id}/ttl``."""

    ttl_seconds: Optional[int] = None
    """New lifetime in seconds from now; ``None`` (sent as ``null``) removes the expiry."""


@attrs.frozen(kw_only=True, slots=False)
class SaveWeightsExternalRequest:
    """Body of ``POST /api/v1/save_weights_external``: export the weights as adapter files with signed URLs."""

    model_id: str
    path: str
    """Export name (not a URI); the result is ``tinker://<model_id>/external_weights/<path>``."""
    seq_id: Optional[int] = None
    """Position of this request in the model's request order."""
    ttl_seconds: Optional[int] = None
    """Lifetime in seconds (at least 3600); ``None`` means it never expires (omitted)."""
    age_encryption_recipients: Optional[List[str]] = None
    """age recipients to encrypt every exported file to; ``None`` (omitted) exports plain files."""
    type: Literal["save_weights_external"] = "save_weights_external"


@attrs.frozen(kw_only=True, slots=False)
class CopyWeightsRequest:
    """Body of ``POST /api/v1/copy_weights``: copy a checkpoint into a project, as a new training run."""

    session_id: Optional[str] = None
    """Session that will own the copy (with ``model_seq_id``); ``None`` is omitted."""
    model_seq_id: Optional[int] = None
    destination_project_id: Optional[str] = None
    """Project that will own the copy when no ``session_id`` is given."""
    source_path: str
    """``tinker://`` path of the checkpoint to copy (any kind)."""
    ttl_seconds: Optional[int] = None
    """Lifetime of the copy in seconds; ``None`` (omitted) never expires."""
    weights_access_token: Optional[str] = attrs.field(default=None, repr=False)
    """Token for weights of another account; the SDK sends it in a header instead, so it is normally None."""


# --------------------------------------------------------------------------- responses


@attrs.frozen(kw_only=True, slots=False)
class CreateSessionResponse:
    """Answer to ``create_session``."""

    session_id: str
    type: Optional[str] = None
    info_message: Optional[str] = None
    warning_message: Optional[str] = None
    error_message: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class UntypedAPIFuture:
    """Answer to every submission (``create_model``, ``save_weights``, ``load_weights``, ``optim_step``)."""

    request_id: str
    """Id to pass to ``retrieve_future``."""
    model_id: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class TryAgainResponse:
    """``retrieve_future`` while the request is pending (HTTP 200 or 408)."""

    type: Literal["try_again"] = "try_again"
    request_id: str
    queue_state: Optional[str] = None
    """``active``, ``paused_capacity``, ``paused_rate_limit`` or a newer value; kept as ``str``."""


@attrs.frozen(kw_only=True, slots=False)
class RequestFailedResponse:
    """``retrieve_future`` for a request that failed after it was accepted."""

    error: str
    category: str = "unknown"
    """``user``, ``server`` or ``unknown``."""


@attrs.frozen(kw_only=True, slots=False)
class CreateModelResponse:
    """Result of a ``create_model`` future."""

    model_id: str
    type: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class SaveWeightsResponse:
    """Result of a ``save_weights`` future."""

    path: str
    """``tinker://<model_id>/weights/<name>`` of the committed checkpoint."""
    type: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class SaveWeightsForSamplerResponse:
    """Result of a ``save_weights_for_sampler`` future."""

    path: Optional[str] = None
    """``tinker://<model_id>/sampler_weights/<name>`` of a named save."""
    sampling_session_id: Optional[str] = None
    """Set instead of ``path`` for an unnamed save."""
    type: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class LoadWeightsResponse:
    """Result of a ``load_weights`` future."""

    path: Optional[str] = None
    model_id: Optional[str] = None
    """Model the weights were loaded onto (session addressing creates it)."""
    type: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class OptimStepResponse:
    """Result of an ``optim_step`` future."""

    metrics: Optional[Dict[str, float]] = None
    type: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class GetInfoResponse:
    """Answer to ``get_info``."""

    model_id: str
    type: Optional[str] = None
    model_data: Optional[ModelData] = None
    optimizer_config: Optional[OptimizerConfig] = None
    is_lora: Optional[bool] = None
    lora_rank: Optional[int] = None
    model_name: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class WeightsInfoResponse:
    """Answer to ``weights_info``."""

    base_model: str
    optimizer_config: Optional[OptimizerConfig] = None
    is_lora: bool = True
    lora_rank: Optional[int] = None
    train_unembed: Optional[bool] = None
    train_mlp: Optional[bool] = None
    train_attn: Optional[bool] = None


@attrs.frozen(kw_only=True, slots=False)
class Checkpoint:
    """One entry of a checkpoint listing."""

    checkpoint_id: str
    """``weights/<name>`` or ``sampler_weights/<name>``."""
    checkpoint_type: str
    """``training``, ``sampler`` or ``external``."""
    time: str
    """Creation time, ISO 8601 UTC."""
    tinker_path: str
    size_bytes: Optional[int] = None
    """Stored size; ``None`` if the server does not know it."""
    public: bool = False
    user_metadata: Optional[Dict[str, str]] = None
    expires_at: Optional[str] = None
    """Expiry time, ISO 8601 UTC; ``None`` means it never expires."""


@attrs.frozen(kw_only=True, slots=False)
class Cursor:
    """Paging information of a listing."""

    offset: int
    limit: int
    total_count: int


@attrs.frozen(kw_only=True, slots=False)
class CheckpointsListResponse:
    """Answer to the checkpoint listings (one run, or all of the user's)."""

    checkpoints: List[Checkpoint]
    cursor: Optional[Cursor] = None
    """``None`` for an unpaged listing."""


@attrs.frozen(kw_only=True, slots=False)
class TrainingRun:
    """Answer to ``GET /api/v1/training_runs/{run}``, and one entry of the training-run listing."""

    training_run_id: str
    base_model: str
    model_owner: Optional[str] = None
    """Owner of the run; the service always says, ``None`` only if it does not."""
    is_lora: bool = True
    corrupted: bool = False
    """Whether the service marked the run's state as corrupted."""
    lora_rank: Optional[int] = None
    last_request_time: Optional[str] = None
    """Time of the run's last request, ISO 8601 UTC."""
    last_checkpoint: Optional[Checkpoint] = None
    """The newest training checkpoint, if any."""
    last_sampler_checkpoint: Optional[Checkpoint] = None
    """The newest sampler checkpoint, if any."""
    user_metadata: Optional[Dict[str, str]] = None


@attrs.frozen(kw_only=True, slots=False)
class TrainingRunsResponse:
    """Answer to ``GET /api/v1/training_runs``."""

    training_runs: List[TrainingRun]
    cursor: Optional[Cursor] = None


@attrs.frozen(kw_only=True, slots=False)
class SaveWeightsExternalResponse:
    """Result of a ``save_weights_external`` future."""

    path: Optional[str] = None
    """``tinker://<model_id>/external_weights/<name>`` of the export."""
    size_bytes: Optional[int] = None
    """Total size of the exported files, if the server says."""
    type: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class ExternalWeightsUrlsResponse:
    """Answer to ``GET .../external_weights/{name}/external_weights_urls``."""

    urls: Dict[str, str]
    """Signed URL per file, keyed by the file's path relative to the checkpoint."""
    expires: str
    """When the URLs stop working, ISO 8601 UTC."""


@attrs.frozen(kw_only=True, slots=False)
class CopyWeightsResponse:
    """Answer to ``copy_weights``."""

    tinker_path: str
    """Path of the copy, in a new training run."""


@attrs.frozen(kw_only=True, slots=False)
class CheckpointStorageUsageItem:
    """One (project, owner) group of ``billing/usage/checkpoints/current``."""

    project_id: Optional[str] = None
    org_user_urn: Optional[str] = None
    user_email: Optional[str] = None
    user_name: Optional[str] = None
    checkpoint_count: int
    size_bytes: int
    size_gigabytes: float
    estimated_monthly_cost_usd: Optional[float] = None


@attrs.frozen(kw_only=True, slots=False)
class CheckpointStorageUsageResponse:
    """Answer to ``GET /api/v1/billing/usage/checkpoints/current``."""

    effective_rate_usd_per_gigabyte_month: Optional[float] = None
    data: List[CheckpointStorageUsageItem]


@attrs.frozen(kw_only=True, slots=False)
class SessionHeartbeatResponse:
    """Answer to ``session_heartbeat``."""

    type: Optional[str] = None


@attrs.frozen(kw_only=True, slots=False)
class SupportedModel:
    """One model of the ``get_server_capabilities`` answer; ``None`` means the server does not say."""

    model_name: Optional[str] = None
    max_context_length: Optional[int] = None
    """Longest context in tokens."""
    trainable: Optional[bool] = None
    sampleable: Optional[bool] = None


@attrs.frozen(kw_only=True, slots=False)
class GetServerCapabilitiesResponse:
    """Answer to ``GET /api/v1/get_server_capabilities``."""

    supported_models: List[SupportedModel]


@attrs.frozen(kw_only=True, slots=False)
class TelemetryResponse:
    """Answer to ``POST /api/v1/telemetry``."""

    status: str
    """``accepted``."""


# --------------------------------------------------------------------------- the pinned table


def _identity(*names: str) -> Dict[str, str]:
    return {name: name for name in names}


#: Key-table value of the one attribute of an open object that holds every key not named in the table.
OTHER_KEYS = "*"

#: Every field of every wire class -> its JSON key. The converter knows no class outside this table.
KEYS: Mapping[type, Mapping[str, str]] = {
    LoraConfig: _identity("rank", "seed", "train_unembed", "train_mlp", "train_attn"),
    OptimizerConfig: {"type": "type", "extra": OTHER_KEYS},
    AdamParams: _identity("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"),
    FinishReason: _identity("type"),
    ModelData: _identity("arch", "model_name", "tokenizer_id"),
    ClientConfigRequest: _identity("sdk_version"),
    CreateSessionRequest: _identity("tags", "user_metadata", "sdk_version", "project_id", "display_name", "type"),
    SessionHeartbeatRequest: _identity("session_id", "type"),
    FinishSessionRequest: _identity("reason", "detail"),
    CreateModelRequest: _identity(
        "session_id", "model_seq_id", "base_model", "user_metadata", "lora_config", "optimizer_config", "type"
    ),
    GetInfoRequest: _identity("model_id", "type"),
    SaveWeightsRequest: _identity("model_id", "path", "seq_id", "ttl_seconds", "overwrite", "user_metadata", "type"),
    LoadWeightsRequest: _identity(
        "model_id",
        "seq_id",
        "session_id",
        "model_seq_id",
        "base_model",
        "user_metadata",
        "path",
        "optimizer",
        "optimizer_config",
        "weights_access_token",
        "type",
    ),
    RetrieveFutureRequest: _identity("request_id", "allow_metadata_only"),
    WeightsInfoRequest: _identity("tinker_path"),
    OptimStepRequest: _identity("model_id", "seq_id", "type", "adam_params", "optimizer_params"),
    SaveWeightsForSamplerRequest: _identity(
        "model_id", "path", "sampling_session_seq_id", "kind", "seq_id", "ttl_seconds", "user_metadata", "type"
    ),
    SetTtlRequest: _identity("ttl_seconds"),
    CreateSessionResponse: _identity("session_id", "type", "info_message", "warning_message", "error_message"),
    UntypedAPIFuture: _identity("request_id", "model_id"),
    TryAgainResponse: _identity("type", "request_id", "queue_state"),
    RequestFailedResponse: _identity("error", "category"),
    CreateModelResponse: _identity("model_id", "type"),
    SaveWeightsResponse: _identity("path", "type"),
    SaveWeightsForSamplerResponse: _identity("path", "sampling_session_id", "type"),
    LoadWeightsResponse: _identity("path", "model_id", "type"),
    OptimStepResponse: _identity("metrics", "type"),
    GetInfoResponse: _identity(
        "model_id", "type", "model_data", "optimizer_config", "is_lora", "lora_rank", "model_name"
    ),
    WeightsInfoResponse: _identity(
        "base_model", "optimizer_config", "is_lora", "lora_rank", "train_unembed", "train_mlp", "train_attn"
    ),
    Checkpoint: _identity(
        "checkpoint_id",
        "checkpoint_type",
        "time",
        "tinker_path",
        "size_bytes",
        "public",
        "user_metadata",
        "expires_at",
    ),
    Cursor: _identity("offset", "limit", "total_count"),
    CheckpointsListResponse: _identity("checkpoints", "cursor"),
    SaveWeightsExternalRequest: _identity("model_id", "path", "seq_id", "ttl_seconds", "age_encryption_recipients", "type"),
    CopyWeightsRequest: _identity(
        "session_id", "model_seq_id", "destination_project_id", "source_path", "ttl_seconds", "weights_access_token"
    ),
    TrainingRun: _identity(
        "training_run_id",
        "base_model",
        "model_owner",
        "is_lora",
        "corrupted",
        "lora_rank",
        "last_request_time",
        "last_checkpoint",
        "last_sampler_checkpoint",
        "user_metadata",
    ),
    TrainingRunsResponse: _identity("training_runs", "cursor"),
    SaveWeightsExternalResponse: _identity("path", "size_bytes", "type"),
    ExternalWeightsUrlsResponse: _identity("urls", "expires"),
    CopyWeightsResponse: _identity("tinker_path"),
    CheckpointStorageUsageItem: _identity(
        "project_id",
        "org_user_urn",
        "user_email",
        "user_name",
        "checkpoint_count",
        "size_bytes",
        "size_gigabytes",
        "estimated_monthly_cost_usd",
    ),
    CheckpointStorageUsageResponse: _identity("effective_rate_usd_per_gigabyte_month", "data"),
    SessionHeartbeatResponse: _identity("type"),
    SupportedModel: _identity("model_name", "max_context_length", "trainable", "sampleable"),
    GetServerCapabilitiesResponse: _identity("supported_models"),
    TelemetryResponse: _identity("status"),
}


#: Request fields sent as ``null`` when None (the official SDK does); every other None-valued request field is
#: omitted. Answers carry every field, None as ``null``, as the service's own answers do.
SEND_NULL: Mapping[type, Tuple[str, ...]] = {
    FinishSessionRequest: ("detail",),
    SetTtlRequest: ("ttl_seconds",),
}
