"""The ``tinkex-persist`` command line: argparse ``main(argv) -> int``, one function per subcommand.

Exit codes: 0 success, 1 API, transport or local failure, 2 usage error, 3 partial failure (some deletes
failed), 130 interrupted (Ctrl-C). ``--json`` prints machine-readable results on stdout, exactly one JSON
object per run, failures included (``{"error": {"type": ..., "message": ...}}``); progress and
diagnostics go to stderr.
The API key comes from ``TINKER_API_KEY`` or ``--api-key-file``, never from the command line.
"""

import argparse
import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, TextIO

from . import checkpoints, download
from .checkpoints import CHECKPOINT_TYPES
from ._version import __version__
from ._time import parse_date, parse_duration, parse_seconds
from .client import ServiceClient
from .config import ENV_API_KEY, ENV_BASE_URL, Config, check_api_key, read_env
from ._paths import parse_path
from .exceptions import APIStatusError, CheckpointDeleteError, ConfigError, TinkexPersistError, UsageError
from .types import CheckpointInfo, DeleteReport, DownloadProgress, PruneReport

logger = logging.getLogger(__name__)

#: The package's logger name (``tinkex_persist``, or the vendored package's name).
PACKAGE_LOGGER = __name__.rpartition(".")[0]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

PROG = "tinkex-persist"


class _Exit(Exception):
    """Stop with an exit code and a message (printed on stderr, and as the JSON error with ``--json``)."""

    def __init__(self, code: int, message: str, kind: str) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.kind = kind


class _ArgumentError(Exception):
    """argparse refused the command line (raised instead of exiting, so ``--json`` can report it)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        raise _ArgumentError(self, message)


class _Cancelled(Exception):
    """Raised from the progress callback to stop a download after Ctrl-C."""


# --------------------------------------------------------------------------- formatting


def _size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return "%d B" % n if unit == "B" else "%.1f %s" % (value, unit)
        value /= 1024
    return "%d B" % n  # pragma: no cover


def _when(value: Optional[datetime.datetime]) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return "\n".join(lines)


def _yes_no(value: Optional[bool]) -> str:
    return "-" if value is None else ("yes" if value else "no")


class _Output:
    """Where results, diagnostics and progress go."""

    def __init__(self, args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
        self.json = bool(getattr(args, "json", False))
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.progress = bool(getattr(args, "progress", False)) or _isatty(stderr)

    def result(self, human: str, data: Any) -> None:
        if self.json:
            self.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
        elif human:
            self.stdout.write(human + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def error(self, exc: BaseException) -> None:
        extra: Dict[str, Any] = {}
        if isinstance(exc, APIStatusError):
            extra = {"status_code": exc.status_code, "request_id": exc.request_id}
        self.failure(type(exc).__name__, str(exc), **extra)

    def failure(self, kind: str, message: str, **extra: Any) -> None:
        """Say what went wrong on stderr and, with ``--json``, as the run's one JSON object on stdout."""
        self.note("error: %s" % message if kind != "KeyboardInterrupt" else message)
        if self.json:
            _print_json_error(self.stdout, kind, message, **extra)


def _print_json_error(stream: TextIO, kind: str, message: str, **extra: Any) -> None:
    err: Dict[str, Any] = dict({"type": kind, "message": message}, **extra)
    stream.write(json.dumps({"error": err}, indent=2) + "\n")
    stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------- argument parsing


def _date(text: str) -> datetime.datetime:
    try:
        return parse_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("%r is not a positive integer" % text)
    return value


def _seconds(text: str) -> int:
    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("%r is not a whole number >= 0" % text)
    return value


def _duration(text: str) -> datetime.timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _local_options() -> "_Parser":
    # What `serve` uses of the common options: it talks to no server, so no URL, key file or progress.
    p = _Parser(add_help=False)
    g = p.add_argument_group("output options")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON on stdout")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log requests at DEBUG on stderr (secrets redacted)")
    return p


