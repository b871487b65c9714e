"""Protocol state of the local server: sessions, models, futures, seq_id ordering, replays, stats and faults.

Every endpoint is a method taking a decoded ``_wire`` request and returning a JSON-able answer, or raising
:class:`HTTPError`. Answers are built as ``_wire`` response objects and encoded by the response converter
(:func:`_answer_json`), so one key table pins both what clients send and what this server answers.
Operations run when submitted; their futures complete at once or after ``complete_delay``.
"""

import base64
import collections
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Set, Tuple
from urllib.parse import quote

from .. import _converter, _paths, _proto, _wire
from ..exceptions import UsageError
from ..training_types import ForwardBackwardOutput, TensorData
from . import _lm
from ._export import adapter_files
from ._model import ModelState
from ._options import ServerOptions
from ._store import CheckpointStore, StoreError, checkpoint_wire, iso

logger = logging.getLogger(__name__)

#: Largest LoRA rank the local server accepts (a model holds ``rank * 256`` float64 values).
MAX_RANK = 1024
#: Per model, how many of the latest seq_ids keep their answer for replay to a retry.
REPLAY_WINDOW = 1024


class HTTPError(Exception):
    """An error answer: status code, a one-line ``detail`` and optional extra JSON fields."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.body = {"detail": detail}
        self.body.update(extra)


class UserError(Exception):
    """An accepted operation failed because of its arguments: the future fails with category ``user``."""


class Stats:
    """Request and response counters of a running server, keyed by request path (without the query)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: path -> number of requests received.
        self.requests: "collections.Counter[str]" = collections.Counter()
        #: (path, status) -> number of responses sent.
        self.responses: "collections.Counter[Tuple[str, int]]" = collections.Counter()

    def record(self, path: str, status: Optional[int] = None) -> None:
        with self._lock:
            if status is None:
                self.requests[path] += 1
            else:
                self.responses[(path, status)] += 1

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.responses.clear()


class _Future:
    __slots__ = ("id", "outcome", "done", "created")

    def __init__(self, rid: str, outcome: Dict[str, Any], done: bool, created: float) -> None:
        self.id, self.outcome, self.done, self.created = rid, outcome, done, created


class _Model:
    def __init__(self, model_id: str, session_id: str, state: ModelState, lora: Dict[str, bool]) -> None:
        self.id = model_id
        self.session_id = session_id
        self.state = state
        self.lora = lora
        self.next_seq = 1
        self.replays: Dict[int, Tuple[str, Dict[str, Any], Dict[str, Any]]] = {}
        #: The run's metadata (from create_model or create-from-state) and its last request time (epoch s).
        self.user_metadata: Optional[Dict[str, Any]] = None
        self.last_request = 0.0


def _answer_json(obj: Any) -> Dict[str, Any]:
    """Return the JSON form of a ``_wire`` answer, exactly as the service sends it."""
    return _converter.encode_response(obj)


def _failed(exc: "UserError") -> Dict[str, Any]:
    return _answer_json(_wire.RequestFailedResponse(error=str(exc), category="user"))


