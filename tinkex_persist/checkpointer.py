"""``Checkpointer``: periodic, pruned, crash-safe checkpoints of a training loop, recorded in ``checkpoints.jsonl``.

The record file is the tinker-cookbook's (``tinker_cookbook/checkpoint_utils.py``): one JSON object per line
with ``name``, the loop state (``batch``: steps completed, the next step to run) and ``state_path`` /
``sampler_path``, so a run started with either tool continues with the other.
"""

import concurrent.futures
import json
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Union

import attrs

from . import _paths
from .api import create_training_client_from_state_with_optimizer
from .client import ServiceClient, TrainingClient
from .exceptions import CheckpointDeleteError, CheckpointExistsError, NotFoundError, UsageError

logger = logging.getLogger(__name__)

__all__ = ("Checkpointer", "Resume", "ResumePlan", "read_records", "resume_plan")

#: Name of the record file inside the log directory (the tinker-cookbook's ``CHECKPOINTS_BASE_NAME``).
RECORDS_FILE = "checkpoints.jsonl"
#: Resume sources, the value of :attr:`Checkpointer.source` and :attr:`Resume.source`.
SOURCE_RECORD = "record"
SOURCE_RUN = "run"
SOURCE_FRESH = "fresh"
#: Name of the final checkpoint, as the cookbook's loops name theirs.
FINAL_NAME = "final"
#: Record keys the Checkpointer writes itself; loop state may not use them.
RESERVED_KEYS = frozenset({"name", "batch", "state_path", "sampler_path", "final", "periodic"})
#: Checkpoint ``user_metadata`` keys holding the loop position, read back when resuming from a run id.
META_BATCH = "batch"
META_LOOP_STATE = "loop_state"
#: Longest JSON loop state copied into a checkpoint's ``user_metadata``; longer state stays in the record only.
MAX_META_STATE = 2048

PathLike = Union[str, "os.PathLike[str]"]


@attrs.frozen(kw_only=True)
class ResumePlan:
    """What :meth:`Checkpointer.resume_or_create` will do, decided from the record file (and the run id)."""

    source: str
    """``record`` (newest record with a ``state_path``), ``run`` (the run's ``last_checkpoint``) or ``fresh``."""
    start: int
    """The next step to run: the steps completed when the checkpoint was saved; 0 for a fresh run."""
    path: Optional[str] = None
    """The ``tinker://`` training checkpoint to resume from; ``None`` for a fresh run."""
    state: Dict[str, Any] = attrs.field(factory=dict)
    """Extra loop state saved with the checkpoint (``**state`` of :meth:`Checkpointer.step`)."""
    record: Optional[Dict[str, Any]] = None
    """The record resumed from, as read from the file (source ``record`` only)."""
    run_id: Optional[str] = None
    """The training run asked about (source ``run``), or the run of ``path``."""

    def to_json(self) -> Dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "source": self.source,
            "start": self.start,
            "path": self.path,
            "run_id": self.run_id,
            "state": self.state,
            "record": self.record,
        }


@attrs.frozen(kw_only=True)
class Resume:
    """Result of :meth:`Checkpointer.resume_or_create`. Unpacks as ``tc, start = ...``."""

    training_client: TrainingClient
    """The resumed (weights and Adam state) or new training client."""
    start: int
    """The next step to run."""
    source: str
    """``record``, ``run`` or ``fresh`` (see :class:`ResumePlan`)."""
    path: Optional[str] = None
    """The checkpoint resumed from; ``None`` for a fresh run."""
    state: Dict[str, Any] = attrs.field(factory=dict)
    """Extra loop state saved with that checkpoint; empty for a fresh run."""

    def __iter__(self) -> Iterator[Any]:
        yield self.training_client
        yield self.start


# --------------------------------------------------------------------------- the record file