def _common() -> "_Parser":
    # Accepted both before and after the subcommand. SUPPRESS keeps a subcommand's parser from resetting
    # what was given before it.
    p = _Parser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--base-url", default=argparse.SUPPRESS, metavar="URL",
                   help="API root (default: $%s, else the hosted service)" % ENV_BASE_URL)
    g.add_argument("--api-key-file", default=argparse.SUPPRESS, metavar="FILE",
                   help="read the API key from FILE (default: $%s); never pass a key on the command line" % ENV_API_KEY)
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON on stdout")
    g.add_argument("--progress", action="store_true", default=argparse.SUPPRESS,
                   help="report progress on stderr even when it is not a terminal")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log requests at DEBUG on stderr (secrets redacted)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``tinkex-persist``."""
    common = _common()
    parser = _Parser(
        prog=PROG,
        description="Manage Tinker checkpoints: inspect, list, delete, retain, expire and download them.",
        parents=[common],
        epilog="Exit codes: 0 success, 1 API/transport failure, 2 usage error, 3 some deletes failed, "
        "130 interrupted (Ctrl-C). With --json, stdout gets exactly one JSON object, failures included.",
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help: str, parents: Optional[List["_Parser"]] = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common] if parents is None else parents)

    p = add("serve", "run a local Tinker-compatible checkpoint server in the foreground (Ctrl-C stops it)",
            parents=[_local_options()])
    p.add_argument("--root", required=True, metavar="DIR", help="directory holding the checkpoints")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    p.add_argument("--api-key-env", metavar="VAR", help="require the API key held in environment variable VAR")
    p.add_argument("--export-size", type=_positive_int, metavar="BYTES",
                   help="make each save_weights_external write an adapter weights file of about BYTES (benchmarks)")
    p.set_defaults(func=cmd_serve)

    p = add("demo", "run the save/resume demo against a throw-away local server")
    p.set_defaults(func=cmd_demo)

    p = add("info", "describe a checkpoint: type, size, created, expires, public, metadata, base model, LoRA rank")
    p.add_argument("path", metavar="PATH", help="tinker://<run_id>/<weights|sampler_weights|external_weights>/<name>")
    p.set_defaults(func=cmd_info)

    p = add("list", "list the checkpoints of a run, or all of yours")
    p.add_argument("--run", metavar="RUN", help="training run id (default: every run)")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="show at most N checkpoints")
    p.add_argument("--type", choices=CHECKPOINT_TYPES, help="only checkpoints of this type")
    p.set_defaults(func=cmd_list)

    p = add("delete", "delete checkpoints by path, or a run's checkpoints by creation time")
    p.add_argument("paths", nargs="*", metavar="PATH", help="tinker:// paths to delete")
    p.add_argument("--run", metavar="RUN", help="select the checkpoints of this run instead of naming paths")
    p.add_argument("--before", type=_date, metavar="DATE", help="with --run: only those created before DATE (UTC)")
    p.add_argument("--after", type=_date, metavar="DATE", help="with --run: only those created after DATE (UTC)")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted; delete nothing")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_delete)

    p = add("keep-last", "delete all but the newest N training checkpoints of a run")
    p.add_argument("n", type=_positive_int, metavar="N", help="how many of the newest to keep (>= 1)")
    p.add_argument("--run", required=True, metavar="RUN", help="training run id")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted; delete nothing")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_keep_last)

    p = add("prune", "delete old checkpoints of a run or of every run; published ones are spared")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", metavar="RUN", help="prune this training run")
    g.add_argument("--all-runs", action="store_true", help="prune every run's checkpoints")
    p.add_argument("--keep-last", type=_count, metavar="N", help="keep the newest N of each run and type")
    p.add_argument("--older-than", type=_duration, metavar="DURATION",
                   help="delete only checkpoints older than DURATION (e.g. 36h, 7d, 2w; a bare number is seconds)")
    p.add_argument("--type", choices=CHECKPOINT_TYPES, help="prune only checkpoints of this type (default: all)")
    p.add_argument("--include-published", action="store_true", help="also delete published checkpoints")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted; delete nothing")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_prune)

    p = add("publish", "make a checkpoint public")
    p.add_argument("path", metavar="PATH", help="tinker:// path of the checkpoint")
    p.set_defaults(func=cmd_publish, public=True)

    p = add("unpublish", "make a public checkpoint private again")
    p.add_argument("path", metavar="PATH", help="tinker:// path of the checkpoint")
    p.set_defaults(func=cmd_publish, public=False)

    p = add("usage", "show your checkpoint storage: count, size and estimated cost")
    p.add_argument("--project", metavar="ID", help="only this project")
    p.set_defaults(func=cmd_usage)

    p = add("ttl", "set or remove a checkpoint's expiry")
    p.add_argument("path", metavar="PATH", help="tinker:// path of the checkpoint")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--set", type=_seconds, metavar="SECONDS", dest="ttl_seconds", help="expire SECONDS from now")
    g.add_argument("--remove", action="store_true", help="never expire")
    p.add_argument("--dry-run", action="store_true", help="show the change; change nothing")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_ttl)

    p = add("download", "download and verify a checkpoint's files (exported per SDK 0.38; resumes an interrupted download)")
    p.add_argument("path", metavar="PATH", help="tinker:// path of a training or external_weights checkpoint")
    p.add_argument("--dest", default=".", metavar="DIR",
                   help="place the files under DIR/<run_id>/<kind>/<name> (default: current directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an already downloaded copy")
    p.add_argument("--keep-archive", action="store_true",
                   help="archive route only: keep the verified .tar next to the directory")
    p.add_argument("--wait", type=float, default=download.DEFAULT_ARCHIVE_WAIT, metavar="SECONDS",
                   help="archive route only: longest wait for the archive to be built (default %(default)s)")
    p.add_argument("--max-resumes", type=int, default=download.DEFAULT_DOWNLOAD_RESUMES, metavar="N",
                   help="Range resumes per file in this run after a transfer breaks off (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="files fetched at once (default %(default)s)")
    p.set_defaults(func=cmd_download)

    p = add("runs", "list your training runs, or describe one")
    runs = p.add_subparsers(dest="runs_command", metavar="SUBCOMMAND")
    runs.required = True
    q = runs.add_parser("list", help="list your training runs, newest first", description="list your training runs",
                        parents=[common])
    q.add_argument("--limit", type=_positive_int, metavar="N", help="show at most N runs")
    q.set_defaults(func=cmd_runs_list)
    q = runs.add_parser("info", help="describe a training run: base model, last checkpoints, state",
                        description="describe a training run", parents=[common])
    q.add_argument("run", metavar="RUN", help="training run id, or any tinker:// path of the run")
    q.set_defaults(func=cmd_runs_info)

    p = add("resume-info", "show where a training loop's Checkpointer would resume from, without creating anything")
    p.add_argument("log_dir", metavar="LOG_DIR", help="the loop's log directory (holding checkpoints.jsonl)")
    p.add_argument("--run", metavar="RUN", help="a known training run to resume when the log has no record")
    p.set_defaults(func=cmd_resume_info)
    return parser


# --------------------------------------------------------------------------- client


def _read_key_file(path: str) -> str:
    try:
        with open(path, "r", encoding="utf-8") as f:
            key = f.read().strip()
    except OSError as exc:
        raise ConfigError("cannot read the API key file %s: %s" % (path, exc.strerror or exc)) from None
    if not key or "\n" in key:
        raise ConfigError("API key file %s must hold exactly one non-empty line" % path)
    return key


def _service(args: argparse.Namespace) -> ServiceClient:
    key_file = getattr(args, "api_key_file", None)
    api_key = _read_key_file(key_file) if key_file else None
    config = Config.from_env(base_url=getattr(args, "base_url", None), api_key=api_key)
    if not config.api_key:
        raise ConfigError(
            "no API key: set the %s environment variable or pass --api-key-file FILE "
            "(a file holding the key on one line)" % ENV_API_KEY
        )
    return ServiceClient(config=config)


# --------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace, out: _Output) -> int:
    """Run the local server until Ctrl-C or SIGTERM.

    Nothing is printed before the server holds its root and its port: a root in use or a port taken is one
    error line on stderr (and, with --json, one JSON object on stdout), exit 1.
    """
    from .localserver import LocalServer

    api_key = _server_key(args)
    root = os.path.abspath(args.root)
    # SIGTERM stops the server like Ctrl-C, also when it arrives right after the URL is printed and
    # before the server's own handler is in place.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        server = LocalServer(args.root, args.host, args.port, api_key, **_serve_options(args))
        server.bind()
        try:
            if out.json:
                # One line, so a supervisor can read the URL with a single readline().
                out.stdout.write(json.dumps({"url": server.url, "root": root, "api_key_required": bool(api_key)}) + "\n")
            else:
                out.note("serving checkpoints from %s (%s); Ctrl-C stops"
                         % (root, "API key required" if api_key else "no API key required"))
                out.stdout.write(server.url + "\n")
            out.stdout.flush()
            server.serve_forever()
        finally:
            server.stop()
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def _server_key(args: argparse.Namespace) -> Optional[str]:
    """The key ``serve`` requires (--api-key-env), surrounding whitespace stripped, or None."""
    if not args.api_key_env:
        return None
    key = check_api_key(read_env(args.api_key_env), "environment variable %s" % args.api_key_env)
    if not key:
        raise UsageError("environment variable %s (from --api-key-env) is not set or empty" % args.api_key_env)
    return key


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _serve_options(args: argparse.Namespace) -> Dict[str, Any]:
    return {} if args.export_size is None else {"export_size": args.export_size}


def cmd_demo(args: argparse.Namespace, out: _Output) -> int:
    """Run ``demo.main()``; with --json its narration goes to stderr and stdout gets ``{"ok": ...}``."""
    from . import demo

    if not out.json:
        return demo.main()
    with contextlib.redirect_stdout(out.stderr):  # the demo narrates; stdout keeps only the JSON verdict
        code = demo.main()
    out.result("", {"ok": code == EXIT_OK, "exit_code": code})
    return code


def cmd_info(args: argparse.Namespace, out: _Output) -> int:
    """Describe one checkpoint: what the official ``checkpoint info`` shows, plus the weights info."""
    tp = parse_path(args.path, training=False)
    with _service(args) as service:
        info = checkpoints.get_weights_info(service, args.path).result()  # a missing checkpoint is a 404 here
        listed = checkpoints.list_checkpoints(service, tp.run_id).result()
        found = [c for c in listed if c.tinker_path == str(tp)]
        if not found:  # pragma: no cover - deleted between the two requests
            raise _Exit(EXIT_FAILURE, "checkpoint %s not found in the listing of run %s" % (tp, tp.run_id),
                        "NotFoundError")
    ckpt = found[0]
    data = dict(ckpt.to_json(), **{
        "base_model": info.base_model,
        "is_lora": info.is_lora,
        "lora_rank": info.lora_rank,
        "train_unembed": info.train_unembed,
        "train_mlp": info.train_mlp,
        "train_attn": info.train_attn,
        "optimizer": info.optimizer,
    })
    rows = [
        ["path", ckpt.tinker_path],
        ["type", ckpt.checkpoint_type],
        ["size", _size(ckpt.size_bytes)],
        ["created", _when(ckpt.time)],
        ["expires", _when(ckpt.expires_at)],
        ["public", _yes_no(ckpt.public)],
        ["metadata", json.dumps(ckpt.user_metadata, sort_keys=True) if ckpt.user_metadata else "-"],
        ["base model", info.base_model],
        ["LoRA", _yes_no(info.is_lora)],
        ["LoRA rank", "-" if info.lora_rank is None else str(info.lora_rank)],
        ["trains MLP", _yes_no(info.train_mlp)],
        ["trains attention", _yes_no(info.train_attn)],
        ["trains unembedding", _yes_no(info.train_unembed)],
        ["optimizer", info.optimizer or "-"],
    ]
    width = max(len(r[0]) for r in rows)
    out.result("\n".join("%s  %s" % (k.ljust(width), v) for k, v in rows), data)
    return EXIT_OK


def _checkpoint_rows(listed: Sequence[CheckpointInfo]) -> str:
    rows = [[c.tinker_path, c.checkpoint_type, _when(c.time), _size(c.size_bytes), _when(c.expires_at),
             _yes_no(c.public)] for c in listed]
    return _table(rows, ["PATH", "TYPE", "CREATED", "SIZE", "EXPIRES", "PUBLIC"])


def cmd_list(args: argparse.Namespace, out: _Output) -> int:
    """List checkpoints."""
    with _service(args) as service:
        if args.run is None:
            listed = checkpoints.list_user_checkpoints(service, type=args.type, limit=args.limit).result()
        else:
            listed = checkpoints.list_checkpoints(service, args.run).result()
            listed = [c for c in listed if args.type is None or c.checkpoint_type == args.type][: args.limit]
    total = sum(c.size_bytes or 0 for c in listed)
    if listed:
        human = "%s\n\n%d checkpoint(s), %s" % (_checkpoint_rows(listed), len(listed), _size(total))
    else:
        human = "no %scheckpoints" % ("%s " % args.type if args.type else "") + (" in run %s" % args.run if args.run else "")
    out.result(human, {"checkpoints": [c.to_json() for c in listed]})
    return EXIT_OK


_VERBS = {"deleted": "deleted", "would_delete": "would delete", "not_found": "not found", "failed": "FAILED"}


def _report_lines(report: DeleteReport) -> List[str]:
    lines = []
    for o in report.outcomes:
        line = "%-12s  %s" % (_VERBS.get(o.status, o.status), o.path)
        if o.size_bytes is not None and o.ok:
            line += "  (%s)" % _size(o.size_bytes)
        if o.error is not None:
            line += ": %s" % o.error
        lines.append(line)
    ok = [o for o in report.outcomes if o.ok]
    freed = _size(sum(o.size_bytes or 0 for o in ok))
    if report.dry_run:
        summary = "dry run: %d checkpoint(s) would be deleted (%s); nothing was deleted" % (len(ok), freed)
    else:
        summary = "%d checkpoint(s) deleted (%s freed)" % (len(ok), freed)
    failed = len(report.outcomes) - len(ok)
    if failed:
        summary += "; %d not deleted" % failed
    return lines + ["", summary]


def _report_exit(report: DeleteReport) -> int:
    if not report.failed:
        return EXIT_OK
    return EXIT_PARTIAL if len(report.failed) < len(report.outcomes) else EXIT_FAILURE


def _confirm(out: _Output, what: str, yes: bool) -> None:
    if yes:
        return
    if not _isatty(out.stdin):
        raise _Exit(EXIT_USAGE, "refusing to %s without --yes: stdin is not a terminal to confirm on; "
                    "nothing was changed (pass --yes to go ahead, or --dry-run to preview)" % what, "UsageError")
    out.stderr.write("%s%s? [y/N] " % (what[0].upper(), what[1:]))
    out.stderr.flush()
    answer = out.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise _Exit(EXIT_FAILURE, "aborted; nothing was changed", "Aborted")


def cmd_delete(args: argparse.Namespace, out: _Output) -> int:
    """Delete checkpoints named by path, or selected from a run by creation time."""
    if bool(args.paths) == bool(args.run):
        raise UsageError("give either checkpoint PATHs or --run RUN, not %s" % ("both" if args.paths else "neither"))
    if (args.before or args.after) and not args.run:
        raise UsageError("--before and --after select within --run RUN")
    with _service(args) as service:
        if args.run:
            listed = checkpoints.list_checkpoints(service, args.run).result()
            chosen = checkpoints.select_checkpoints(listed, before=args.before, after=args.after)
            paths = [c.tinker_path for c in chosen]
            if not paths:
                out.result("no checkpoints of run %s match; nothing to delete" % args.run,
                           {"dry_run": args.dry_run, "results": []})
                return EXIT_OK
        else:
            paths = list(args.paths)
        # Validate every path before asking anything.
        for p in paths:
            parse_path(p, training=False)
        if not args.dry_run:
            if not args.yes and _isatty(out.stdin):
                out.note("\n".join("  %s" % p for p in paths))
            _confirm(out, "delete %d checkpoint(s)" % len(paths), args.yes)
        try:
            report = checkpoints.delete_checkpoints(service, paths, dry_run=args.dry_run).result()
        except CheckpointDeleteError as exc:
            if exc.report is None:
                raise
            report = exc.report
    out.result("\n".join(_report_lines(report)), report.to_json())
    return _report_exit(report)


def cmd_keep_last(args: argparse.Namespace, out: _Output) -> int:
    """Apply a keep-newest-N retention to one run."""
    with _service(args) as service:
        if not args.dry_run and not args.yes:
            plan = checkpoints.keep_last(service, args.run, args.n, dry_run=True).result()
            doomed = [o.path for o in plan.deletes.outcomes]
            if not doomed:
                out.result("run %s has %d training checkpoint(s); nothing to delete" % (args.run, len(plan.kept)),
                           plan.to_json())
                return EXIT_OK
            if _isatty(out.stdin):
                out.note("\n".join("  %s" % p for p in doomed))
            _confirm(out, "delete %d checkpoint(s) of run %s" % (len(doomed), args.run), args.yes)
        try:
            result = checkpoints.keep_last(service, args.run, args.n, dry_run=args.dry_run).result()
        except CheckpointDeleteError as exc:
            if exc.report is None:
                raise
            out.result("\n".join(_report_lines(exc.report)), {"run_id": args.run, "dry_run": args.dry_run,
                                                               "results": [o.to_json() for o in exc.report.outcomes]})
            return _report_exit(exc.report)
    lines = ["%-12s  %s  (%s)" % ("keep", c.tinker_path, _when(c.time)) for c in result.kept]
    human = "\n".join(lines + _report_lines(result.deletes))
    if not result.deletes.outcomes:
        human = "\n".join(lines + ["", "run %s has %d training checkpoint(s); nothing to delete"
                                   % (args.run, len(result.kept))])
    out.result(human, result.to_json())
    return EXIT_OK


def cmd_ttl(args: argparse.Namespace, out: _Output) -> int:
    """Set or remove a checkpoint's expiry (asks first: an expiry is a scheduled delete)."""
    ttl = None if args.remove else args.ttl_seconds
    path = str(parse_path(args.path, training=False))
    run_id = parse_path(path, training=False).run_id
    change = "remove the expiry of %s" % path if ttl is None else "make %s expire in %d s" % (path, ttl)
    with _service(args) as service:
        if args.dry_run:
            listed = checkpoints.list_checkpoints(service, run_id).result()
            exists = any(c.tinker_path == path for c in listed)
            human = "dry run: would %s; nothing was changed" % change if exists else (
                "dry run: %s does not exist; nothing was changed" % path)
            out.result(human, {"tinker_path": args.path, "ttl_seconds": ttl, "dry_run": True, "exists": exists})
            return EXIT_OK if exists else EXIT_FAILURE
        _confirm(out, change, args.yes)
        checkpoints.set_checkpoint_ttl(service, args.path, ttl).result()
    if ttl is None:
        human = "%s: expiry removed; it is kept until deleted" % args.path
    else:
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ttl)
        human = "%s: expires in %d s (around %s)" % (args.path, ttl, _when(expires))
    out.result(human, {"tinker_path": args.path, "ttl_seconds": ttl, "dry_run": False})
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, out: _Output) -> int:
    """Delete old checkpoints of a run or of every run, by the library's plan (checkpoints.plan_prune)."""
    if args.keep_last is None and args.older_than is None:
        raise UsageError("give --keep-last N, --older-than DURATION or both; prune with neither would delete everything")
    options = dict(run_id=args.run, keep_last=args.keep_last, older_than=args.older_than, type=args.type,
                   include_published=args.include_published)
    scope = "run %s" % args.run if args.run else "all runs"
    with _service(args) as service:
        plan = checkpoints.prune(service, dry_run=True, **options).result()
        doomed = [o.path for o in plan.deletes.outcomes]
        result = plan
        if doomed and not args.dry_run:
            if not args.yes and _isatty(out.stdin):
                out.note("\n".join("  %s" % p for p in doomed))
            _confirm(out, "delete %d checkpoint(s) of %s" % (len(doomed), scope), args.yes)
            try:  # exactly what was shown, not a new plan
                deleted = checkpoints.delete_checkpoints(service, doomed).result()
            except CheckpointDeleteError as exc:
                if exc.report is None:
                    raise
                deleted = exc.report
            result = PruneReport(run_id=args.run, kept=plan.kept, spared=plan.spared, deletes=deleted)
    lines = ["%-12s  %s  (%s)" % ("keep", c.tinker_path, _when(c.time)) for c in result.kept]
    lines += ["%-12s  %s  (published; --include-published deletes it)" % ("spare", c.tinker_path)
              for c in result.spared]
    if doomed:
        lines += _report_lines(result.deletes)
    else:
        lines += ["", "nothing to delete in %s (%d kept, %d published spared)" % (scope, len(result.kept),
                                                                                   len(result.spared))]
    out.result("\n".join(lines).lstrip("\n"), result.to_json())
    return _report_exit(result.deletes)