def canonical(data: Any) -> str:
    """Return the canonical JSON text of a decoded body, used to recognise identical replays."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


class Service:
    """The protocol state behind one running :class:`LocalServer`; all methods are thread-safe."""

    def __init__(self, store: CheckpointStore, options: ServerOptions) -> None:
        self.store = store
        self.options = options
        self.clock: Callable[[], float] = options.clock
        self.seq_log: Dict[str, List[Optional[int]]] = collections.defaultdict(list)
        self._cond = threading.Condition()
        self._sessions: Dict[str, Dict[str, Any]] = {}
        self._models: Dict[str, _Model] = {}
        self._futures: Dict[str, _Future] = {}
        self._idem: "collections.OrderedDict[str, Tuple[str, int, Any]]" = collections.OrderedDict()
        self._timers: List[threading.Timer] = []
        self._prefix = uuid.uuid4().hex[:8]
        self._counter = 0
        self._secret = os.urandom(32)
        self._stopping = False
        self._corrupted: Set[str] = set()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for t in self._timers:
                t.cancel()
            self._cond.notify_all()
        self.store.close()

    # ------------------------------------------------------------------ futures

    def _new_future(self, outcome: Dict[str, Any]) -> _Future:
        self._counter += 1
        if self._counter % 1000 == 0:
            # Drop expired futures now and then; otherwise only a poll of an expired one removes it.
            horizon = self.clock() - self.options.future_ttl
            for rid in [rid for rid, f in self._futures.items() if f.created < horizon]:
                del self._futures[rid]
        rid = "req-%s-%d" % (self._prefix, self._counter)
        delay = self.options.complete_delay
        fut = self._futures[rid] = _Future(rid, outcome, delay <= 0, self.clock())
        if delay > 0:
            timer = threading.Timer(delay, self._complete, (fut,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        return fut

    def _complete(self, fut: _Future) -> None:
        with self._cond:
            fut.done = True
            self._timers = [t for t in self._timers if t.is_alive() and t is not threading.current_thread()]
            self._cond.notify_all()

    def _live_future(self, rid: str) -> Optional[_Future]:
        fut = self._futures.get(rid)
        if fut is not None and self.clock() > fut.created + self.options.future_ttl:
            del self._futures[rid]
            return None
        return fut

    def retrieve_future(self, req: _wire.RetrieveFutureRequest) -> Tuple[int, Dict[str, Any]]:
        """Answer a poll: the outcome, or ``try_again`` after the long-poll hold (410 if unknown)."""
        with self._cond:
            fut = self._live_future(req.request_id)
            if fut is None:
                raise HTTPError(410, "request %s is unknown or expired" % req.request_id)
            if self.options.long_poll:
                deadline = time.monotonic() + self.options.long_poll_timeout
                while not fut.done and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            if fut.done:
                return 200, fut.outcome
        pending = _wire.TryAgainResponse(request_id=fut.id, queue_state="active")
        return self.options.pending_status, _answer_json(pending)

    def _answer(self, model_id: str, outcome: Dict[str, Any]) -> Dict[str, Any]:
        return _answer_json(_wire.UntypedAPIFuture(request_id=self._new_future(outcome).id, model_id=model_id))

    def _replayed(self, answer: Dict[str, Any], outcome: Dict[str, Any]) -> Dict[str, Any]:
        # The original answer, unless its future has expired: then the same outcome under a new id.
        if self._live_future(answer["request_id"]) is not None:
            return answer
        return self._answer(answer["model_id"], outcome)

    # ------------------------------------------------------------------ idempotency keys

    def idempotent(self, key: Optional[str], body_key: str, fn: Callable[[], Tuple[int, Any]]) -> Tuple[int, Any]:
        """Run ``fn`` once per ``X-Idempotency-Key``; a repeat with the same body gets the first answer."""
        if not key:
            return fn()
        with self._cond:
            seen = self._idem.get(key)
        if seen is not None:
            if seen[0] != body_key:
                raise HTTPError(400, "X-Idempotency-Key %s was already used with a different body" % key[:80])
            return seen[1], seen[2]
        status, obj = fn()
        if status < 300:
            with self._cond:
                self._idem[key] = (body_key, status, obj)
                while len(self._idem) > 10000:
                    self._idem.popitem(last=False)
        return status, obj

    # ------------------------------------------------------------------ sessions

    def create_session(self, req: _wire.CreateSessionRequest) -> Dict[str, Any]:
        with self._cond:
            sid = str(uuid.uuid4())
            self._sessions[sid] = {"finished": False, "submits": {}, "tags": list(req.tags)}
        return _answer_json(_wire.CreateSessionResponse(session_id=sid, type="create_session"))

    def _session(self, sid: str, *, live: bool = True) -> Dict[str, Any]:
        session = self._sessions.get(sid)
        if session is None:
            raise HTTPError(404, "session %s not found (sessions do not survive a server restart)" % sid)
        if live and session["finished"]:
            raise HTTPError(410, "session %s is finished" % sid)
        return session

    def heartbeat(self, req: _wire.SessionHeartbeatRequest) -> Dict[str, Any]:
        with self._cond:
            self._session(req.session_id)
        return _answer_json(_wire.SessionHeartbeatResponse(type="session_heartbeat"))

    def finish_session(self, sid: str, req: _wire.FinishSessionRequest) -> Dict[str, Any]:
        with self._cond:
            self._session(sid, live=False)["finished"] = True
        return {}

    # ------------------------------------------------------------------ models

    def _model(self, model_id: str) -> _Model:
        model = self._models.get(model_id)
        if model is None:
            raise HTTPError(404, "model %s not found (models do not survive a server restart)" % model_id)
        return model

    def _session_submit(
        self, sid: str, model_seq_id: int, key: str, create: Callable[[str], Dict[str, Any]]
    ) -> Dict[str, Any]:
        # create_model and session-addressed load_weights share the session's model_seq_id space.
        session = self._session(sid)
        seen = session["submits"].get(model_seq_id)
        if seen is not None:
            if seen[0] != key:
                raise HTTPError(400, "model_seq_id %d of session %s was already used" % (model_seq_id, sid))
            return self._replayed(seen[1], seen[2])
        model_id = "%s:train:%d" % (sid, model_seq_id)
        try:
            outcome = create(model_id)
        except UserError as exc:
            outcome = _failed(exc)
        answer = self._answer(model_id, outcome)
        session["submits"][model_seq_id] = (key, answer, outcome)
        return answer

    def create_model(self, req: _wire.CreateModelRequest, key: str) -> Dict[str, Any]:
        lora = req.lora_config
        if lora is None:
            raise HTTPError(400, "lora_config is required: the local server trains LoRA models only")
        if not 1 <= lora.rank <= MAX_RANK:
            raise HTTPError(400, "lora_config.rank=%d is out of range 1-%d" % (lora.rank, MAX_RANK))
        if req.optimizer_config.type != "adamw":
            raise HTTPError(400, "optimizer_config.type=%r is not supported; use 'adamw'" % req.optimizer_config.type)

        def create(model_id: str) -> Dict[str, Any]:
            flags = {"train_unembed": lora.train_unembed, "train_mlp": lora.train_mlp, "train_attn": lora.train_attn}
            state = ModelState(req.base_model, lora.rank, lora.seed)
            model = self._models[model_id] = _Model(model_id, req.session_id, state, flags)
            model.user_metadata, model.last_request = req.user_metadata, self.clock()
            return _answer_json(_wire.CreateModelResponse(model_id=model_id, type="create_model"))

        with self._cond:
            return self._session_submit(req.session_id, req.model_seq_id, key, create)

    def get_info(self, req: _wire.GetInfoRequest) -> Dict[str, Any]:
        with self._cond:
            model = self._model(req.model_id)
        base = model.state.base_model
        data = _wire.ModelData(arch=base.split("/")[-1].split("-")[0].lower(), model_name=base, tokenizer_id=base)
        info = _wire.GetInfoResponse(
            model_id=model.id,
            type="get_info",
            model_data=data,
            optimizer_config=_wire.OptimizerConfig(),
            is_lora=True,
            lora_rank=model.state.rank,
            model_name=base,
        )
        return _answer_json(info)

    def model_info(self, model_id: str) -> Dict[str, Any]:
        """Return the inspection view of a model: step, digests and the next expected seq_id."""
        with self._cond:
            model = self._model(model_id)
            weights, optimizer = model.state.digests()
            return {
                "model_id": model.id,
                "session_id": model.session_id,
                "base_model": model.state.base_model,
                "lora_rank": model.state.rank,
                "num_values": len(model.state.weights),
                "step": model.state.step,
                "next_seq_id": model.next_seq,
                "weights_sha256": weights,
                "optimizer_sha256": optimizer,
            }

    def model_ids(self) -> List[str]:
        """Return the ids of the models of this run of the server, sorted."""
        with self._cond:
            return sorted(self._models)

    def accepted_seq_ids(self, model_id: str) -> List[int]:
        """Return the seq_ids whose answers a model keeps for replay (the latest ``REPLAY_WINDOW``), sorted."""
        with self._cond:
            return sorted(self._model(model_id).replays)

    # ------------------------------------------------------------------ ordered submissions

    def _submit(
        self, model_id: str, seq_id: Optional[int], key: str, op: Callable[[_Model], Dict[str, Any]]
    ) -> Dict[str, Any]:
        with self._cond:
            model = self._model(model_id)
            model.last_request = self.clock()
            self.seq_log[model_id].append(seq_id)
            if seq_id is not None:
                deadline = time.monotonic() + self.options.seq_wait
                while seq_id > model.next_seq and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if seq_id < model.next_seq:
                    seen = model.replays.get(seq_id)
                    if seen is None or seen[0] != key:
                        raise HTTPError(
                            400,
                            "seq_id %d of model %s was already used by a different request (next expected: %d)"
                            % (seq_id, model_id, model.next_seq),
                        )
                    return self._replayed(seen[1], seen[2])
                if seq_id > model.next_seq:
                    raise HTTPError(
                        400,
                        "seq_id %d of model %s is ahead of the expected %d; the gap was not filled in %.1fs"
                        % (seq_id, model_id, model.next_seq, self.options.seq_wait),
                    )
            try:
                outcome = op(model)
            except UserError as exc:
                outcome = _failed(exc)
            answer = self._answer(model_id, outcome)
            if seq_id is not None:
                model.replays[seq_id] = (key, answer, outcome)
                # Retries arrive within seconds: keep a window of recent answers, not every one ever given.
                model.replays.pop(seq_id - REPLAY_WINDOW, None)
                model.next_seq += 1
                self._cond.notify_all()
            return answer

    def _checkpoint(self, path: str, *, training: bool = True) -> Dict[str, Any]:
        try:
            parsed = _paths.parse_path(path, training=training)
        except UsageError as exc:
            raise UserError(exc.message) from None
        entry = self.store.get(str(parsed))
        if entry is None:
            raise UserError("checkpoint %s not found (it may have expired or been deleted)" % path)
        return entry

    def save_weights(self, req: _wire.SaveWeightsRequest, key: str) -> Dict[str, Any]:
        def op(model: _Model) -> Dict[str, Any]:
            name = req.path if req.path is not None else "checkpoint-%s" % uuid.uuid4().hex[:12]
            info = {"base_model": model.state.base_model, "lora_rank": model.state.rank, "step": model.state.step}
            info.update(model.lora)
            try:
                entry = self.store.save(
                    model.id,
                    name,
                    model.state.weights_bytes(),
                    model.state.optimizer_bytes(),
                    info,
                    req.ttl_seconds,
                    req.overwrite,
                    req.user_metadata,
                    self.options.save_hook,
                )
            except StoreError as exc:
                raise UserError(str(exc)) from None
            return _answer_json(_wire.SaveWeightsResponse(path=entry["tinker_path"], type="save_weights"))

        return self._submit(req.model_id, req.seq_id, key, op)

    def _restore(self, model: _Model, entry: Dict[str, Any], optimizer: bool) -> None:
        if (entry["base_model"], entry["lora_rank"]) != (model.state.base_model, model.state.rank):
            raise UserError(
                "checkpoint %s (%s, rank %d) does not fit model %s (%s, rank %d)"
                % (
                    entry["tinker_path"],
                    entry["base_model"],
                    entry["lora_rank"],
                    model.id,
                    model.state.base_model,
                    model.state.rank,
                )
            )
        try:
            weights, opt = self.store.read(entry)
        except StoreError as exc:
            with self._cond:
                self._corrupted.add(entry["run_id"])  # the run's saved state is damaged: the run says so
            raise UserError(str(exc)) from None
        model.state.restore(weights, opt if optimizer else None)

    def load_weights(self, req: _wire.LoadWeightsRequest, key: str) -> Dict[str, Any]:
        if not self.options.session_load and (req.session_id is not None or req.model_seq_id is not None):
            # What a server predating session addressing answers: its strict decoder knows no such keys.
            raise HTTPError(400, "invalid LoadWeightsRequest: extra fields found (session_id, model_seq_id) @ $")
        by_session = req.session_id is not None and req.model_seq_id is not None
        by_model = req.model_id is not None and req.session_id is None and req.model_seq_id is None
        if not by_model and not (by_session and req.model_id is None and req.seq_id is None):
            raise HTTPError(
                400, "load_weights takes either model_id and seq_id, or session_id and model_seq_id (not both)"
            )
        if by_model:

            def op(model: _Model) -> Dict[str, Any]:
                if model.next_seq != 1 and not self.options.allow_late_load:
                    raise UserError(
                        "load_weights on model %s is accepted only as its first request after create_model "
                        "(seq_id 1); create a new training client with "
                        "ServiceClient.create_training_client_from_state() instead" % model.id
                    )
                if req.optimizer_config is not None:
                    raise UserError("optimizer_config cannot be changed on an existing model")
                self._restore(model, self._checkpoint(req.path), req.optimizer)
                return _answer_json(_wire.LoadWeightsResponse(path=req.path, model_id=model.id, type="load_weights"))

            return self._submit(req.model_id, req.seq_id, key, op)  # type: ignore[arg-type]  # by_model: set

        def create(model_id: str) -> Dict[str, Any]:
            entry = self._checkpoint(req.path)
            base = entry["base_model"] if req.base_model is None else req.base_model
            if base != entry["base_model"]:
                raise UserError("base_model %r does not match the checkpoint's %r" % (base, entry["base_model"]))
            if req.optimizer and req.optimizer_config is not None:
                raise UserError("optimizer_config cannot override restored optimizer state")
            if req.optimizer_config is not None and req.optimizer_config.type != "adamw":
                raise UserError("optimizer_config.type=%r is not supported" % req.optimizer_config.type)
            flags = {k: entry[k] for k in ("train_unembed", "train_mlp", "train_attn")}
            model = _Model(model_id, req.session_id, ModelState(base, entry["lora_rank"]), flags)  # type: ignore[arg-type]
            self._restore(model, entry, req.optimizer)
            model.user_metadata, model.last_request = req.user_metadata, self.clock()
            self._models[model_id] = model
            return _answer_json(_wire.LoadWeightsResponse(path=req.path, model_id=model_id, type="load_weights"))

        with self._cond:
            return self._session_submit(req.session_id, req.model_seq_id, key, create)  # type: ignore[arg-type]

    def optim_step(self, req: _wire.OptimStepRequest, key: str) -> Dict[str, Any]:
        p = req.adam_params
        if p is None:
            family = (req.optimizer_params or {}).get("type", "?")
            raise HTTPError(400, "optim_step needs adam_params: the local server trains with adamw, not %r" % family)
        if req.optimizer_params is not None:
            raise HTTPError(400, "optim_step takes adam_params or optimizer_params, not both")

        def op(model: _Model) -> Dict[str, Any]:
            if p.learning_rate < 0 or not (0 <= p.beta1 < 1 and 0 <= p.beta2 < 1) or p.eps < 0:
                raise UserError("adam_params out of range: %r" % (p,))
            metrics = model.state.adamw_step(p.learning_rate, p.beta1, p.beta2, p.eps, p.weight_decay, p.grad_clip_norm)
            return _answer_json(_wire.OptimStepResponse(metrics=metrics))

        return self._submit(req.model_id, req.seq_id, key, op)

    def forward_backward(
        self, req: _proto.ForwardBackwardRequestMessage, key: str, forward_only: bool = False
    ) -> Dict[str, Any]:
        """Run the tiny model on a decoded ``forward_backward`` (or ``forward``) request, in seq_id order.

        The batch is checked before it takes a seq_id: an unknown loss, a token id outside the base model's
        vocabulary or lengths that disagree get a 400 naming the datum. The result is stored as protobuf
        bytes, which ``retrieve_future`` serves as ``application/x-protobuf``.
        """
        with self._cond:
            base_model = self._model(req.model_id).state.base_model
        pairs = []
        for i, datum in enumerate(req.data):
            try:
                tokens = datum.model_input.to_ints()
            except UsageError:
                raise HTTPError(400, "datum %d: the local server takes token chunks only, not images" % i) from None
            pairs.append((tokens, {name: td.data for name, td in datum.loss_fn_inputs.items()}))
        try:
            batch = _lm.check(base_model, pairs, req.loss_fn, req.loss_fn_config)
        except _lm.LMError as exc:
            raise HTTPError(400, str(exc)) from None
        only = forward_only or req.forward_only

        def op(model: _Model) -> Any:
            try:
                result = _lm.run(model.state, batch, only)
            except _lm.LMError as exc:
                raise UserError(str(exc)) from None
            outputs = [
                {name: TensorData(data=values, dtype="float32", shape=[len(values)]) for name, values in datum.items()}
                for datum in result.loss_fn_outputs
            ]
            output = ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics=result.metrics)
            return _proto.encode_forward_backward_output(output)

        return self._submit(req.model_id, req.seq_id, key, op)

    def forward(self, req: _proto.ForwardBackwardRequestMessage, key: str) -> Dict[str, Any]:
        """``POST /api/v1/forward``: :meth:`forward_backward` without a gradient, whatever ``forward_only`` says."""
        return self.forward_backward(req, key, forward_only=True)

    def save_weights_for_sampler(self, req: _wire.SaveWeightsForSamplerRequest, key: str) -> Dict[str, Any]:
        if req.path is None:
            raise HTTPError(400, "save_weights_for_sampler needs a path (name): the local server keeps no sampling sessions")

        def op(model: _Model) -> Dict[str, Any]:
            info = {"base_model": model.state.base_model, "lora_rank": model.state.rank, "step": model.state.step}
            info.update(model.lora)
            try:
                entry = self.store.save(
                    model.id, req.path, model.state.weights_bytes(), b"", info, req.ttl_seconds, False,  # type: ignore[arg-type]
                    req.user_metadata, self.options.save_hook, kind="sampler_weights",
                )
            except StoreError as exc:
                raise UserError(str(exc)) from None
            return _answer_json(
                _wire.SaveWeightsForSamplerResponse(path=entry["tinker_path"], type="save_weights_for_sampler")
            )

        return self._submit(req.model_id, req.seq_id, key, op)

    # ------------------------------------------------------------------ REST

    def weights_info(self, req: _wire.WeightsInfoRequest) -> Dict[str, Any]:
        try:
            entry = self._checkpoint(req.tinker_path, training=False)  # any kind: the SDK asks for sampler paths too
        except UserError as exc:
            raise HTTPError(404, str(exc)) from None
        info = _wire.WeightsInfoResponse(
            base_model=entry["base_model"],
            optimizer_config=_wire.OptimizerConfig(),
            is_lora=True,
            lora_rank=entry["lora_rank"],
            train_unembed=entry["train_unembed"],
            train_mlp=entry["train_mlp"],
            train_attn=entry["train_attn"],
        )
        return _answer_json(info)

    def list_run(self, run_id: str) -> Dict[str, Any]:
        entries = self.store.list(run_id)
        with self._cond:
            known = run_id in self._models
        if not entries and not known and run_id not in self.store.run_ids():
            raise HTTPError(404, "training run %s not found" % run_id)
        return _answer_json(_wire.CheckpointsListResponse(checkpoints=[checkpoint_wire(e) for e in entries]))

    def list_user(self, limit: int, offset: int) -> Dict[str, Any]:
        entries = self.store.list()
        page = entries[offset : offset + limit]
        cursor = _wire.Cursor(offset=offset, limit=limit, total_count=len(entries))
        return _answer_json(_wire.CheckpointsListResponse(checkpoints=[checkpoint_wire(e) for e in page], cursor=cursor))

    # ------------------------------------------------------------------ training runs

    def _run(self, run_id: str, entries: List[Dict[str, Any]]) -> Optional[Tuple[float, _wire.TrainingRun]]:
        """The last request time and ``TrainingRun`` of ``run_id``, from its live model and/or its checkpoints
        (newest first); None if the server knows neither."""
        model = self._models.get(run_id)
        if model is None and not entries:
            return None
        newest: Dict[str, Dict[str, Any]] = {}
        for e in entries:
            newest.setdefault(e.get("kind", "weights"), e)
        if model is not None:
            base, rank, metadata, last = model.state.base_model, model.state.rank, model.user_metadata, model.last_request
        else:
            first = entries[0]
            base, rank, metadata, last = first["base_model"], first["lora_rank"], first.get("run_metadata"), first["time"]
        last = max([last] + [e["time"] for e in entries])
        training, sampler = newest.get("weights"), newest.get("sampler_weights")
        return last, _wire.TrainingRun(
            training_run_id=run_id,
            base_model=base,
            model_owner="local-user",
            is_lora=True,
            corrupted=run_id in self._corrupted,
            lora_rank=rank,
            last_request_time=iso(last),
            last_checkpoint=None if training is None else checkpoint_wire(training),
            last_sampler_checkpoint=None if sampler is None else checkpoint_wire(sampler),
            user_metadata=metadata,
        )

    def training_run(self, run_id: str) -> Dict[str, Any]:
        """Answer ``GET /api/v1/training_runs/{run}`` (404 for a run the server does not know)."""
        entries = self.store.list(run_id)
        with self._cond:
            run = self._run(run_id, entries)
        if run is None:
            raise HTTPError(404, "training run %s not found" % run_id)
        return _answer_json(run[1])

    def list_runs(self, limit: int, offset: int) -> Dict[str, Any]:
        """Answer ``GET /api/v1/training_runs``: every known run, most recently used first, one page of it."""
        by_run: Dict[str, List[Dict[str, Any]]] = collections.defaultdict(list)
        for e in self.store.list():
            by_run[e["run_id"]].append(e)
        with self._cond:
            ids = set(by_run) | set(self._models)
            runs = [r for r in (self._run(i, by_run.get(i, [])) for i in ids) if r is not None]
        runs.sort(key=lambda r: (r[0], r[1].training_run_id), reverse=True)
        cursor = _wire.Cursor(offset=offset, limit=limit, total_count=len(runs))
        return _answer_json(_wire.TrainingRunsResponse(training_runs=[r for _, r in runs[offset : offset + limit]], cursor=cursor))

    @staticmethod
    def tinker_path(run_id: str, kind: str, name: str) -> str:
        if kind not in _paths.KINDS:
            raise HTTPError(404, "checkpoint %s/%s not found: unknown kind %r" % (kind, name, kind))
        return str(_paths.TinkerPath(run_id, kind, name))

    def delete(self, path: str) -> None:
        if not self.store.delete(path):
            raise HTTPError(404, "checkpoint %s not found" % path)

    def set_ttl(self, path: str, req: _wire.SetTtlRequest) -> None:
        try:
            ttl = _paths.check_ttl(req.ttl_seconds)
        except UsageError as exc:
            raise HTTPError(400, exc.message) from None
        if not self.store.update(path, expires_at=None if ttl is None else self.clock() + ttl):
            raise HTTPError(404, "checkpoint %s not found" % path)

    def set_public(self, path: str, public: bool) -> None:
        """Publish or unpublish; 409 when the checkpoint already is in that state, as the service answers."""
        entry = self.store.get(path)
        if entry is None:
            raise HTTPError(404, "checkpoint %s not found" % path)
        if entry["public"] == public:
            raise HTTPError(409, "checkpoint %s is already %s" % (path, "public" if public else "private"))
        if not self.store.update(path, public=public):  # pragma: no cover - deleted in between
            raise HTTPError(404, "checkpoint %s not found" % path)

    def storage_usage(self, project_id: Optional[str]) -> Dict[str, Any]:
        """Answer ``GET /api/v1/billing/usage/checkpoints/current``: every live checkpoint, in one group."""
        entries = self.store.list()
        size = sum(e["size_bytes"] or 0 for e in entries)
        item = _wire.CheckpointStorageUsageItem(
            project_id=project_id,
            user_name="local-user",
            checkpoint_count=len(entries),
            size_bytes=size,
            size_gigabytes=size / 1e9,
        )
        return _answer_json(_wire.CheckpointStorageUsageResponse(data=[item]))

    def copy_weights(self, req: _wire.CopyWeightsRequest, key: str) -> Dict[str, Any]:
        """Copy a checkpoint into a new training run (of the given session slot, or a new one); answer its path."""
        by_session = req.session_id is not None and req.model_seq_id is not None
        if not by_session and (req.session_id is not None or req.model_seq_id is not None):
            raise HTTPError(400, "copy_weights takes session_id and model_seq_id together")
        if not by_session and not req.destination_project_id:
            raise HTTPError(400, "copy_weights needs destination_project_id, or session_id and model_seq_id")
        try:
            tp = _paths.parse_path(req.source_path, training=False)
            _paths.check_ttl(req.ttl_seconds)
        except UsageError as exc:
            raise HTTPError(400, exc.message) from None
        entry = self.store.get(str(tp))
        if entry is None:
            raise HTTPError(404, "checkpoint %s not found" % (tp,))
        if by_session:
            with self._cond:
                self._session(req.session_id)  # type: ignore[arg-type]
            run_id = "%s:train:%s" % (req.session_id, req.model_seq_id)
        else:
            run_id = "%s:train:0" % uuid.uuid4()
        try:
            copied = self.store.copy(entry, run_id, req.ttl_seconds)
        except StoreError as exc:
            raise HTTPError(409, str(exc)) from None
        return _answer_json(_wire.CopyWeightsResponse(tinker_path=copied["tinker_path"]))

    def save_weights_external(self, req: _wire.SaveWeightsExternalRequest, key: str) -> Dict[str, Any]:
        """Export the model's weights as adapter files into ``tinker://<model>/external_weights/<path>``."""

        def op(model: _Model) -> Dict[str, Any]:
            if req.age_encryption_recipients:
                raise UserError("age encryption of exports is not supported by the local server")
            flags = dict(model.lora)
            info = dict(flags, base_model=model.state.base_model, lora_rank=model.state.rank, step=model.state.step)
            files = adapter_files(
                model.state.weights_bytes(), model.state.base_model, model.state.rank, flags, self.options.export_size
            )
            try:
                entry = self.store.save_files(model.id, "external_weights", req.path, files, info, req.ttl_seconds)
            except StoreError as exc:
                raise UserError(str(exc)) from None
            answer = _wire.SaveWeightsExternalResponse(
                path=entry["tinker_path"], size_bytes=entry["size_bytes"], type="save_weights_external"
            )
            return _answer_json(answer)

        return self._submit(req.model_id, req.seq_id, key, op)

    # ------------------------------------------------------------------ signed file URLs (external weights)

    def _file_token(self, path: str, directory: str, fname: str, expires: int) -> str:
        message = canonical([path, directory, fname, expires]).encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def external_urls(self, path: str, base_url: str) -> Dict[str, Any]:
        """Answer ``external_weights_urls``: one signed URL per file, valid for ``external_url_ttl`` seconds."""
        entry = self.store.get(path)
        if entry is None:
            raise HTTPError(404, "checkpoint %s not found" % path)
        if entry.get("kind", "weights") != "external_weights":
            raise HTTPError(400, "checkpoint %s is not an external_weights checkpoint" % path)
        expires = int(self.clock() + self.options.external_url_ttl)
        tp = _paths.parse_path(path, training=False)
        urls = {}
        for fname in sorted(entry["files"]):
            token = self._file_token(path, entry["dir"], fname, expires)
            urls[fname] = "%s/signed/%s/%s/%s/%s?expires=%d&token=%s" % (
                base_url, quote(tp.run_id, safe=""), tp.kind, quote(tp.name, safe=""), quote(fname, safe=""),
                expires, token,
            )
        return _answer_json(_wire.ExternalWeightsUrlsResponse(urls=urls, expires=iso(expires)))

    def signed_file(self, path: str, fname: str, expires: str, token: str) -> Tuple[Dict[str, Any], str]:
        """Check a signed file URL; return the checkpoint entry and the file's on-disk path, or raise 403/404."""
        entry = self.store.get(path)
        try:
            when = int(expires)
        except ValueError:
            raise HTTPError(403, "invalid download signature") from None
        directory = entry["dir"] if entry is not None else ""
        good = self._file_token(path, directory, fname, when)
        if entry is None or not hmac.compare_digest(token.encode("utf-8"), good.encode("utf-8")):
            # A deleted checkpoint (or a replaced one) no longer matches any signature it handed out.
            raise HTTPError(403, "invalid or stale download signature")
        if self.clock() > when:
            raise HTTPError(403, "download URL expired")
        local = self.store.file_path(entry, fname)
        if local is None:  # pragma: no cover - a signature names a listed file
            raise HTTPError(404, "no file %s in %s" % (fname, path))
        return entry, local

    # ------------------------------------------------------------------ signed archive URLs

    def sign(self, path: str) -> Tuple[str, float]:
        """Return a signed download token for a checkpoint's archive, and its expiry (epoch seconds)."""
        entry = self.store.get(path)
        if entry is None:
            raise HTTPError(404, "checkpoint %s not found" % path)
        expires = float(int(self.clock() + self.options.archive_url_ttl))
        payload = base64.urlsafe_b64encode(canonical({"p": path, "d": entry["dir"], "e": expires}).encode()).decode()
        sig = hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()
        return "%s.%s" % (payload.rstrip("="), sig), expires

    def verify(self, token: str) -> Dict[str, Any]:
        """Return the checkpoint entry a download token grants, or raise 403/404."""
        payload, _, sig = token.partition(".")
        good = hmac.new(self._secret, (payload + "=" * (-len(payload) % 4)).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig.encode("utf-8"), good.encode()):
            raise HTTPError(403, "invalid download signature")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        if self.clock() > claims["e"]:
            raise HTTPError(403, "download URL expired")
        entry = self.store.get(claims["p"])
        if entry is None or entry["dir"] != claims["d"]:
            raise HTTPError(404, "checkpoint %s no longer exists in this version" % claims["p"])
        return entry
