"""Run a command under the seccomp part of a systemd unit's sandbox, without systemd.

    python tests/packaging/unit_sandbox.py packaging/systemd/gatewayd.service [--user nobody] -- CMD ARGS...

systemd is not PID 1 in CI containers, so the unit cannot be started for real. What
breaks daemons in hardened units in practice is the system call filter, and that part
can be reproduced exactly: this reads the unit's ``SystemCallFilter=`` lines (group
contents from ``systemd-analyze syscall-filter``, i.e. the same tables systemd uses),
``SystemCallErrorNumber=``, ``RestrictAddressFamilies=``, ``MemoryDenyWriteExecute=``,
``RestrictNamespaces=``, ``UMask=`` and ``NoNewPrivileges=``, builds the equivalent
filter with libseccomp (ctypes) and execs the command under it, after dropping to
``--user`` (like ``User=`` with an empty ``CapabilityBoundingSet=``).

Not reproduced: the mount namespace (ProtectSystem=, PrivateTmp=, ...), DeviceAllow=
(cgroup), and the "implicitly allowed" syscalls beyond those named in systemd.exec(5).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

SCMP_ACT_ALLOW = 0x7FFF0000


def SCMP_ACT_ERRNO(e: int) -> int:  # noqa: N802 (libseccomp's name)
    return 0x00050000 | (e & 0xFFFF)


SCMP_CMP_EQ = 4
SCMP_CMP_GT = 6
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080
# execve(), exit(), ... and time/sleep calls: implicitly allowed (systemd.exec(5), SystemCallFilter=)
IMPLICIT = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def unit_settings(path: str) -> dict[str, list[str]]:
    """``[Service]`` assignments in order, ``{key: [value, ...]}`` (comments and other sections skipped)."""
    out: dict[str, list[str]] = {}
    section = None
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]" and "=" in line:
                k, v = line.split("=", 1)
                out.setdefault(k.strip(), []).append(v.strip())
    return out


def syscall_groups() -> dict[str, list[str]]:
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.strip(), [])
        elif not line.strip() or not line.startswith(" "):
            cur = None
        elif cur is not None and not line.strip().startswith("#"):
            cur.append(line.strip())
    return groups


def expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for it in items:
        if it.startswith("@"):
            out |= expand(groups[it], groups)
        else:
            out.add(it)
    return out


def allowed_syscalls(settings: dict[str, list[str]], groups: dict[str, list[str]]) -> set[str] | None:
    """The allow list systemd computes from the SystemCallFilter= lines (None: no allow list)."""
    allow: set[str] | None = None
    for value in settings.get("SystemCallFilter", []):
        if not value:
            allow = None
            continue
        neg = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        if allow is None:
            if neg:
                raise SystemExit("unit_sandbox: deny-list-first SystemCallFilter= is not supported")
            allow = set(names) | IMPLICIT
        elif neg:
            allow -= names
        else:
            allow |= names
    return allow


def build_filter(settings: dict[str, list[str]]):
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    err = settings.get("SystemCallErrorNumber", ["EPERM"])[-1]
    default = SCMP_ACT_ERRNO(getattr(errno, err))
    allow = allowed_syscalls(settings, syscall_groups())
    if allow is None:
        raise SystemExit("unit_sandbox: the unit has no SystemCallFilter= allow list")
    ctx = lib.seccomp_init(default)

    def rule(action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr == -1:  # unknown to libseccomp: nothing to allow
            return
        arr = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if rc < 0 and rc != -errno.EDOM and nr >= 0:  # EDOM: pseudo syscall not on this arch
            raise OSError(-rc, f"seccomp_rule_add({name})")

    special: set[str] = set()
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        # systemd: refuse mmap(W|X), mprotect/pkey_mprotect(X), shmat(SHM_EXEC)
        special |= {"mmap", "mmap2", "mprotect", "pkey_mprotect", "shmat"}
        for name in ("mmap", "mmap2"):
            if name in allow:
                for ok in (0, PROT_WRITE, PROT_EXEC):
                    rule(SCMP_ACT_ALLOW, name, (2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, ok))
        for name in ("mprotect", "pkey_mprotect"):
            if name in allow:
                rule(SCMP_ACT_ALLOW, name, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))
        if "shmat" in allow:
            rule(SCMP_ACT_ALLOW, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, 0))
    families = settings.get("RestrictAddressFamilies", [])
    if families and "socket" in allow:
        special.add("socket")
        fams = {int(getattr(socket, f)) for v in families for f in v.split()}
        for f in fams:
            rule(SCMP_ACT_ALLOW, "socket", (0, SCMP_CMP_EQ, f, 0))
        for f in range(0, 46):
            if f not in fams:
                rule(SCMP_ACT_ERRNO(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_EQ, f, 0))
        rule(SCMP_ACT_ERRNO(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_GT, 45, 0))
    if settings.get("RestrictNamespaces", ["no"])[-1] == "yes":
        # systemd: no unshare/setns, clone without CLONE_NEW*, clone3 -> ENOSYS (libc falls back to clone)
        special |= {"unshare", "setns", "clone", "clone3"}
        if "clone" in allow:
            rule(SCMP_ACT_ALLOW, "clone", (0, SCMP_CMP_MASKED_EQ, CLONE_NEW, 0))
        rule(SCMP_ACT_ERRNO(errno.ENOSYS), "clone3")
    for name in sorted(allow - special):
        rule(SCMP_ACT_ALLOW, name)
    return lib, ctx


# ---- test helpers: sd_notify receiver, log tail

def seccomp_unavailable() -> str | None:
    """Why the sandbox cannot run here, or None."""
    if not shutil.which("systemd-analyze"):
        return "systemd-analyze not installed (it lists the syscall groups)"
    if not ctypes.util.find_library("seccomp"):
        return "libseccomp not installed"
    with open("/proc/self/status") as fh:
        if "Seccomp:" not in fh.read():
            return "kernel without seccomp"
    return None


def tail(log, n=4000):
    with open(log, errors="replace") as fh:
        return fh.read()[-n:]


class Notify:
    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.got = []

    def wait(self, prefix, proc, log, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            for m in self.got:
                if any(line.startswith(prefix) for line in m.splitlines()):
                    self.got.remove(m)
                    return m
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise AssertionError(f"no {prefix!r} from the sandboxed daemon (exit {proc.poll()}):\n"
                                     + tail(log))
            self.sock.settimeout(min(left, 0.5))
            try:
                self.got.append(self.sock.recv(65536).decode())
            except socket.timeout:
                pass


@contextlib.contextmanager
def running(cmd: list[str], env: dict, log: str, notify: Notify):
    """``cmd`` as a subprocess logging to ``log``; killed if still running when the block ends."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.sock.close()


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(__doc__)
    cut = argv.index("--")
    opts, cmd = argv[:cut], argv[cut + 1:]
    unit = opts[0]
    user = opts[opts.index("--user") + 1] if "--user" in opts else None
    settings = unit_settings(unit)
    lib, ctx = build_filter(settings)  # built before dropping privileges (reads nothing privileged)
    if user and os.geteuid() == 0:
        pw = pwd.getpwnam(user)
        groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
        for g in settings.get("SupplementaryGroups", []):
            for name in g.split():
                try:
                    groups.append(grp.getgrnam(name).gr_gid)
                except KeyError:
                    pass
        os.setgroups(sorted(set(groups)))
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)  # no capabilities left: CapabilityBoundingSet= (empty)
    if "UMask" in settings:
        os.umask(int(settings["UMask"][-1], 8))
    rc = lib.seccomp_load(ctx)  # also sets no_new_privs (NoNewPrivileges=yes)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
