"""docs/plugins.md: its example plugin works as written, and it documents the whole face.

The guide's code blocks that start with ``# file: <name>`` are joined per file name
and written to a temporary directory: the plugin module is loaded by dotted path
and run under the daemon, ``gatewayd check-config`` checks the guide's TOML, and
the guide's own test runs with pytest.
"""

import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from gatewayd import hookspecs
from gatewayd import plugin as face
from gatewayd.testing import rpc, run_gateway, wait_until

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"
FILE_PATH = "/var/tmp/readings.jsonl"  # the connector's path in the guide's TOML


def guide_files() -> dict[str, str]:
    """``{file name: text}`` from the guide's fenced blocks that start with ``# file: <name>``."""
    files: dict[str, str] = {}
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), re.S | re.M):
        m = re.match(r"# file: (\S+)\n", block)
        if m:
            files[m.group(1)] = files.get(m.group(1), "") + block[m.end():] + "\n"
    return files


@pytest.fixture
def guide(tmp_path, monkeypatch):
    files = guide_files()
    assert set(files) >= {"guide_plugin.py", "gatewayd.toml", "test_guide_plugin.py"}
    assert f'path = "{FILE_PATH}"' in files["gatewayd.toml"]
    pkg = tmp_path / "guide"
    pkg.mkdir()
    for name, text in files.items():
        (pkg / name).write_text(text, encoding="utf-8")
    monkeypatch.syspath_prepend(str(pkg))
    sys.modules.pop("guide_plugin", None)
    return pkg, files


async def test_the_guides_plugin_runs_under_the_daemon(tmp_path, guide):
    pkg, files = guide
    out = tmp_path / "readings.jsonl"
    site = files["gatewayd.toml"].replace(FILE_PATH, str(out))
    with trio.fail_after(30):
        async with run_gateway(tmp_path, site) as gw:
            await wait_until(gw, lambda: gw.points.get("office/temp").status == "ok", what="office/temp ok")
            await rpc(gw, "points.write", {"point": "office/setpoint", "value": 25, "priority": 16})
            await wait_until(gw, lambda: gw.points.get("office/temp").value > 24.9, what="temp follows")
            drv = gw.driver_instance("room")
            assert drv.ctx.kv_get("setpoint/office") == 25.0
            conn = gw.connectors["file"].instance
            await wait_until(gw, lambda: conn.sent > 0, what="connector sent")
            assert (await rpc(gw, "connectors.status"))  # the connector's status() is served
    text = out.read_text(encoding="utf-8")
    assert '"office/setpoint"' in text


def test_check_config_accepts_the_guides_configuration(tmp_path, guide):
    pkg, files = guide
    cfg = tmp_path / "gatewayd.toml"
    cfg.write_text(f'[gateway]\nid = "guide"\nstate_dir = "{tmp_path}/var"\n'
                   f'[control]\nsocket = "{tmp_path}/var/g.sock"\n\n' + files["gatewayd.toml"], encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "gatewayd", "check-config", str(cfg)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 driver(s), 1 device(s), 2 point(s), 1 connector(s)" in r.stdout


def test_the_guides_own_test_passes(tmp_path, guide):
    pkg, files = guide
    site = files["gatewayd.toml"]
    (pkg / "conftest.py").write_text(textwrap.dedent(f'''
        import pytest

        @pytest.fixture
        def site(tmp_path):
            return {site!r}.replace({FILE_PATH!r}, str(tmp_path / "readings.jsonl"))
    '''), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "trio_mode=true",
                        str(pkg / "test_guide_plugin.py")], capture_output=True, text=True, env=env, cwd=pkg,
                       timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout


def _documented(name: str, text: str) -> bool:
    return f"`{name}`" in text or re.search(rf"`[^`\n]*\b{re.escape(name)}\b[^`\n]*`", text) is not None


def test_every_face_name_is_documented():
    text = GUIDE.read_text(encoding="utf-8")
    missing = [n for n in face.__all__ if not _documented(n, text)]
    assert missing == [], f"names of gatewayd.plugin.__all__ not documented in docs/plugins.md: {missing}"


def test_every_hook_and_parameter_is_documented():
    text = GUIDE.read_text(encoding="utf-8")
    hooks = [(n, f) for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("gatewayd_")]
    assert hooks
    missing = []
    for name, fn in hooks:
        signature = f"{name}({', '.join(inspect.signature(fn).parameters)})"
        if f"### `{signature}`" not in text:
            missing.append(signature)
    assert missing == [], f"hooks not documented with their parameters in docs/plugins.md: {missing}"


def test_every_context_method_is_documented():
    text = GUIDE.read_text(encoding="utf-8")
    names = {n for cls in (face.DriverContext, face.ConnectorContext) for n in dir(cls) if not n.startswith("_")}
    names |= {"id", "log", "gateway", "config", "sink"}  # instance attributes
    missing = sorted(n for n in names if not re.search(rf"ctx\.{n}\b", text))
    assert missing == [], f"context methods/attributes not documented in docs/plugins.md: {missing}"
