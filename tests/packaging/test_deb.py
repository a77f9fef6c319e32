"""The Debian package and the systemd unit: build, contents, scripts, install into a throwaway root."""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(ROOT, "packaging", "systemd", "gatewayd.service")

needs_dpkg = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="dpkg-deb not installed (Debian tooling)")


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run(["bash", os.path.join(ROOT, "packaging", "debian", "build-deb.sh"), str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip().splitlines()[-1]


@needs_dpkg
def test_contents_control_and_conffiles(deb):
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for p in ("/usr/bin/gatewayd", "/usr/bin/gatewayctl", "/etc/gatewayd/gatewayd.toml",
              "/usr/lib/systemd/system/gatewayd.service", "/usr/lib/sysusers.d/gatewayd.conf",
              "/usr/lib/tmpfiles.d/gatewayd.conf", "/usr/share/doc/gatewayd/operations.md",
              "/usr/lib/gatewayd/site/gatewayd/daemon.py", "/usr/lib/gatewayd/site/gatewayd_sim/__init__.py"):
        assert p in paths, p
    assert any(re.match(r"/usr/lib/gatewayd/site/gatewayd/native/_native.*\.so$", p) for p in paths)
    assert not any(p.startswith("/usr/lib/gatewayd/site/apsw/sqlite_extra_binaries") for p in paths)  # trimmed
    assert "root/root" in listing.splitlines()[0]
    ctl = subprocess.run(["dpkg-deb", "-f", deb], capture_output=True, text=True, check=True).stdout
    assert "Package: gatewayd" in ctl and "Depends: python3 (>= 3.11), python3 (<< 3.12)" in ctl
    info = subprocess.run(["dpkg-deb", "-I", deb, "conffiles"], capture_output=True, text=True, check=True).stdout
    assert info.strip() == "/etc/gatewayd/gatewayd.toml"
    for script in ("postinst", "prerm", "postrm"):
        body = subprocess.run(["dpkg-deb", "-I", deb, script], capture_output=True, text=True, check=True).stdout
        assert subprocess.run(["sh", "-n"], input=body, text=True).returncode == 0, script
        assert "DPKG_ROOT" in body


@needs_dpkg
def test_install_check_config_remove_keeps_state_purge_removes(deb, tmp_path):
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    (root / "etc").mkdir()
    dpkg = ["dpkg", f"--instdir={root}", f"--admindir={root}/var/lib/dpkg", "--force-script-chrootless",
            "--force-depends", "--force-not-root"]
    r = subprocess.run(dpkg + ["-i", deb], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(dpkg + ["--verify", "gatewayd"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr  # md5sums shipped and matching
    # the installed wrappers run the installed library tree
    # the group gatewayd exists in the instdir's /etc/group, not in this machine's: skip the lookups
    r = subprocess.run([str(root / "usr/bin/gatewayd"), "check-config", "--no-system-checks",
                        str(root / "etc/gatewayd/gatewayd.toml")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)  # a gatewayd/ in the cwd is not used
    r2 = subprocess.run([str(root / "usr/bin/gatewayd"), "version"], capture_output=True, text=True, timeout=60,
                        cwd=ROOT, env={**os.environ, "PYTHONVERBOSE": "1"})
    assert str(root / "usr/lib/gatewayd/site/gatewayd/__init__.py") in r2.stderr, r2.stderr[-2000:]
    assert os.path.join(ROOT, "gatewayd", "__init__.py") not in r2.stderr
    assert r.returncode == 0, r.stderr
    assert "0 driver(s), 0 device(s), 0 point(s), 0 connector(s)" in r.stdout
    # the commented example, uncommented into conf.d: include glob, the packaged Modbus plugin and profiles
    text = (root / "etc/gatewayd/gatewayd.toml").read_text()
    example = [line[2:] for line in text.split("# Example (uncomment and adapt):")[1].splitlines() if line[:2] == "# "]
    (root / "etc/gatewayd/conf.d/plant.toml").write_text("\n".join(example) + "\n")
    r = subprocess.run([str(root / "usr/bin/gatewayd"), "check-config", "--no-system-checks",
                        str(root / "etc/gatewayd/gatewayd.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"1 driver\(s\), 1 device\(s\), [1-9]\d* point\(s\)", r.stdout), r.stdout
    (root / "etc/gatewayd/conf.d/plant.toml").unlink()
    r = subprocess.run([str(root / "usr/bin/gatewayctl"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Control a running gatewayd" in r.stdout
    passwd = (root / "etc/passwd").read_text()
    assert re.search(r"^gatewayd:x:\d+:\d+:.*:/var/lib/gatewayd:/usr/sbin/nologin$", passwd, re.M)
    assert re.search(r"^dialout:x:\d+:.*gatewayd", (root / "etc/group").read_text(), re.M)
    # /etc/gatewayd: root:gatewayd 2770 (service reads it and may rewrite the TOML: discovery accept)
    gid = int(re.search(r"^gatewayd:x:(\d+):", (root / "etc/group").read_text(), re.M).group(1))
    for d in ("etc/gatewayd", "etc/gatewayd/conf.d"):
        st = os.stat(root / d)
        assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == (oct(0o2770), 0, gid), d
    st = os.stat(root / "etc/gatewayd/gatewayd.toml")
    assert (oct(st.st_mode & 0o7777), st.st_gid) == (oct(0o640), gid)
    assert (root / "etc/systemd/system/multi-user.target.wants/gatewayd.service").is_symlink()
    # upgrade (reinstall): the admin's edits to the conffile, the state and the permissions stay
    (root / "var/lib/gatewayd/state.db").write_bytes(b"x")
    conf = root / "etc/gatewayd/gatewayd.toml"
    conf.write_text(conf.read_text() + "# edited by the admin\n")
    r = subprocess.run(dpkg + ["-i", deb], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert conf.read_text().endswith("# edited by the admin\n")
    assert (root / "var/lib/gatewayd/state.db").read_bytes() == b"x"
    assert os.stat(root / "etc/gatewayd").st_mode & 0o7777 == 0o2770
    # state survives remove, not purge
    r = subprocess.run(dpkg + ["-r", "gatewayd"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (root / "var/lib/gatewayd/state.db").exists() and (root / "etc/gatewayd/gatewayd.toml").exists()
    assert not (root / "usr/bin/gatewayd").exists()
    (root / "var/cache/gatewayd/pycache").mkdir(parents=True)  # CacheDirectory= (bytecode)
    r = subprocess.run(dpkg + ["-P", "gatewayd"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not (root / "var/lib/gatewayd").exists() and not (root / "etc/gatewayd").exists()
    assert not (root / "var/cache/gatewayd").exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_exposure_is_ok():
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", UNIT], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for gatewayd.service: ([\d.]+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_verifies_clean_apart_from_the_uninstalled_binaries():
    r = subprocess.run(["systemd-analyze", "verify", UNIT], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()
                  and not re.search(r"Command /usr/bin/gateway(d|ctl) is not executable", line)]
    assert not complaints, complaints  # unknown keys, bad values, ...


def test_unit_has_the_required_settings():
    with open(UNIT) as fh:
        text = fh.read()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=gatewayd",
                 "RuntimeDirectory=gatewayd", "ConfigurationDirectory=gatewayd", "ExecReload=/usr/bin/gatewayctl --timeout 60 config reload",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "MemoryDenyWriteExecute=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                 "DevicePolicy=closed", "SupplementaryGroups=dialout", "CapabilityBoundingSet=\n",
                 "SystemCallFilter=@system-service", "SystemCallArchitectures=native", "UMask=0077", "User=gatewayd"):
        assert line in text, line
    assert not re.search(r"^ExecStartPre", text, re.M)
    assert all(d.startswith("DeviceAllow=char-tty") for d in re.findall(r"^DeviceAllow=.*$", text, re.M))


def test_packaged_default_config_is_valid_and_safe():
    from gatewayd.config import load_config

    # its socket group is created at install (sysusers): not a name this build machine knows
    cfg = load_config(os.path.join(ROOT, "packaging", "debian", "gatewayd.toml"), system_checks=False)
    assert cfg.drivers == {} and cfg.connectors == {}
    assert cfg.control.socket == "/run/gatewayd/control.sock" and cfg.control.socket_mode == 0o660
    assert cfg.gateway.state_dir == "/var/lib/gatewayd"


@needs_dpkg
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (installs, then drops to an unprivileged user)")
def test_installed_package_runs_as_an_unprivileged_user_under_the_unit_sandbox(deb):
    """The packaged tree (wrapper -> Debian's python3 -> /usr/lib/gatewayd/site) with the packaged
    default configuration, started like the unit starts it: as a user without capabilities
    (``nobody`` standing in for ``gatewayd``) under its seccomp filter (see unit_sandbox.py)."""
    import grp
    import pwd
    import signal
    import tempfile

    from unit_sandbox import Notify, running, seccomp_unavailable, tail

    from gatewayd.rpc.client import RpcClient

    if seccomp_unavailable():
        pytest.skip(seccomp_unavailable())
    nobody = pwd.getpwnam("nobody")
    top = tempfile.mkdtemp(prefix="gatewayd-pkg-", dir="/tmp")  # pytest's tmp is 0700: nobody could not enter
    try:
        os.chmod(top, 0o755)
        root = os.path.join(top, "root")
        for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"):
            os.makedirs(os.path.join(root, d))
        open(os.path.join(root, "var/lib/dpkg/status"), "w").close()
        dpkg = ["dpkg", f"--instdir={root}", f"--admindir={root}/var/lib/dpkg", "--force-script-chrootless",
                "--force-depends", "-i", deb]
        r = subprocess.run(dpkg, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        # the packaged configuration, with the state and socket directories systemd would create
        state, run = os.path.join(top, "state"), os.path.join(top, "run")
        for d in (state, run):
            os.makedirs(d, mode=0o750)
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
        with open(os.path.join(root, "etc/gatewayd/gatewayd.toml")) as fh:
            text = fh.read()
        group = grp.getgrgid(nobody.pw_gid).gr_name
        text = (text.replace('"/var/lib/gatewayd/backups"', f'"{state}/backups"')
                .replace('"/var/lib/gatewayd"', f'"{state}"')
                .replace('"/run/gatewayd/control.sock"', f'"{run}/control.sock"')
                .replace('socket_group = "gatewayd"', f'socket_group = "{group}"')
                .replace('"group:gatewayd"', f'"group:{group}"')
                .replace('include = ["conf.d/*.toml"]', ""))
        cfg = os.path.join(top, "gatewayd.toml")
        with open(cfg, "w") as fh:
            fh.write(text)
        os.chmod(cfg, 0o644)
        notify = Notify(os.path.join(top, "notify.sock"))
        os.chmod(notify.path, 0o777)  # the service user must be able to send to it, as to systemd's
        log = os.path.join(top, "daemon.log")
        env = {"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000",
               "PYTHONPYCACHEPREFIX": os.path.join(state, "pycache")}
        cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "unit_sandbox.py"), UNIT, "--user", "nobody",
               "--", os.path.join(root, "usr/bin/gatewayd"), "run", "-c", cfg]
        with running(cmd, env, log, notify) as proc:
            notify.wait("READY=1", proc, log, timeout=60)
            with open(f"/proc/{proc.pid}/status") as fh:
                status = fh.read()
            assert f"Uid:\t{nobody.pw_uid}" in status and "CapEff:\t0000000000000000" in status
            sock = os.path.join(run, "control.sock")
            st = os.stat(sock)
            assert (st.st_mode & 0o777, st.st_gid) == (0o660, nobody.pw_gid)
            with RpcClient(sock) as c:
                assert not c.call("drivers.list")  # the packaged default: no drivers
                b = c.call("backup.run")
            assert b["path"].startswith(f"{state}/backups/") and os.stat(b["path"]).st_uid == nobody.pw_uid
            notify.wait("WATCHDOG=1", proc, log)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, tail(log)
        assert "Traceback" not in tail(log, 1 << 20), tail(log)
    finally:
        shutil.rmtree(top, ignore_errors=True)
