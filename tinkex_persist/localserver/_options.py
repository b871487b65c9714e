"""``ServerOptions``: the typed, validated behaviour settings of a :class:`LocalServer`."""

import os
import time
from typing import Any, Callable, Dict, Optional, Union

import attrs

#: Largest accepted request body, in bytes.
DEFAULT_MAX_BODY = 16 * 1024 * 1024
#: How long ``retrieve_future`` holds a pending poll (the official SDK gives up on a poll after 45 s).
DEFAULT_LONG_POLL_TIMEOUT = 30.0
#: How long a request with a seq_id ahead of the expected one waits for the gap to fill.
DEFAULT_SEQ_WAIT = 3.0
#: Idle time after which a connection that sends nothing is closed.
DEFAULT_SOCKET_TIMEOUT = 30.0
#: How long a future's outcome is kept, in seconds; later polls get 410.
DEFAULT_FUTURE_TTL = 3600.0
#: Lifetime of a signed archive download URL, in seconds.
DEFAULT_ARCHIVE_URL_TTL = 3600.0


def _number(min_value: float, inclusive: bool) -> Callable[[Any, "attrs.Attribute[Any]", Any], None]:
    def check(inst: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("%s must be a number, got %r" % (attribute.name, value))
        if value < min_value or (value == min_value and not inclusive):
            raise ValueError(
                "%s must be %s %s, got %r" % (attribute.name, ">=" if inclusive else ">", min_value, value)
            )

    return check


_non_negative = _number(0, inclusive=True)
_positive = _number(0, inclusive=False)
_bool = attrs.validators.instance_of(bool)


def _pending_status(inst: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if isinstance(value, bool) or value not in (200, 408):
        raise ValueError("pending_status must be 200 or 408, got %r" % (value,))


def _callable_or_none(inst: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError("%s must be callable or None, got %r" % (attribute.name, value))


def _optional_path(value: Union[None, str, "os.PathLike[str]"]) -> Optional[str]:
    return None if value is None else os.fspath(value)


def _client_config(value: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return {"use_pyqwest_transport": False} if value is None else dict(value)


@attrs.frozen(kw_only=True)
class ServerOptions:
    """How a :class:`LocalServer` behaves: timings, limits, compatibility switches and test hooks.

    Every field has a default, so ``ServerOptions()`` is a server that behaves like the hosted service.
    Values are checked when the object is built (a bad value raises ``ValueError`` or ``TypeError``);
    use ``attrs.evolve(options, field=value)`` to derive a variant. Each field may also be passed to
    ``LocalServer`` as a keyword argument, a shorthand for ``options=ServerOptions(field=value)``.
    """

    #: Seconds before each future completes; 0 completes at once.
    complete_delay: float = attrs.field(default=0.0, validator=_non_negative)
    #: Hold pending polls until completion (or ``long_poll_timeout``); when False, answer ``try_again`` at once.
    long_poll: bool = attrs.field(default=True, validator=_bool)
    #: Longest hold of a pending poll, in seconds.
    long_poll_timeout: float = attrs.field(default=DEFAULT_LONG_POLL_TIMEOUT, validator=_positive)
    #: HTTP status of a ``try_again`` answer: 200 (as the hosted service) or 408.
    pending_status: int = attrs.field(default=200, validator=_pending_status)
    #: Seconds a request whose seq_id is ahead of the expected one waits for the gap to fill.
    seq_wait: float = attrs.field(default=DEFAULT_SEQ_WAIT, validator=_non_negative)
    #: Accept model-addressed ``load_weights`` on a model after its first request.
    allow_late_load: bool = attrs.field(default=False, validator=_bool)
    #: Accept session-addressed ``load_weights`` (create-from-state); when False, answer 400 naming
    #: ``session_id`` and ``model_seq_id``, as a server predating it does.
    session_load: bool = attrs.field(default=True, validator=_bool)
    #: Seconds a future's outcome is kept; later polls get 410.
    future_ttl: float = attrs.field(default=DEFAULT_FUTURE_TTL, validator=_positive)
    #: Lifetime of a signed download URL, in seconds.
    archive_url_ttl: float = attrs.field(default=DEFAULT_ARCHIVE_URL_TTL, validator=_positive)
    #: Size in bytes of the adapter weights file each ``save_weights_external`` writes (padded up to it, for
    #: download benchmarks); None: just the weights.
    export_size: Optional[int] = attrs.field(default=None, validator=attrs.validators.optional(_non_negative))
    #: Serve ``GET .../archive`` (the pre-0.38 download); False plays a service that dropped it.
    archive_route: bool = attrs.field(default=True, validator=_bool)
    #: Serve ``save_weights_external`` and ``external_weights_urls``; False plays an older service that has only
    #: the archive route (both answer 404).
    external_weights: bool = attrs.field(default=True, validator=_bool)
    #: Lifetime of the signed URLs of ``external_weights_urls``, in seconds.
    external_url_ttl: float = attrs.field(default=DEFAULT_ARCHIVE_URL_TTL, validator=_positive)
    #: Largest accepted request body, in bytes; larger ones get 413.
    max_body: int = attrs.field(default=DEFAULT_MAX_BODY, validator=_positive)
    #: Idle seconds before a silent connection is closed.
    socket_timeout: float = attrs.field(default=DEFAULT_SOCKET_TIMEOUT, validator=_positive)
    #: PEM certificate; when set the server speaks HTTPS.
    certfile: Optional[str] = attrs.field(default=None, converter=_optional_path)
    #: PEM private key for ``certfile``; None: the key is in ``certfile``.
    keyfile: Optional[str] = attrs.field(default=None, converter=_optional_path)
    #: Wall clock (epoch seconds) for TTLs and expiries; tests may pass a fake one.
    clock: Callable[[], float] = attrs.field(default=time.time, validator=attrs.validators.is_callable())
    #: Answer of ``client/config`` (copied); None: one that turns the official SDK's pyqwest transport off.
    client_config: Dict[str, Any] = attrs.field(default=None, converter=_client_config)
    #: Called as ``save_hook(stage, tinker_path)`` at ``files_written``, ``dir_renamed`` and ``index_written``
    #: during each save (used by crash tests); None: no hook.
    save_hook: Optional[Callable[[str, str], None]] = attrs.field(default=None, validator=_callable_or_none)

    def __attrs_post_init__(self) -> None:
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile")
