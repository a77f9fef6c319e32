"""Every way a config file can be broken ends as ``file:line:col: message`` (never a traceback).

Syntax errors of both TOML libraries (tomllib reads the config; tomlkit is what
plugins and edits use), encoding problems, validator surprises, and the weak
messages of issue 12 item 21. Runs ``gatewayd check-config`` as a process where
the output matters.
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest
import tomlkit
import tomlkit.exceptions

from gatewayd.config import ConfigError, Problem, load_config

LINE_RE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


def check_config(path):
    """``gatewayd check-config PATH`` as a process, run from the file's directory."""
    return subprocess.run([sys.executable, "-m", "gatewayd", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=os.path.dirname(path))


def problems_of(tmp_path, data: bytes | str, name="gw.toml"):
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(ConfigError) as ei:
        load_config(str(p))
    return [(pr.line, pr.col, pr.message) for pr in ei.value.problems]


# --------------------------------------------------------------------------- tomllib (what reads the config)

TOMLLIB_CASES = [
    # id, text, (line, col), message pattern
    ("duplicate-key", '[gateway]\nid = "a"\nid = "b"\n', (3, 1), r"key 'gateway\.id' is defined twice \(first defined at line 2\)"),
    ("duplicate-table", '[gateway]\nid = "a"\n\n[gateway]\nid = "b"\n', (4, 1), r"table \[gateway\] is defined twice \(first defined at line 1\)"),
    ("value-then-table", 'plugins = []\n[plugins]\nx = 1\n', (2, 1), r"table \[plugins\] is defined twice \(first defined at line 1\)"),
    ("unterminated-string", '[gateway]\nid = "abc\n', (2, 6), r"unterminated string: the quote opened here is not closed on this line"),
    ("unterminated-literal", "[gateway]\nid = 'abc\n", (2, 6), r"unterminated string"),
    ("unterminated-multiline", '[gateway]\nid = "x"\n[drivers.s]\ntype = """sim\n\n', (4, 8), r'unterminated multi-line string'),
    ("header", '[gateway\nid = "x"\n', (1, 9), r"TOML syntax error: Expected '\]' at the end of a table declaration"),
    ("bare-word-value", '[drivers.s]\ntype = sim\n', (2, 8), r'invalid value \(text values need quotes: "sim"\)'),
    ("missing-value", '[gateway]\nid =\n', (2, 5), r"invalid value \(nothing after '='\)"),
    ("bad-number", '[history]\nbatch_size = 1_\n', (2, 15), r"TOML syntax error: Expected newline"),
    ("unclosed-array", '[control]\nadmin = ["uid:0"\n', (3, 1), r"TOML syntax error: Unclosed array"),
    ("unclosed-inline", '[gateway]\nx = {a = 1\n', (2, 11), r"TOML syntax error: Unclosed inline table"),
    ("no-equals", '[gateway]\nid "a"\n', (2, 4), r"TOML syntax error: Expected '='"),
    ("duplicate-inline-key", 'x = {a = 1, a = 2}\n', (1, 1), r"key 'x\.a' is defined twice"),
    ("bad-escape", '[gateway]\nid = "a\\qb"\n', (2, 10), r"TOML syntax error: Unescaped"),
    ("control-char", '[gateway]\nid = "a\x01b"\n', (2, 8), r"TOML syntax error: Illegal character"),
]


@pytest.mark.parametrize("case", TOMLLIB_CASES, ids=[c[0] for c in TOMLLIB_CASES])
def test_tomllib_errors_are_file_line_col_with_actionable_text(tmp_path, case):
    _, text, (line, col), pattern = case
    (got,) = problems_of(tmp_path, text)
    assert got[:2] == (line, col), got
    assert re.search(pattern, got[2]), got


def test_duplicate_key_in_check_config_is_one_line_not_a_traceback(tmp_path):
    # the reported case: [gateway] with name twice made tomlkit raise KeyAlreadyPresent, uncaught
    p = tmp_path / "gw.toml"
    p.write_text('[gateway]\nid = "plant"\nstate_dir = "var"\nid = "plant-2"\n')
    r = check_config(p)
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    assert r.stdout == "gw.toml:4:1: key 'gateway.id' is defined twice (first defined at line 2)\n"


# --------------------------------------------------------------------------- tomlkit (plugins, edits)

TOMLKIT_CASES = [
    ("UnexpectedCharError", '[a\nb = 1\n', tomlkit.exceptions.UnexpectedCharError, (1, 3)),
    ("EmptyKeyError", 'x = 1\n = 1\n', tomlkit.exceptions.EmptyKeyError, (2, 2)),
    ("EmptyTableNameError", '[]\n', tomlkit.exceptions.EmptyTableNameError, (1, 2)),
    ("InvalidNumberError", 'a = 1__2\n', tomlkit.exceptions.InvalidNumberError, (1, 9)),
    ("InvalidDateTimeError", 'a = 1979-05-27T25:32:00Z\n', tomlkit.exceptions.InvalidDateTimeError, (1, 25)),
    ("InvalidDateError", 'a = 1979-13-27\n', tomlkit.exceptions.InvalidDateError, (1, 15)),
    ("InvalidTimeError", 'a = 25:32:00\n', tomlkit.exceptions.InvalidTimeError, (1, 13)),
    ("InvalidUnicodeValueError", 'a = "\\uD800"\n', tomlkit.exceptions.InvalidUnicodeValueError, (1, 7)),
    ("InvalidControlChar", 'a = "\x7f"\n', tomlkit.exceptions.InvalidControlChar, (1, 6)),
    ("UnexpectedEof", 'a = [1,\n', tomlkit.exceptions.ParseError, (1, 1)),
    ("ParseError-duplicate", 'a = 1\na = 2\n', tomlkit.exceptions.ParseError, (2, 1)),
    ("KeyAlreadyPresent", '[gateway]\nid = "a"\nid = "b"\n', tomlkit.exceptions.KeyAlreadyPresent, (3, 1)),
]


@pytest.mark.parametrize("case", TOMLKIT_CASES, ids=[c[0] for c in TOMLKIT_CASES])
def test_tomlkit_errors_are_file_line_col(case):
    from gatewayd.config import toml_problem

    _, text, cls, (line, col) = case
    with pytest.raises(tomlkit.exceptions.TOMLKitError) as ei:
        tomlkit.parse(text)
    assert isinstance(ei.value, cls)
    pr = toml_problem(ei.value, "site.toml", text)
    assert isinstance(pr, Problem) and (pr.file, pr.line, pr.col) == ("site.toml", line, col), pr
    assert LINE_RE.match(str(pr)) and "Traceback" not in pr.message
    if "Already" in case[0] or "duplicate" in case[0]:
        assert "defined twice" in pr.message


def test_tomlkit_errors_without_a_position_still_name_the_file():
    from gatewayd.config import toml_problem

    for exc in (tomlkit.exceptions.NonExistentKey("k"), tomlkit.exceptions.ConvertError("no"),
                tomlkit.exceptions.MixedArrayTypesError(1, 2), tomlkit.exceptions.InternalParserError(3, 4, "x")):
        pr = toml_problem(exc, "site.toml", "a = 1\n")
        assert pr.file == "site.toml" and pr.line >= 1 and pr.col >= 1 and pr.message


# --------------------------------------------------------------------------- encoding and empty files (12.21)

def test_byte_order_mark_is_named(tmp_path):
    (tmp_path / "bom.toml").write_bytes(b'\xef\xbb\xbf[gateway]\nid = "a"\n')
    r = check_config(tmp_path / "bom.toml")
    assert r.returncode == 2
    assert r.stdout == ("bom.toml:1:1: the file starts with a byte-order mark (BOM), which TOML does not allow: "
                        "save it as UTF-8 without BOM (e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' bom.toml)\n")


def test_non_utf8_byte_is_located(tmp_path):
    got = problems_of(tmp_path, '[gateway]\nid = "caf'.encode() + b"\xe9" + b'"\n')
    assert got == [(2, 10, "the file is not valid UTF-8 (byte 0xe9 at line 2, column 10): save it as UTF-8 "
                           "(e.g. iconv -f latin1 -t utf-8)")]


def test_empty_file_and_include_matching_nothing_warn(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    r = check_config(tmp_path / "empty.toml")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == "warning: empty.toml:1:1: the file is empty (no settings): defaults apply"
    (tmp_path / "inc.toml").write_text('include = ["conf.d/*.toml"]\n[gateway]\nid = "a"\n')
    r = check_config(tmp_path / "inc.toml")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].startswith("warning: inc.toml:1:1: include 'conf.d/*.toml' matches no file")


def test_include_errors_are_reported_in_the_included_file(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.toml").write_text('# site part\n[drivers.s.devices.m]\nmodel = "meter"\n')
    (tmp_path / "gw.toml").write_text('include = ["conf.d/*.toml"]\n[drivers.s]\ntype = "sim"\n'
                                      '[drivers.s.devices.m]\nmodel = "ahu"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(str(tmp_path / "gw.toml"))
    (pr,) = ei.value.problems
    assert (os.path.basename(pr.file), pr.line, pr.col) == ("a.toml", 2, 1), pr
    assert pr.message.startswith("drivers.s is already defined at ")
    (tmp_path / "conf.d" / "a.toml").write_text('[drivers.t]\ntype = "sim"\nbad = = 1\n')
    with pytest.raises(ConfigError) as ei:
        load_config(str(tmp_path / "gw.toml"))
    (pr,) = ei.value.problems
    assert (os.path.basename(pr.file), pr.line) == ("a.toml", 3), pr


# --------------------------------------------------------------------------- validator surprises (11.15)

def test_enabled_yes_is_a_problem_not_a_keyerror(tmp_path):
    got = problems_of(tmp_path, '[drivers.s]\ntype = "sim"\nenabled = "yes"\n'
                                '[drivers.s.devices.d]\nmodel = "meter"\nenabled = "no"\n')
    assert got == [(3, 1, "drivers.s.enabled must be true or false, not a string"),
                   (6, 1, "drivers.s.devices.d.enabled must be true or false, not a string")]
    (tmp_path / "c.toml").write_text('[connectors.m]\ntype = "mqtt"\nenabled = 1\n')
    r = check_config(tmp_path / "c.toml")
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    assert "c.toml:3:1: connectors.m.enabled must be true or false, not an integer" in r.stdout


def test_a_plugin_validator_raising_is_reported_at_its_key(tmp_path):
    (tmp_path / "surprise_plugin.py").write_text(textwrap.dedent('''
        from gatewayd.config import Validator
        from gatewayd.plugin import Driver, Key, Schema, Str, hookimpl

        class Picky(Validator):
            label = "a picky value"
            def convert(self, value, path, ctx):
                return {"a": 1}[value]          # KeyError for anything but "a"

        def check(d, err):
            d["mode"].upper()                    # TypeError/AttributeError when mode is not a str

        class SurpriseDriver(Driver):
            settings_schema = Schema({"picky": Key(Picky(), "a"), "mode": Key(Str(), "x")}, check=check)
            device_schema = Schema({"n": Key(Str(), "x")})

            @classmethod
            def validate_config(cls, cfg):
                raise TypeError("validate_config blew up")

            @classmethod
            def expand_points(cls, did, devid, settings):
                raise KeyError("mode")

            async def run(self, *, task_status):
                task_status.started()

        @hookimpl
        def gatewayd_register(registry):
            registry.add_driver("surprise", SurpriseDriver)
        '''))
    sys.path.insert(0, str(tmp_path))
    try:
        got = problems_of(tmp_path, '[drivers.x]\ntype = "surprise"\nplugin = "surprise_plugin"\npicky = "b"\n'
                                    '[drivers.x.devices.d]\nn = "y"\n')
    finally:
        sys.path.remove(str(tmp_path))
    msgs = {(line, m.split(" (")[0]) for line, _c, m in got}
    assert (4, "drivers.x.picky: 'b' cannot be checked as a picky value") in msgs
    assert (5, "drivers.x.devices.d: cannot check this table") in msgs          # expand_points raised
    assert (1, "drivers.x: cannot check this table") in msgs                    # validate_config raised
    assert all("KeyError" in m or "TypeError" in m for _l, _c, m in got)


def test_relinquish_default_must_fit_the_point_kind(tmp_path):
    got = problems_of(tmp_path, '[drivers.s]\ntype = "sim"\n[drivers.s.devices.d]\nmodel = "ahu"\n'
                                '[drivers.s.devices.d.points.sp]\nsignal = "setpoint"\nwritable = true\n'
                                'relinquish_default = "eighteen"\n'
                                '[drivers.s.devices.d.points.fan]\nkind = "binary"\nsignal = "toggle"\n'
                                'relinquish_default = 3\n')
    assert got == [(8, 1, "drivers.s.devices.d.points.sp.relinquish_default: an analog point takes a finite "
                          "number, not 'eighteen'"),
                   (12, 1, "drivers.s.devices.d.points.fan.relinquish_default: a binary point takes true/false "
                           "(or 0/1, on/off), not 3")]


def test_a_point_under_an_undefined_device_is_refused(tmp_path):
    got = problems_of(tmp_path, '[drivers.s]\ntype = "sim"\n[drivers.s.devices.meter-1]\nmodel = "meter"\n'
                                '[drivers.s.devices.meter-l.points.extra]\nsignal = "sine"\n')
    assert got == [(5, 1, "point 'extra' is under device 'meter-l', which is not defined: add a "
                          "[drivers.s.devices.meter-l] table with the device's settings, or fix the device id "
                          "(did you mean 'meter-1'?)")]


def test_a_table_declared_only_through_its_children_is_reported_at_the_first_child(tmp_path):
    # [[drivers.b.networks]] (an array of tables) where a table of named networks is expected
    got = problems_of(tmp_path, '[drivers.b]\ntype = "bacnet"\nserver_device_instance = 10\n\n'
                                '[[drivers.b.networks]]\nmode = "mstp"\n')
    assert (5, 1, "drivers.b.networks must be a table, not an array") in got
    assert all(line != 1 or "networks" not in m for line, _c, m in got)