def cmd_publish(args: argparse.Namespace, out: _Output) -> int:
    """Publish or unpublish a checkpoint."""
    fn = checkpoints.publish_checkpoint if args.public else checkpoints.unpublish_checkpoint
    with _service(args) as service:
        fn(service, args.path).result()
    out.result("%s is now %s" % (args.path, "public" if args.public else "private"),
               {"tinker_path": args.path, "public": args.public})
    return EXIT_OK


def cmd_usage(args: argparse.Namespace, out: _Output) -> int:
    """Show checkpoint storage."""
    with _service(args) as service:
        usage = checkpoints.get_checkpoint_storage_usage(service, project_id=args.project).result()
    rows = [[i.project_id or "-", i.user_email or i.user_name or i.org_user_urn or "-", str(i.checkpoint_count),
             _size(i.size_bytes), "-" if i.estimated_monthly_cost_usd is None else "$%.2f" % i.estimated_monthly_cost_usd]
            for i in usage.data]
    rate = usage.effective_rate_usd_per_gigabyte_month
    human = "%s\n\n%d checkpoint(s), %s%s" % (
        _table(rows, ["PROJECT", "OWNER", "CHECKPOINTS", "SIZE", "EST. MONTHLY"]), usage.checkpoint_count,
        _size(usage.size_bytes), "" if rate is None else "; rate $%.4f per GB-month" % rate)
    out.result(human, usage.to_json())
    return EXIT_OK


