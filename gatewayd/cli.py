"""Command line: ``gatewayd run|check-config|version`` and ``gatewayctl``.

``gatewayctl`` is a thin JSON-RPC client: tables for people, ``--json`` for
scripts. Any plugin method works without special support:
``gatewayctl modbus read-registers --device meter-1 --address 0 --count 4``
calls ``modbus.read_registers`` with those params (values parsed as JSON when
they look like JSON). Exit codes: 0 ok, 1 the daemon answered with an error,
2 usage/config error, 3 daemon not running, 4 access denied.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
from typing import Any

from . import __version__

# --------------------------------------------------------------------------- gatewayd


def gatewayd_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gatewayd", description="Edge gateway daemon.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the daemon in the foreground")
    r.add_argument("-c", "--config", default=os.environ.get("GATEWAYD_CONFIG", "/etc/gatewayd/gatewayd.toml"))
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    c = sub.add_parser("check-config", help="validate a configuration file; exit 2 on problems")
    c.add_argument("file", nargs="?", default=None)
    c.add_argument("-c", "--config", dest="cfg_opt", default=None)
    c.add_argument("--no-system-checks", action="store_true",
                   help="for a file meant for another machine: do not look up socket_group and the users and "
                        "groups of role entries on this one")
    sub.add_parser("version", help="print the version")
    args = ap.parse_args(argv)

    if args.cmd == "version":
        print(f"gatewayd {__version__}")
        return 0
    if args.cmd == "check-config":
        return _check_config(args.file or args.cfg_opt or os.environ.get("GATEWAYD_CONFIG",
                                                                         "/etc/gatewayd/gatewayd.toml"),
                             system_checks=not args.no_system_checks)
    return _run(args.config, args.log_level)


def _check_config(path: str, *, system_checks: bool = True) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(path, system_checks=system_checks)
    except ConfigError as e:
        for p in e.problems:
            print(p)
        print(f"{len(e.problems)} problem(s) found", file=sys.stderr)
        return 2
    for w in cfg.warnings:
        print(f"warning: {w}")
    print(cfg.summary())
    return 0


def _run(path: str, level: str | None) -> int:
    import trio

    from .config import ConfigError, load_config
    from .daemon import Gateway
    from .plugins import PluginRegistry
    from .systemd import Notifier, setup_logging

    setup_logging(level or "info")
    registry = PluginRegistry()
    try:
        cfg = load_config(path, registry=registry)
    except ConfigError as e:
        import logging

        logging.getLogger("gatewayd").error("configuration has %d problem(s), not starting:\n%s",
                                            len(e.problems), e)
        return 2
    import logging

    if level is None:
        logging.getLogger().setLevel(cfg.gateway.log_level.upper())
    for w in cfg.warnings:
        logging.getLogger("gatewayd").warning("%s", w)
    gw = Gateway(cfg, registry, notifier=Notifier.from_env())
    try:
        trio.run(gw.run)
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled inside; this is a second ^C
        return 130
    except BaseException as e:
        # a store that cannot be opened (e.g. written by a newer version) is one line, not a traceback
        from .store.db import StoreError

        leaf = e
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, StoreError):
            logging.getLogger("gatewayd").error("not starting: %s", leaf)
            return 1
        raise
    return 0


# --------------------------------------------------------------------------- gatewayctl


def default_socket() -> str:
    env = os.environ.get("GATEWAYD_SOCKET")
    if env:
        return env
    for cand in ("var/gatewayd.sock", "/run/gatewayd/control.sock"):
        if os.path.exists(cand):
            return cand
    return "/run/gatewayd/control.sock"


def _value(s: str) -> Any:
    """Parse a command-line value as JSON when it looks like JSON, else keep the string."""
    try:
        return json.loads(s)
    except ValueError:
        return s


def _fmt_ts(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "" if ts is None else str(ts)
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0/C1 controls and DEL, format characters (bidi overrides, zero-width), line/paragraph separators,
# lone surrogates: what a terminal would act on, or what would break a table row
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))


def _escape_char(ch: str) -> str:
    import unicodedata

    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
        return ch
    named = _NAMED_ESCAPES.get(ch)
    if named:
        return named
    cp = ord(ch)
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def escape_text(s: str) -> str:
    """``s`` safe to print in one table cell or line: control and format characters (ESC, CR, LF,
    TAB, DEL, C1, bidi overrides, zero-width, line separators) become visible escapes such as
    ``\\x1b`` or ``\\n``. Printable text (the usual case) is returned as it is."""
    if s.isprintable():
        return s
    return "".join(_escape_char(ch) for ch in s)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as indented JSON for ``--json``: exact values, non-ASCII text kept readable, but DEL,
    C1 controls and format characters written as ``\\u`` escapes (json leaves them raw) so that
    printing it to a terminal is harmless."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=str)
    if text.isascii() and "\x7f" not in text:
        return text

    def esc(ch: str) -> str:
        if ch == "\n" or _escape_char(ch) == ch:
            return ch  # raw newlines are the indentation's; json escaped those inside strings
        b = ch.encode("utf-16-be", "surrogatepass")
        return "".join(f"\\u{int.from_bytes(b[i:i + 2], 'big'):04x}" for i in range(0, len(b), 2))

    return "".join(esc(ch) for ch in text)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return escape_text(json.dumps(v, ensure_ascii=False, default=str)) if v else "-"
    return escape_text(str(v))


def print_table(rows: list[dict], columns: list[str] | None = None, out=sys.stdout) -> None:
    """Plain aligned table; long cells are cut to fit the terminal."""
    if not rows:
        print("(none)", file=out)
        return
    if columns is None:
        columns = []
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    cells = [[(_fmt_ts(r.get(c)) if c in ("ts", "last_ok", "down_since", "started_at", "first_seen", "last_seen")
               else _fmt(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    # fit a terminal; never cut when piped (scripts and grep want whole ids)
    total = shutil.get_terminal_size((160, 24)).columns if out.isatty() else 10**9
    while sum(widths) + 2 * len(widths) > total and max(widths) > 12:
        i = widths.index(max(widths))
        widths[i] -= 1
    def cut(s, w):
        return s if len(s) <= w else s[: max(1, w - 1)] + "…"
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip(), file=out)
    for row in cells:
        print("  ".join(cut(s, w).ljust(w) for s, w in zip(row, widths)).rstrip(), file=out)


TABLES = {
    "points.list": ["id", "value", "unit", "status", "ts", "writable", "reason"],
    "points.read": ["id", "value", "unit", "status", "ts", "flags", "write_status", "write_error"],
    "drivers.list": ["id", "type", "state", "devices", "points", "crashes", "last_error"],
    "devices.list": ["device", "driver", "conn_status", "conn_state", "failures", "points", "last_ok", "reason"],
    "connectors.status": ["id", "type", "state", "connection", "backlog", "oldest_age", "delivered", "dropped",
                          "last_error"],
    "audit.list": ["ts", "actor", "action", "target", "ok", "detail"],
    "discovery.list": ["driver", "key", "status", "summary", "last_seen"],
    "backup.list": ["created", "path", "bytes", "gatewayd"],
}


def _render(method: str, result: Any, as_json: bool) -> None:
    if as_json:
        print(json_text(result))
        return
    if method == "connectors.status" and isinstance(result, list):
        rows = []
        for r in result:
            ob = r.get("outbox") or {}
            rows.append({**r, **{k: ob.get(k) for k in ("backlog", "oldest_age", "delivered", "dropped")}})
        result = rows
    if method == "discovery.list" and isinstance(result, list):
        result = [{**r, "summary": " ".join(str(v) for k, v in (r.get("data") or {}).items()
                                            if k in ("vendor", "model", "name", "address", "host", "unit"))}
                  for r in result]
    if method == "history.query" and isinstance(result, dict):
        print_table(result.get("samples", []))
        return
    if method == "points.priority_array" and isinstance(result, dict):
        slots = result.get("slots", {})
        print_table([{"priority": k, "value": v} for k, v in slots.items() if v is not None]
                    or [{"priority": "-", "value": None}])
        print(f"relinquish default: {_fmt(result.get('relinquish_default'))}   "
              f"effective: {_fmt(result.get('effective'))} (level {_fmt(result.get('active_level'))})")
        return
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):
        print_table(result, TABLES.get(method))
    elif isinstance(result, dict):
        width = max((len(k) for k in result), default=0)
        for k, v in result.items():
            print(f"{k.ljust(width)}  {_fmt_ts(v) if k in ('started', 'ts') else _fmt(v)}")
    else:
        print(_fmt(result))


def _kv_params(items: list[str]) -> dict:
    """``--key value`` / ``key=value`` pairs -> params dict (dashes become underscores)."""
    params: dict[str, Any] = {}
    i = 0
    while i < len(items):
        it = items[i]
        if it.startswith("--"):
            key = it[2:]
            if "=" in key:
                key, val = key.split("=", 1)
                params[key.replace("-", "_")] = _value(val)
            elif i + 1 < len(items) and not items[i + 1].startswith("--"):
                params[key.replace("-", "_")] = _value(items[i + 1])
                i += 1
            else:
                params[key.replace("-", "_")] = True
        elif "=" in it:
            key, val = it.split("=", 1)
            params[key.replace("-", "_")] = _value(val)
        else:
            raise SystemExit(f"gatewayctl: unexpected argument {it!r} (use --key value or key=value)")
        i += 1
    return params


def _build_ctl_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gatewayctl",
        description="Control a running gatewayd over its local socket.",
        epilog="Any plugin method works too: gatewayctl modbus read-registers --device meter-1 --address 0 --count 4",
    )
    ap.add_argument("-s", "--socket", default=None, help="control socket (default: $GATEWAYD_SOCKET, "
                    "./var/gatewayd.sock, /run/gatewayd/control.sock)")
    ap.add_argument("--json", action="store_true", help="print the raw JSON result")
    ap.add_argument("--timeout", type=float, default=30.0)
    sub = ap.add_subparsers(dest="group", metavar="COMMAND")

    sub.add_parser("status", help="gateway status")
    sub.add_parser("version", help="versions of gatewayd, plugins and libraries")
    sub.add_parser("methods", help="RPC methods available to you")

    g = sub.add_parser("drivers", help="driver instances").add_subparsers(dest="action", required=True)
    g.add_parser("list")
    g = sub.add_parser("devices", help="devices and their connection status").add_subparsers(dest="action", required=True)
    p = g.add_parser("list")
    p.add_argument("--driver")
    p.add_argument("--status")
    g = sub.add_parser("connectors", help="northbound connectors").add_subparsers(dest="action", required=True)
    p = g.add_parser("status")
    p.add_argument("connector", nargs="?")

    g = sub.add_parser("points", help="read, write, watch points").add_subparsers(dest="action", required=True)
    p = g.add_parser("list")
    for opt in ("--driver", "--device", "--glob", "--tag", "--status"):
        p.add_argument(opt)
    p = g.add_parser("read")
    p.add_argument("points", nargs="+")
    p = g.add_parser("write", help="write VALUE (JSON: 21.5, true, null, \"text\") at --priority (default 16)")
    p.add_argument("point")
    p.add_argument("value")
    p.add_argument("-p", "--priority", type=int, default=16)
    p = g.add_parser("relinquish")
    p.add_argument("point")
    p.add_argument("-p", "--priority", type=int, default=16)
    p = g.add_parser("priority-array")
    p.add_argument("point")
    p = g.add_parser("watch", help="print changes until ^C")
    for opt in ("--driver", "--device", "--glob", "--tag"):
        p.add_argument(opt)
    p.add_argument("--kinds", default="value,status")

    g = sub.add_parser("history", help="stored samples").add_subparsers(dest="action", required=True)
    p = g.add_parser("query")
    p.add_argument("point")
    p.add_argument("--start", default="-1h")
    p.add_argument("--end")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--downsample")

    g = sub.add_parser("audit", help="who changed what").add_subparsers(dest="action", required=True)
    p = g.add_parser("list")
    for opt in ("--since", "--until", "--actor", "--target"):
        p.add_argument(opt)
    p.add_argument("--action", dest="audit_action")
    p.add_argument("--limit", type=int, default=50, help="entries per page (at most 1000)")
    p.add_argument("--cursor", help="the next page: the cursor printed after a full page")

    g = sub.add_parser("config", help="validate or reload the configuration").add_subparsers(dest="action", required=True)
    p = g.add_parser("validate")
    p.add_argument("path", nargs="?")
    g.add_parser("reload")

    g = sub.add_parser("discovery", help="scan, list, accept, ignore").add_subparsers(dest="action", required=True)
    p = g.add_parser("scan", help="discovery scan DRIVER [--key value ...]")
    p.add_argument("driver")
    p.add_argument("params", nargs=argparse.REMAINDER)
    p = g.add_parser("list")
    p.add_argument("--driver")
    p.add_argument("--status")
    p = g.add_parser("accept")
    p.add_argument("driver")
    p.add_argument("key")
    p.add_argument("--device-id")
    p = g.add_parser("ignore")
    p.add_argument("driver")
    p.add_argument("key")

    g = sub.add_parser("backup", help="back up / list / restore the stores").add_subparsers(dest="action",
                                                                                          required=True)
    p = g.add_parser("run", help="back up now (while running; consistent)")
    p.add_argument("--dir")
    p = g.add_parser("list")
    p.add_argument("--dir")
    p = g.add_parser("restore", help="restore a backup directory (offline: stop gatewayd first)")
    p.add_argument("path")
    p.add_argument("-c", "--config", default=None,
                   help="the daemon's configuration (default: $GATEWAYD_CONFIG, else /etc/gatewayd/gatewayd.toml)")

    p = sub.add_parser("call", help="call any method: call METHOD [JSON-params | key=value ...]")
    p.add_argument("method")
    p.add_argument("params", nargs=argparse.REMAINDER)
    return ap


def _request(args, extra: list[str]) -> tuple[str, Any]:
    g, a = args.group, getattr(args, "action", None)
    drop = lambda d: {k: v for k, v in d.items() if v is not None}  # noqa: E731
    if g == "status":
        return "gateway.status", {}
    if g == "version":
        return "gateway.version", {}
    if g == "methods":
        return "gateway.methods", {}
    if g == "drivers":
        return "drivers.list", {}
    if g == "devices":
        return "devices.list", drop({"driver": args.driver, "status": args.status})
    if g == "connectors":
        return "connectors.status", drop({"connector": args.connector})
    if g == "points":
        if a == "list":
            return "points.list", drop({"driver": args.driver, "device": args.device, "glob": args.glob,
                                        "tag": args.tag, "status": args.status})
        if a == "read":
            return "points.read", {"points": args.points}
        if a == "write":
            return "points.write", {"point": args.point, "value": _value(args.value), "priority": args.priority}
        if a == "relinquish":
            return "points.relinquish", {"point": args.point, "priority": args.priority}
        if a == "priority-array":
            return "points.priority_array", {"point": args.point}
        if a == "watch":
            return "points.watch", drop({"driver": args.driver, "device": args.device, "glob": args.glob,
                                         "tag": args.tag, "kinds": args.kinds.split(",")})
    if g == "history":
        return "history.query", drop({"point": args.point, "start": args.start, "end": args.end,
                                      "limit": args.limit, "downsample": args.downsample})
    if g == "audit":
        return "audit.list", drop({"since": args.since, "until": args.until, "actor": args.actor,
                                   "action": args.audit_action, "target": args.target, "limit": args.limit,
                                   "cursor": args.cursor})
    if g == "config":
        return ("config.validate", drop({"path": os.path.abspath(args.path) if args.path else None})) \
            if a == "validate" else ("config.reload", {})
    if g == "discovery":
        if a == "scan":
            return "discovery.scan", {"driver": args.driver, **_kv_params(args.params)}
        if a == "list":
            return "discovery.list", drop({"driver": args.driver, "status": args.status})
        if a == "accept":
            return "discovery.accept", drop({"driver": args.driver, "key": args.key, "device_id": args.device_id})
        return "discovery.ignore", {"driver": args.driver, "key": args.key}
    if g == "backup":
        return ("backup.run" if a == "run" else "backup.list"), drop({"dir": args.dir})
    if g == "call":
        ps = args.params
        if len(ps) == 1 and ps[0][:1] in "[{":
            return args.method, json.loads(ps[0])
        return args.method, _kv_params(ps)
    raise SystemExit(2)  # pragma: no cover


KNOWN_COMMANDS = ("status", "version", "methods", "drivers", "devices", "connectors", "points", "history", "audit",
                  "config", "discovery", "backup", "call")
_GLOBAL_VALUE_OPTS = ("-s", "--socket", "--timeout")
#: how people write the protocol a plugin namespace is named after
_DISPLAY = {"modbus": "Modbus", "bacnet": "BACnet", "mqtt": "MQTT", "opcua": "OPC UA", "sim": "simulator"}


def _add_global_options(ap: argparse.ArgumentParser) -> None:
    """Accept ``--json``, ``-s/--socket`` and ``--timeout`` after the command too (``status --json``):
    every sub-command parser gets them, with defaults that never override the top-level ones."""
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    if "--json" not in sub._option_string_actions:
                        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                         help="print the raw JSON result")
                        sub.add_argument("-s", "--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                        sub.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                _add_global_options(sub)


def gatewayctl_main(argv: list[str] | None = None) -> int:
    """``gatewayctl``: parse, call the daemon, print. Returns the exit code (see the module docstring)."""
    try:
        return _gatewayctl(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # `gatewayctl ... | head`: the reader left; say nothing (and let no flush at exit complain)
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # as a process killed by SIGPIPE


def _gatewayctl(argv: list[str]) -> int:
    ap = _build_ctl_parser()
    _add_global_options(ap)
    # generic plugin methods: gatewayctl <ns> <method-name> [--key value ...]
    j = 0  # skip the global options before the command (and the values of -s/--socket/--timeout)
    while j < len(argv) and argv[j].startswith("-"):
        j += 2 if argv[j] in _GLOBAL_VALUE_OPTS else 1
    generic = None
    if j < len(argv) and argv[j] not in KNOWN_COMMANDS:
        generic = (argv[j], argv[j + 1:])
        argv = argv[:j]
    if argv and argv[0] in ("-h", "--help") and generic is None:
        ap.parse_args(argv)
    args = ap.parse_args(argv)
    if generic is not None:
        ns, rest = generic
        as_json = args.json or "--json" in rest
        rest = [x for x in rest if x != "--json"]
        sock = args.socket or default_socket()
        if not rest or rest[0] in ("-h", "--help") or rest[0].startswith("-"):
            return _plugin_help(sock, ns, None)
        name, params_argv = rest[0], rest[1:]
        if "-h" in params_argv or "--help" in params_argv:
            return _plugin_help(sock, ns, name)
        method, params = f"{ns}.{name.replace('-', '_')}", _kv_params(params_argv)
        return _call(sock, method, params, as_json=as_json, timeout=args.timeout, command=f"{ns} {name}")
    if args.group is None:
        ap.print_help()
        return 2
    if args.group == "backup" and args.action == "restore":
        return _restore(args)
    method, params = _request(args, [])
    return _call(args.socket or default_socket(), method, params, as_json=args.json, timeout=args.timeout)


def _usage(m: dict) -> str:
    """``--device DEVICE [--on ON]`` from a method's ``params`` (``"device [on]"``)."""
    out = []
    for tok in str(m.get("params") or "").split():
        opt = tok.startswith("[")
        name = tok.strip("[]").rstrip(".").split("=")[0].rstrip(".")
        if not name:
            continue
        part = f"--{name.replace('_', '-')} {name.upper()}"
        out.append(f"[{part}]" if opt else part)
    return " ".join(out)