def _parse_line(line: bytes) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(line.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    return value


def read_records(log_dir: PathLike) -> List[Dict[str, Any]]:
    """Return the records of ``log_dir/checkpoints.jsonl`` in file order; ``[]`` if it does not exist.

    A torn or garbled line (a crash mid-write, a hand edit) is skipped with a WARNING, never fatal.

    Args:
        log_dir: the run's log directory.

    Returns:
        A list of dicts, one per valid line.
    """
    path = os.path.join(os.fspath(log_dir), RECORDS_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        record = _parse_line(line)
        if record is None:
            logger.warning(
                "ignoring %s line %d of %s (%d bytes): not a JSON record with a name",
                "the torn last" if i == last else "garbled",
                i + 1,
                path,
                len(line),
            )
            continue
        records.append(record)
    return records


def _batch_of(record: Dict[str, Any], where: str) -> int:
    for key in ("batch", "step"):
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    raise UsageError(
        "%s has no 'batch' (the steps completed when it was saved), so the next step to run is unknown: %r"
        % (where, record)
    )


def _state_of(record: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in record.items() if k not in RESERVED_KEYS}


def _int_name(name: str) -> Optional[int]:
    return int(name) if name.isdigit() else None


def resume_plan(
    log_dir: PathLike, *, service: Optional[ServiceClient] = None, run_id: Optional[str] = None
) -> ResumePlan:
    """Decide where a run resumes: newest record with a ``state_path``, else the run's last checkpoint, else fresh.

    Reads the record file and, only when it has no resumable record and ``run_id`` is given, asks the
    server for the run (``GET /api/v1/training_runs/<run_id>``). Nothing is created.

    Args:
        log_dir: the run's log directory.
        service: needed only to look ``run_id`` up.
        run_id: a known training run to resume when the log has no record.

    Returns:
        A :class:`ResumePlan`.

    Raises:
        UsageError: a bad argument, or the chosen checkpoint does not say which step it was saved at.
        NotFoundError, APIStatusError, APIConnectionError: the run lookup failed.
    """
    if run_id is not None:
        _paths.check_run_id(run_id)
    where = os.path.join(os.fspath(log_dir), RECORDS_FILE)
    resumable = [r for r in read_records(log_dir) if isinstance(r.get("state_path"), str)]
    if resumable:
        record = resumable[-1]
        path = record["state_path"]
        tp = _paths.parse_path(path)
        start = _batch_of(record, "the newest record of %s (%s)" % (where, record["name"]))
        return ResumePlan(
            source=SOURCE_RECORD, start=start, path=path, state=_state_of(record), record=record, run_id=tp.run_id
        )
    if run_id is None:
        return ResumePlan(source=SOURCE_FRESH, start=0)
    if not isinstance(service, ServiceClient):
        raise UsageError("looking up run %s needs a ServiceClient" % run_id)
    checkpoint = _last_checkpoint(service, run_id)
    if checkpoint is None:
        logger.info("run %s has no training checkpoint", run_id)
        return ResumePlan(source=SOURCE_FRESH, start=0, run_id=run_id)
    path, metadata = checkpoint
    name = _paths.parse_path(path).name
    run_start: Optional[int] = None
    if META_BATCH in metadata and metadata[META_BATCH].isdigit():
        run_start = int(metadata[META_BATCH])
    else:
        run_start = _int_name(name)
    if run_start is None:
        raise UsageError(
            "the last checkpoint of run %s (%s) does not say which step it was saved at "
            "(no 'batch' in its user_metadata and a name that is not a step number)" % (run_id, path)
        )
    state: Dict[str, Any] = {}
    if META_LOOP_STATE in metadata:
        try:
            loaded = json.loads(metadata[META_LOOP_STATE])
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            state = loaded
    return ResumePlan(source=SOURCE_RUN, start=run_start, path=path, state=state, run_id=run_id)


def _last_checkpoint(service: ServiceClient, run_id: str) -> Optional[Tuple[str, Dict[str, str]]]:
    """Return (tinker_path, user_metadata) of the run's ``last_checkpoint``, or None."""
    from .runs import get_training_run  # on first use: resumes from a run id are rare

    run = get_training_run(service, run_id).result()
    checkpoint = run.last_checkpoint
    if checkpoint is None:
        return None
    return checkpoint.tinker_path, dict(checkpoint.user_metadata or {})


# --------------------------------------------------------------------------- the Checkpointer


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError("%s must be an int >= %d, got %r" % (what, minimum, value))
    return value


def _check_state(state: Dict[str, Any]) -> str:
    bad = sorted(k for k in state if k in RESERVED_KEYS)
    if bad:
        raise UsageError("loop state may not use the record's own keys %s" % ", ".join(bad))
    try:
        return json.dumps(state, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError("loop state must be JSON-serialisable (finite numbers, str keys): %s" % exc) from None


class Checkpointer:
    """Save a training loop's checkpoints when due, prune old ones, and resume exactly where the run stopped.

    Synchronous: each call returns when its saves committed and the record is on disk. One
    Checkpointer (one process) writes a log directory at a time.

    Args:
        service: the service client to save, resume and prune with.
        log_dir: directory of the record file ``checkpoints.jsonl`` (created on the first save).
        save_every: save when ``step % save_every == 0``.
        keep_last: keep the newest ``keep_last`` periodic checkpoints of this log and delete older ones;
            ``None`` deletes nothing. The final checkpoint, published ones and checkpoints this log did not
            record are never deleted.
        ttl_seconds: lifetime of periodic checkpoints (3600 s to 10 years); ``None`` keeps them.
            The final checkpoint never expires.
        sampler: also save sampler weights with each checkpoint (recorded as ``sampler_path``).
        run_id: a training run to resume from (its server-side ``last_checkpoint``) when the log has no record.

    Raises:
        UsageError, TypeError: bad arguments.

    Attributes:
        source: after :meth:`resume_or_create`, ``record``, ``run`` or ``fresh``; ``None`` before.
        path: the record file.
    """

    def __init__(
        self,
        service: ServiceClient,
        log_dir: PathLike,
        *,
        save_every: int,
        keep_last: Optional[int] = None,
        ttl_seconds: Optional[int] = None,
        sampler: bool = False,
        run_id: Optional[str] = None,
    ) -> None:
        if not isinstance(service, ServiceClient):
            raise TypeError("expected a tinkex_persist.ServiceClient, got %s" % type(service).__name__)
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError("log_dir must be a path, got %s" % type(log_dir).__name__)
        self.service = service
        self.log_dir = os.fspath(log_dir)
        self.path = os.path.join(self.log_dir, RECORDS_FILE)
        self.save_every = _check_int(save_every, "save_every", 1)
        self.keep_last = None if keep_last is None else _check_int(keep_last, "keep_last", 1)
        self.ttl_seconds = _paths.check_ttl(ttl_seconds)
        if not isinstance(sampler, bool):
            raise UsageError("sampler must be a bool, got %r" % (sampler,))
        self.sampler = sampler
        self.run_id = None if run_id is None else _paths.check_run_id(run_id)
        self.source: Optional[str] = None
        self._resumed: Optional[Tuple[str, int]] = None  # (model_id, start) of the resumed client
        self._saved: Set[Tuple[str, int, bool]] = set()  # (model_id, batch, final) saved by this object
        self._attempted: Set[str] = set()  # checkpoint paths whose save was sent and failed
        self._tail_checked = False
        self._gone: Set[str] = set()  # pruned paths (deleted, or found missing)
        self._spared: Set[str] = set()  # published paths retention leaves alone

    def __repr__(self) -> str:
        return "<Checkpointer %r save_every=%d keep_last=%r>" % (self.log_dir, self.save_every, self.keep_last)

    # ------------------------------------------------------------------ resume

    def plan(self) -> ResumePlan:
        """Return what :meth:`resume_or_create` would do; creates nothing.

        Raises:
            UsageError: the chosen checkpoint does not say which step it was saved at.
            NotFoundError, APIStatusError, APIConnectionError: the run lookup (``run_id``) failed.
        """
        return resume_plan(self.log_dir, service=self.service, run_id=self.run_id)

    def resume_or_create(self, base_model: str, *, rank: int = 32, **create_kwargs: Any) -> Resume:
        """Resume from the newest checkpoint (weights and Adam state), or create a fresh LoRA run.

        The newest record with a ``state_path`` wins; without one, the ``last_checkpoint`` of ``run_id``;
        without that, ``create_lora_training_client(base_model, rank=rank, **create_kwargs)``. Which one
        happened is logged at INFO and kept in :attr:`source`.

        Args:
            base_model: the base model of a fresh run.
            rank: LoRA rank of a fresh run.
            **create_kwargs: further arguments of ``create_lora_training_client`` (``seed``, ``train_mlp``,
                ``user_metadata``, ...); a resume uses ``user_metadata`` only.

        Returns:
            A :class:`Resume`; ``tc, start = ckpt.resume_or_create(...)`` unpacks the client and the next
            step to run, and ``.state`` holds the extra loop state saved with the checkpoint.

        Raises:
            UsageError, TypeError: bad arguments, or an unusable record.
            RequestFailedError, APIStatusError, APIConnectionError, DecodeError: the server failed.
        """
        if not isinstance(base_model, str) or not base_model:
            raise UsageError("base_model must be a non-empty str")
        plan = self.plan()
        if plan.path is not None:
            tc = create_training_client_from_state_with_optimizer(
                self.service, plan.path, user_metadata=create_kwargs.get("user_metadata")
            ).result()
            if plan.source == SOURCE_RECORD:
                logger.info(
                    "resuming from the record %s of %s: %s (weights and optimizer) as %s; next step %d",
                    plan.record["name"] if plan.record else "?",
                    self.path,
                    plan.path,
                    tc.model_id,
                    plan.start,
                )
            else:
                logger.info(
                    "no resumable record in %s; resuming run %s from its last checkpoint %s as %s; next step %d",
                    self.path,
                    plan.run_id,
                    plan.path,
                    tc.model_id,
                    plan.start,
                )
        else:
            tc = self.service.create_lora_training_client(base_model, rank=rank, **create_kwargs).result()
            logger.info("no checkpoint to resume in %s; created a fresh run %s of %s", self.path, tc.model_id, base_model)
        self.source = plan.source
        self._resumed = (tc.model_id, plan.start)
        return Resume(training_client=tc, start=plan.start, source=plan.source, path=plan.path, state=dict(plan.state))

    # ------------------------------------------------------------------ saving

    def due(self, step: int) -> bool:
        """Whether :meth:`step` saves at ``step`` (a positive multiple of ``save_every``)."""
        return step > 0 and step % self.save_every == 0

    def step(self, tc: TrainingClient, step: int, **state: Any) -> Optional[Dict[str, Any]]:
        """Save a checkpoint if ``step`` is due, record it, then prune old ones.

        Call it after each optimizer step with the number of steps completed (the next step to run).
        A step already saved for this client (e.g. the step just resumed at) is not saved again.

        Args:
            tc: the training client.
            step: steps completed so far.
            **state: extra JSON-serialisable loop state (epoch, data position, seeds) stored in the
                record and returned by :meth:`resume_or_create`.

        Returns:
            The record written, or ``None`` when no save was due.

        Raises:
            UsageError, TypeError: bad arguments (nothing is sent).
            CheckpointExistsError, RequestFailedError, APIStatusError, APIConnectionError: the save failed; the
                record file is untouched. Retention failures are logged, never raised.
            OSError: the record could not be written (the checkpoint exists on the server, unrecorded).
        """
        tc, step, encoded = self._check(tc, step, state)
        if not self.due(step) or self._already_saved(tc, step, final=False):
            return None
        record = self._save(tc, step, state, encoded, final=False)
        self._prune()
        return record

    def finish(self, tc: TrainingClient, step: int, **state: Any) -> Dict[str, Any]:
        """Save the final checkpoint (named ``final``, no TTL, never pruned) and record it.

        If the run resumed from a final record at this very step, nothing is saved again.

        Args:
            tc: the training client.
            step: steps completed (the total).
            **state: extra JSON-serialisable loop state.

        Returns:
            The final record.

        Raises:
            Same as :meth:`step`.
        """
        tc, step, encoded = self._check(tc, step, state)
        if self._already_saved(tc, step, final=True):
            newest = [r for r in read_records(self.log_dir) if isinstance(r.get("state_path"), str)]
            if newest and newest[-1].get("final") is True and newest[-1].get("batch") == step:
                logger.info("run already finished at step %d (%s); not saved again", step, newest[-1]["state_path"])
                self._prune()  # what a killed run left to prune
                return newest[-1]
        record = self._save(tc, step, state, encoded, final=True)
        self._prune()
        return record

    def _check(self, tc: Any, step: Any, state: Dict[str, Any]) -> Tuple[TrainingClient, int, str]:
        if not isinstance(tc, TrainingClient):
            raise TypeError("expected a tinkex_persist.TrainingClient, got %s" % type(tc).__name__)
        _check_int(step, "step", 0)
        return tc, step, _check_state(state)

    def _already_saved(self, tc: TrainingClient, step: int, *, final: bool) -> bool:
        if (tc.model_id, step, final) in self._saved:
            return True
        if self._resumed != (tc.model_id, step):
            return False
        # The client was just resumed at this step: its state is that checkpoint's. A periodic save would
        # repeat it; a final one is needed unless it was the final checkpoint.
        if not final:
            return True
        newest = [r for r in read_records(self.log_dir) if isinstance(r.get("state_path"), str)]
        return bool(newest) and newest[-1].get("final") is True

    def _save(self, tc: TrainingClient, step: int, state: Dict[str, Any], encoded: str, *, final: bool) -> Dict[str, Any]:
        name = FINAL_NAME if final else "%06d" % step
        ttl = None if final else self.ttl_seconds
        metadata = {META_BATCH: str(step)}
        if state and len(encoded) <= MAX_META_STATE:
            metadata[META_LOOP_STATE] = encoded
        futures: Dict[str, "concurrent.futures.Future[Any]"] = {
            "state_path": tc.save_state(name, ttl_seconds=ttl, user_metadata=metadata)
        }
        if self.sampler:
            futures["sampler_path"] = tc.save_weights_for_sampler(name, ttl_seconds=ttl)
        concurrent.futures.wait(list(futures.values()))
        paths: Dict[str, str] = {}
        for key, future in futures.items():
            try:
                paths[key] = future.result().path
            except CheckpointExistsError as exc:
                # Our own earlier attempt of this very save failed after the server committed it.
                if not exc.path or exc.path not in self._attempted:
                    raise
                logger.debug("%s exists from an earlier attempt of this save; counted as committed", exc.path)
                paths[key] = exc.path
            except Exception:
                kind = "sampler_weights" if key == "sampler_path" else "weights"
                self._attempted.add("%s%s/%s/%s" % (_paths.SCHEME, tc.model_id, kind, name))
                raise
        record: Dict[str, Any] = {"name": name, "batch": step}
        record.update(state)
        record["final" if final else "periodic"] = True
        record.update(paths)
        logger.debug("checkpoint %s committed; recording it in %s", paths["state_path"], self.path)
        self._append(record)
        self._saved.add((tc.model_id, step, final))
        logger.info("saved %s checkpoint %s at step %d: %s", "the final" if final else "a", name, step, paths["state_path"])
        return dict(record)

    def _append(self, record: Dict[str, Any]) -> None:
        """Append one record line and fsync it (and, for a new file, its directory)."""
        line = (json.dumps(record) + "\n").encode("utf-8")
        os.makedirs(self.log_dir, exist_ok=True)
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if not self._tail_checked:
                self._repair_tail(fd)
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._tail_checked = True
        if created:
            _fsync_dir(self.log_dir)

    def _repair_tail(self, fd: int) -> None:
        """Make the file end with a newline: complete a whole last record, cut a torn one."""
        size = os.fstat(fd).st_size
        if size == 0 or _read_at(fd, size - 1, 1) == b"\n":
            return
        data = _read_at(fd, 0, size)
        cut = data.rfind(b"\n") + 1
        if _parse_line(data[cut:]) is not None:
            os.write(fd, b"\n")
        else:
            logger.warning("cutting a torn last line (%d bytes) from %s before appending", size - cut, self.path)
            os.ftruncate(fd, cut)
        os.fsync(fd)

    # ------------------------------------------------------------------ retention

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        try:
            self._prune_once(self.keep_last)
        except Exception as exc:  # retention never breaks the training loop; the next save retries
            logger.warning("pruning old checkpoints of %s failed (retried at the next save): %s", self.path, exc)

    def _prune_once(self, keep: int) -> None:
        from .checkpoints import delete_checkpoints, list_checkpoints

        records = read_records(self.log_dir)
        periodic = [
            r for r in records if r.get("periodic") is True and r.get("final") is not True and isinstance(r.get("state_path"), str)
        ]
        doomed = periodic[:-keep]
        if not doomed:
            return
        doomed_ids = {id(r) for r in doomed}
        kept_paths = {
            r.get(key) for r in records if id(r) not in doomed_ids for key in ("state_path", "sampler_path")
        }
        candidates: List[str] = []
        for r in doomed:
            for key in ("state_path", "sampler_path"):
                p = r.get(key)
                if isinstance(p, str) and p not in kept_paths and p not in self._gone and p not in self._spared:
                    if p not in candidates:
                        candidates.append(p)
        if not candidates:
            return
        runs: Dict[str, List[str]] = {}
        for p in candidates:
            runs.setdefault(_paths.parse_path(p, training=False).run_id, []).append(p)
        to_delete: List[str] = []
        for run_id, paths in runs.items():
            try:
                listed = {c.tinker_path: c for c in list_checkpoints(self.service, run_id).result()}
            except NotFoundError:
                listed = {}
            for p in paths:
                info = listed.get(p)
                if info is None:
                    self._gone.add(p)
                elif info.public:
                    logger.info("keeping %s: it is published", p)
                    self._spared.add(p)
                else:
                    to_delete.append(p)
        if not to_delete:
            return
        try:
            report = delete_checkpoints(self.service, to_delete).result()
            outcomes = report.outcomes
        except CheckpointDeleteError as exc:
            outcomes = exc.report.outcomes
        failed = []
        for outcome in outcomes:
            if outcome.status in ("deleted", "not_found"):
                self._gone.add(outcome.path)
            else:
                failed.append(outcome)
        logger.info("pruned %d old checkpoint(s) of %s", len(outcomes) - len(failed), self.path)
        if failed:
            logger.warning(
                "could not delete %d old checkpoint(s) of %s (retried at the next save); first: %s: %s",
                len(failed),
                self.path,
                failed[0].path,
                failed[0].error,
            )


def _read_at(fd: int, offset: int, size: int) -> bytes:
    # Appends (O_APPEND) always go to the end, so moving the offset to read is safe; os.pread is Unix-only.
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while size > 0:
        chunk = os.read(fd, size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _fsync_dir(path: str) -> None:
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:  # pragma: no cover - Windows cannot open directories
        return
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
