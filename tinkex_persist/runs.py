"""Training runs: describe one (``last_checkpoint``, ``corrupted``) and list all of the user's.

Both functions take the ``ServiceClient`` first, check their arguments at once (``UsageError``/
``TypeError``, nothing sent) and return a plain ``concurrent.futures.Future``.
"""

import concurrent.futures
import logging
from typing import List, Optional
from urllib.parse import quote

from . import _ops, _paths, _wire
from ._paths import SCHEME, parse_path
from ._time import parse_time
from ._transport import Transport
from .checkpoints import checkpoint_info_from_wire
from .client import ServiceClient, runner_of
from .types import TrainingRun

logger = logging.getLogger(__name__)

__all__ = ("TrainingRun", "get_training_run", "list_training_runs")

#: Training runs requested per page of the listing.
RUNS_PAGE_SIZE = 100
#: Characters of a run id sent as they are in the URL path (the SDK keeps the colons); the rest is percent-encoded.
_PATH_SAFE = ":@!$&'()*+,;=~"


def run_path(run_id: str) -> str:
    """The REST path of a training run below ``/api/v1``: ``/training_runs/<run_id>``."""
    return "/training_runs/%s" % quote(run_id, safe=_PATH_SAFE)


def _training_run(run: _wire.TrainingRun) -> TrainingRun:
    return TrainingRun(
        training_run_id=run.training_run_id,
        base_model=run.base_model,
        model_owner=run.model_owner,
        is_lora=run.is_lora,
        lora_rank=run.lora_rank,
        corrupted=run.corrupted,
        last_request_time=parse_time(run.last_request_time),
        last_checkpoint=None if run.last_checkpoint is None else checkpoint_info_from_wire(run.last_checkpoint),
        last_sampler_checkpoint=(
            None if run.last_sampler_checkpoint is None else checkpoint_info_from_wire(run.last_sampler_checkpoint)
        ),
        user_metadata=run.user_metadata,
    )


def _get(transport: Transport, run_id: str) -> TrainingRun:
    resp = _ops.call(transport, "GET", run_path(run_id) + "?access_scope=owned", None, _wire.TrainingRun)
    return _training_run(resp)


def _list(transport: Transport, limit: Optional[int], page_size: int) -> List[TrainingRun]:
    found: List[TrainingRun] = []
    seen = set()
    offset = 0
    while True:
        page = page_size if limit is None else min(page_size, limit - len(found))
        resp = _ops.call(
            transport,
            "GET",
            "/training_runs?limit=%d&offset=%d&access_scope=owned" % (page, offset),
            None,
            _wire.TrainingRunsResponse,
        )
        for run in resp.training_runs:
            if run.training_run_id not in seen:  # a run created while paging shifts the list: keep each once
                seen.add(run.training_run_id)
                found.append(_training_run(run))
        offset += len(resp.training_runs)
        if (
            not resp.training_runs
            or resp.cursor is None
            or offset >= resp.cursor.total_count
            or (limit is not None and len(found) >= limit)
        ):
            return found if limit is None else found[:limit]


def run_id_of(run_id_or_tinker_path: str) -> str:
    """Return the run id of a run id or of a ``tinker://<run>/<kind>/<name>`` path; raise ``UsageError`` if neither."""
    if isinstance(run_id_or_tinker_path, str) and run_id_or_tinker_path.startswith(SCHEME):
        return parse_path(run_id_or_tinker_path, training=False).run_id
    return _paths.check_run_id(run_id_or_tinker_path)


def get_training_run(service: ServiceClient, run_id_or_tinker_path: str) -> "concurrent.futures.Future[TrainingRun]":
    """Describe a training run: base model, LoRA rank, ``corrupted``, its newest checkpoints.

    ``GET /api/v1/training_runs/<run>?access_scope=owned`` (what the SDK's ``get_training_run`` and
    ``get_training_run_by_tinker_path`` send). ``last_checkpoint.tinker_path`` is where to resume from.

    Args:
        service: the service client to use.
        run_id_or_tinker_path: a run id such as ``<session>:train:0``, or any ``tinker://<run>/<kind>/<name>``
            path of the run.

    Returns:
        A Future of :class:`~tinkex_persist.types.TrainingRun`.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        NotFoundError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    runner = runner_of(service)
    run_id = run_id_of(run_id_or_tinker_path)
    return runner.submit(_get, runner.transport, run_id)


def list_training_runs(
    service: ServiceClient, *, limit: Optional[int] = None, page_size: int = RUNS_PAGE_SIZE
) -> "concurrent.futures.Future[List[TrainingRun]]":
    """List the user's training runs, every page (``GET /api/v1/training_runs?limit=&offset=&access_scope=owned``).

    Args:
        service: the service client to use.
        limit: return at most this many (stops paging early); ``None`` returns all.
        page_size: runs asked for per request.

    Returns:
        A Future of a list of :class:`~tinkex_persist.types.TrainingRun`, in the server's order, each once.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    runner = runner_of(service)
    if limit is not None:
        _paths.check_int(limit, "limit")
    _paths.check_int(page_size, "page_size")
    return runner.submit(_list, runner.transport, limit, page_size)