def _methods(sock: str) -> list[dict] | str:
    """``gateway.methods`` (what our role may call), or why the daemon could not be asked."""
    from .rpc.client import AccessDenied, DaemonNotRunning, RpcClient, RpcRemoteError

    try:
        with RpcClient(sock, timeout=10) as c:
            return c.call("gateway.methods", {})
    except (DaemonNotRunning, AccessDenied, RpcRemoteError, OSError) as e:
        return str(e)


def _plugin_help(sock: str, ns: str, name: str | None) -> int:
    """Help for ``gatewayctl NS --help`` / ``NS METHOD --help``, built from ``gateway.methods`` (a read,
    never the method itself: nothing runs, nothing is audited)."""
    methods = _methods(sock)
    if isinstance(methods, str) and ns not in _DISPLAY and _suggest(ns, []):
        return _unknown(ns, name, [])  # a typo of a built-in command: no daemon needed to say so
    if isinstance(methods, str):
        print(f"usage: gatewayctl {ns} METHOD [--param value ...]\n\n"
              f"Calls the plugin method {ns}.METHOD. The methods and their parameters come from the daemon, "
              f"which cannot tell now: {methods}")
        return 0
    mine = [m for m in methods if m["name"].startswith(ns + ".")]
    if name is not None:
        full = f"{ns}.{name.replace('-', '_')}"
        m = next((m for m in mine if m["name"] == full), None)
        if m is None:
            return _unknown(ns, name, methods)
        print(f"usage: gatewayctl {ns} {name} {_usage(m)}".rstrip())
        print(f"\n{m.get('doc') or ''}\n\nrole: {m['role']}" + ("; changes state (audited)" if m.get("mutating")
                                                                 else ""))
        return 0
    if not mine:
        return _unknown(ns, None, methods)
    print(f"usage: gatewayctl {ns} METHOD [--param value ...]   (values are JSON when they look like JSON)\n")
    for m in mine:
        cmd = m["name"].split(".", 1)[1].replace("_", "-")
        print(f"  gatewayctl {ns} {cmd} {_usage(m)}".rstrip())
        if m.get("doc"):
            print(f"      {m['doc']}")
    return 0


