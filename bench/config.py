"""Config check time and memory: a valid big file against the same file with a syntax
error at its end (issue 12 item 20: the error used to cost ~51 s and ~304 MB on 5 MB,
because the file was parsed a second time by tomlkit just for its message).

Each case runs ``gatewayd check-config`` in a fresh process and prints wall time and
peak RSS (ru_maxrss of the child); then an in-process reload of the broken file
prints the Python heap before and after (tracemalloc) to show nothing stays held.

    python bench/config.py [MB]        (default 5)

Measured on 2 shared x86-64 cores (5.0 MB, ~43,000 points): valid 6.9 s / peak
RSS 210 MB; syntax error at the end 7.5 s / 147 MB (before: ~51 s / 304 MB);
Python heap held after the refused in-process reload: 0.0 MB.
"""

import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MB = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0


def big_site(mb: float) -> str:
    """A sim site of about ``mb`` megabytes: devices of 20 points with a few keys each."""
    out = ['[gateway]\nid = "bench"\nstate_dir = "var"\n\n[drivers.sim]\ntype = "sim"\ninterval = "1s"\n']
    size, i = 0, 0
    while size < mb * 1e6:
        dev = [f'\n# device {i}\n[drivers.sim.devices.d{i}]\nmodel = "meter"\n']
        for j in range(20):
            dev.append(f'[drivers.sim.devices.d{i}.points.p{j}]\nsignal = "sine"\nunit = "kW"\n'
                       f'description = "point {j} of device {i}"\ncov_deadband = 0.5\ntags = ["bench", "p{j}"]\n')
        block = "".join(dev)
        out.append(block)
        size += len(block)
        i += 1
    return "".join(out)


def run_check(path: str) -> tuple[float, float, int, str]:
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([sys.executable, "-m", "gatewayd", "check-config", path], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children so far (KiB)
    return wall, max(peak, before) / 1024, r.returncode, (r.stdout.strip().splitlines() or [""])[-1][:110]


def reload_heap(good: str, bad: str) -> None:
    import tracemalloc

    import trio

    from gatewayd.testing import run_gateway

    async def main(tmp):
        async with run_gateway(tmp, "") as gw:
            with open(good) as fh:
                gw.config.path  # noqa: B018 - the running file is replaced below
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            with open(gw.config.path, "w") as fh, open(bad) as src:
                fh.write(src.read())
            res = await gw.reload("bench")
            import gc

            gc.collect()
            now, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"in-process reload of the broken file: ok={res['ok']}, Python heap peak {peak / 1e6:.0f} MB, "
                  f"held after {max(0, now - base) / 1e6:.1f} MB")

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, tmp)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        good = os.path.join(d, "good.toml")
        bad = os.path.join(d, "bad.toml")
        text = big_site(MB)
        with open(good, "w") as fh:
            fh.write(text)
        with open(bad, "w") as fh:
            fh.write(text + '\n[drivers.sim.devices.last]\nmodel = "meter\n')  # unterminated string at the end
        print(f"site: {os.path.getsize(good) / 1e6:.1f} MB, {text.count('.points.')} points")
        # fresh processes: peak RSS of each is only comparable run by run, so the bad file goes first
        for name, path in (("syntax error at the end", bad), ("valid", good)):
            wall, peak, rc, last = run_check(path)
            print(f"check-config {name:24s} {wall:6.2f} s  peak RSS (max so far) {peak:6.0f} MB  exit {rc}  {last}")
        reload_heap(good, bad)


if __name__ == "__main__":
    main()