class _ProgressPrinter:
    """Renders download progress on stderr: one rewritten line on a terminal, else a line per second."""

    def __init__(self, out: _Output, cancel: threading.Event) -> None:
        self.out = out
        self.cancel = cancel
        self.tty = _isatty(out.stderr)
        self.last = 0.0
        self.dirty = False

    def __call__(self, p: DownloadProgress) -> None:
        if self.cancel.is_set():
            raise _Cancelled()
        if not self.out.progress:
            return
        now = time.monotonic()
        final = p.phase in ("exporting", "verifying", "extracting", "done")
        if not final and now - self.last < (0.2 if self.tty else 1.0):
            return
        self.last = now
        if p.phase == "exporting":
            text = "exporting the checkpoint as external weights (a new run is loaded from it)"
        elif p.phase == "waiting":
            text = "waiting for the server to build the archive (%.0f s)" % p.waited
        elif p.phase == "downloading":
            rate = (p.bytes_done - p.resumed_from) / p.elapsed if p.elapsed > 0 else 0.0
            pct = " %3d%%" % (100 * p.bytes_done // p.bytes_total) if p.bytes_total else ""
            text = "%s / %s%s  %s/s%s" % (_size(p.bytes_done), _size(p.bytes_total), pct, _size(int(rate)),
                                          "  (resumed at %s)" % _size(p.resumed_from) if p.resumed_from else "")
        else:
            text = "%s %s" % (p.phase, _size(p.bytes_total))
        if self.tty:
            self.out.stderr.write("\r\x1b[K" + text)
            self.dirty = True
        else:
            self.out.stderr.write(text + "\n")
        self.out.stderr.flush()

    def finish(self) -> None:
        if self.dirty:
            self.out.stderr.write("\n")
            self.out.stderr.flush()
            self.dirty = False


def cmd_download(args: argparse.Namespace, out: _Output) -> int:
    """Download and verify a checkpoint's files (the archive route only against an older server)."""
    cancel = threading.Event()
    printer = _ProgressPrinter(out, cancel)
    with _service(args) as service:
        future = download.download_checkpoint(service, args.path, args.dest, overwrite=args.overwrite,
                                            keep_archive=args.keep_archive, wait_timeout=args.wait, progress=printer,
                                            max_resumes=args.max_resumes, max_concurrency=args.concurrency)
        try:
            result = future.result()
        except KeyboardInterrupt:
            cancel.set()  # the worker stops at its next progress report; the partial file stays for a resume
            printer.finish()
            raise _Exit(EXIT_INTERRUPTED, "interrupted; run the same command again to resume the download",
                        "KeyboardInterrupt") from None
        finally:
            printer.finish()
    verified = "sha256 verified" if result.sha256_verified else "size checked (server sent no sha256)"
    resumed = ", resumed at byte %d" % result.resumed_from if result.resumed_from else ""
    if result.method == "archive":
        how = "archive %s" % _size(result.archive_bytes)
    else:
        how = "%s" % _size(result.archive_bytes)
    lines = ["%s -> %s" % (result.tinker_path, result.directory),
             "%d file(s), %s (%s fetched%s), %s" % (len(result.files), how, _size(result.bytes_fetched), resumed, verified)]
    if result.export_path:
        lines.append("via export %s (%s%s)" % (result.export_path, "reused, " if result.export_reused else "",
                                               "deleted" if result.export_deleted else "not deleted: it expires by its TTL"))
    elif result.method == "archive":
        lines.append("via the archive route (the server has no save_weights_external)")
    human = "\n".join(lines + ["  " + f for f in result.files])
    out.result(human, result.to_json())
    return EXIT_OK


def cmd_runs_list(args: argparse.Namespace, out: _Output) -> int:
    """List training runs."""
    from . import runs

    with _service(args) as service:
        listed = runs.list_training_runs(service, limit=args.limit).result()
    rows = [
        [r.training_run_id, r.base_model, "-" if r.lora_rank is None else str(r.lora_rank),
         _when(r.last_request_time), r.last_checkpoint.name if r.last_checkpoint else "-",
         "CORRUPTED" if r.corrupted else "ok"]
        for r in listed
    ]
    if listed:
        human = "%s\n\n%d run(s)" % (_table(rows, ["RUN", "BASE MODEL", "RANK", "LAST REQUEST", "LAST CHECKPOINT",
                                                    "STATE"]), len(listed))
    else:
        human = "no training runs"
    out.result(human, {"training_runs": [r.to_json() for r in listed]})
    return EXIT_OK


def cmd_runs_info(args: argparse.Namespace, out: _Output) -> int:
    """Describe one training run."""
    from . import runs

    with _service(args) as service:
        run = runs.get_training_run(service, args.run).result()

    def ckpt(c: Optional[CheckpointInfo]) -> str:
        return "-" if c is None else "%s  (%s, %s)" % (c.tinker_path, _when(c.time), _size(c.size_bytes))

    rows = [
        ["run", run.training_run_id],
        ["base model", run.base_model],
        ["owner", run.model_owner or "-"],
        ["LoRA", _yes_no(run.is_lora)],
        ["LoRA rank", "-" if run.lora_rank is None else str(run.lora_rank)],
        ["state", "CORRUPTED" if run.corrupted else "ok"],
        ["last request", _when(run.last_request_time) if run.last_request_time else "-"],
        ["last checkpoint", ckpt(run.last_checkpoint)],
        ["last sampler checkpoint", ckpt(run.last_sampler_checkpoint)],
        ["metadata", json.dumps(run.user_metadata, sort_keys=True) if run.user_metadata else "-"],
    ]
    width = max(len(r[0]) for r in rows)
    out.result("\n".join("%s  %s" % (k.ljust(width), v) for k, v in rows), run.to_json())
    return EXIT_OK


# --------------------------------------------------------------------------- entry point


def cmd_resume_info(args: argparse.Namespace, out: _Output) -> int:
    """Show what ``Checkpointer.resume_or_create`` would do for a log directory."""
    from .checkpointer import RECORDS_FILE, read_records, resume_plan

    if args.run is None:
        plan = resume_plan(args.log_dir)
    else:
        with _service(args) as service:
            plan = resume_plan(args.log_dir, service=service, run_id=args.run)
    records = read_records(args.log_dir)
    where = os.path.join(args.log_dir, RECORDS_FILE)
    if plan.source == "record":
        what = "resume from record %s of %s" % (plan.record["name"] if plan.record else "?", where)
    elif plan.source == "run":
        what = "resume run %s from its last checkpoint (no resumable record in %s)" % (plan.run_id, where)
    else:
        what = "start a fresh run (no resumable record in %s%s)" % (
            where, "; run %s has no training checkpoint" % plan.run_id if plan.run_id else "")
    rows = [["action", what], ["checkpoint", plan.path or "-"], ["next step", str(plan.start)],
            ["loop state", json.dumps(plan.state, sort_keys=True) if plan.state else "-"],
            ["records", "%d (%d periodic, %d final)" % (
                len(records), sum(1 for r in records if r.get("periodic") is True),
                sum(1 for r in records if r.get("final") is True))]]
    width = max(len(r[0]) for r in rows)
    data = dict(plan.to_json(), records_file=where, records=len(records))
    out.result("\n".join("%s  %s" % (k.ljust(width), v) for k, v in rows), data)
    return EXIT_OK


def _configure_logging(verbose: bool, stream: TextIO) -> Callable[[], None]:
    """Send the package's log records to stderr (DEBUG with -v, else WARNING); return an undo function."""
    pkg = logging.getLogger(PACKAGE_LOGGER)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose
                                           else "%(levelname)s: %(message)s"))
    level = logging.DEBUG if verbose else logging.WARNING
    handler.setLevel(level)
    previous = pkg.level
    pkg.addHandler(handler)
    pkg.setLevel(level)

    def undo() -> None:
        pkg.removeHandler(handler)
        pkg.setLevel(previous)

    return undo


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tinkex-persist`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    stdin, stdout, stderr = sys.stdin, sys.stdout, sys.stderr
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 0 after --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except _ArgumentError as exc:
        exc.parser.print_usage(stderr)
        stderr.write("%s: error: %s\n" % (exc.parser.prog, exc.message))
        if "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv:
            _print_json_error(stdout, "UsageError", exc.message)
        return EXIT_USAGE
    out = _Output(args, stdin, stdout, stderr)
    undo = _configure_logging(bool(getattr(args, "verbose", False)), stderr)
    try:
        return args.func(args, out)
    except _Exit as exc:
        out.failure(exc.kind, exc.message)
        return exc.code
    except (UsageError, ConfigError) as exc:
        out.error(exc)
        return EXIT_USAGE
    except CheckpointDeleteError as exc:  # pragma: no cover - commands turn these into reports
        out.error(exc)
        return EXIT_PARTIAL
    except (TinkexPersistError, OSError) as exc:
        out.error(exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        out.failure("KeyboardInterrupt", "interrupted")
        return EXIT_INTERRUPTED
    finally:
        undo()