def _suggest(ns: str, methods: list[dict], name: str | None = None) -> str | None:
    """The closest command to ``ns [name]``: a built-in one, or a method the daemon has."""
    import difflib

    namespaces = sorted({m["name"].split(".", 1)[0] for m in methods if "." in m["name"]} - {"gateway"})
    if name is None or ns not in namespaces:
        best = difflib.get_close_matches(ns, list(KNOWN_COMMANDS) + namespaces, n=1, cutoff=0.6)
        if not best:
            return None
        return best[0] + (f" {name}" if name is not None else "")
    cmds = [m["name"].split(".", 1)[1].replace("_", "-") for m in methods if m["name"].startswith(ns + ".")]
    best = difflib.get_close_matches(name, cmds, n=1, cutoff=0.6)
    return f"{ns} {best[0]}" if best else None


def _no_plugin(ns: str) -> int:
    what = _DISPLAY.get(ns, ns)
    print(f"gatewayctl: no {what} driver is configured on this gateway: the `gatewayctl {ns} ...` commands come "
          f"with it (add a [drivers.<id>] table with type = \"{ns}\"; `gatewayctl methods` lists what there "
          "is)", file=sys.stderr)
    return 1


def _unknown(ns: str, name: str | None, methods: list[dict]) -> int:
    """Exit 2 with a "did you mean"; or 1 when ``ns`` is a plugin that is simply not configured."""
    cmd = ns if name is None else f"{ns} {name}"
    namespaces = {m["name"].split(".", 1)[0] for m in methods if "." in m["name"]}
    if ns not in namespaces and ns in _DISPLAY:
        return _no_plugin(ns)
    hint = _suggest(ns, methods, name)
    print(f"gatewayctl: unknown command {cmd!r}" + (f"; did you mean {hint!r}?" if hint else
                                                     " (`gatewayctl --help`, `gatewayctl methods`)"),
          file=sys.stderr)
    return 2


def _restore(args) -> int:
    """Offline restore: reads state_dir and the socket path from the configuration file."""
    from .backup import BackupError, restore_backup
    from .config import ConfigError, load_config

    path = args.config
    if path is None:
        env = os.environ.get("GATEWAYD_CONFIG")
        path = env or "/etc/gatewayd/gatewayd.toml"
        print(f"gatewayctl: using the configuration {path} "
              + ("(from $GATEWAYD_CONFIG; -c PATH for another)" if env else
                 "(the default; -c PATH or $GATEWAYD_CONFIG for another)"), file=sys.stderr)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(f"gatewayctl: cannot read {path}:\n{e}", file=sys.stderr)
        return 2
    try:
        res = restore_backup(os.path.abspath(args.path), cfg.gateway.state_dir,
                             socket_path=args.socket or cfg.control.socket)
    except BackupError as e:
        print(f"gatewayctl: restore refused: {e}", file=sys.stderr)
        return 1
    print(f"restored {', '.join(res['restored'])} into {cfg.gateway.state_dir}")
    if res["previous_files"]:
        print(f"previous files kept in {res['previous_files']}")
    return 0


def _call(sock: str, method: str, params: Any, *, as_json: bool, timeout: float, command: str | None = None) -> int:
    from .rpc.client import AccessDenied, DaemonNotRunning, RpcClient, RpcRemoteError

    try:
        client = RpcClient(sock, timeout=None if method == "points.watch" else timeout)
    except DaemonNotRunning as e:
        print(f"gatewayctl: {e}", file=sys.stderr)
        return 3
    except AccessDenied as e:
        print(f"gatewayctl: {e}", file=sys.stderr)
        return 4
    try:
        if method == "points.watch":
            return _watch(client, params, as_json)
        result = client.call(method, params)
    except RpcRemoteError as e:
        if e.code == -32601 and command is not None:  # a plugin command the daemon does not have
            methods = _methods(sock)
            ns, _, name = command.partition(" ")
            return _unknown(ns, name, methods if isinstance(methods, list) else [])
        print(escape_text(f"gatewayctl: {method}: {e.message}" + (f" ({e.data})" if e.data else "")),
              file=sys.stderr)
        return 4 if e.code == -32001 else 1
    except DaemonNotRunning as e:
        print(f"gatewayctl: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    _render(method, result, as_json)
    if method == "audit.list" and isinstance(result, list) and result and isinstance(params, dict) \
            and len(result) >= params.get("limit", 100) and isinstance(result[-1], dict) and result[-1].get("cursor"):
        print(f"more: add --cursor {result[-1]['cursor']} for the next page", file=sys.stderr)
    if method == "config.validate" and isinstance(result, dict) and not result.get("ok"):
        for line in result.get("errors", []):
            print(line, file=sys.stderr)
        return 2
    if method == "config.reload" and isinstance(result, dict) and not result.get("ok"):
        return 2
    return 0


def _watch(client, params, as_json: bool) -> int:
    try:
        for note in client.stream("points.watch", params):
            for ev in note.get("params", {}).get("events", []):
                if as_json:
                    print(json_text(ev, indent=None), flush=True)
                elif ev.get("kind") == "value":
                    print(f"{_fmt_ts(ev['ts'])}  {ev['point']:<32} {_fmt(ev['value'])} {ev.get('unit') or ''}"
                          f"  [{ev['status']}]", flush=True)
                else:
                    reason = escape_text(str(ev.get("reason") or ""))
                    print(f"{_fmt_ts(ev['ts'])}  {ev.get('point') or ev.get('device')}: {ev['kind']} "
                          f"{ev.get('old', '')} -> {ev.get('new', ev.get('status', ''))} {reason}", flush=True)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(gatewayctl_main())
