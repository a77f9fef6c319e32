"""Networks of the ``bacnet`` driver: opening one bacpypes3 stack per network (with a clear
error when its address cannot be bound), and the unsolicited traffic they bring (I-Am,
COV notifications, foreign-device registration results)."""

from __future__ import annotations

import time
from functools import partial

import trio

from .config import DEFAULT_PORT
from .stack import BacnetError, Stack

def _interface_address(name: str) -> str:
    import fcntl
    import socket
    import struct

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
        addr = socket.inet_ntoa(packed[20:24])
        mask = fcntl.ioctl(s.fileno(), 0x891B, struct.pack("256s", name.encode()[:15]))  # SIOCGIFNETMASK
        prefix = bin(struct.unpack("!I", mask[20:24])[0]).count("1")
    except OSError as e:
        raise RuntimeError(f"interface {name!r}: {e.strerror}") from None
    finally:
        s.close()
    return f"{addr}/{prefix}"



class NetworkMixin:
    """Opens the networks and handles what arrives unasked; part of :class:`~.driver.BacnetDriver`."""

    def _local_address(self, name: str, n: dict) -> str:
        addr = n.get("address")
        if n["mode"] == "ipv6":
            if addr.startswith("["):
                return addr if "]:" in addr else f"{addr}:{n['port']}"
            return f"[{addr.split('/')[0]}]:{n['port']}"
        if not addr:
            addr = _interface_address(n["interface"])
        if ":" in addr.split("/")[-1]:
            return addr
        port = n["port"]
        return f"{addr}:{port}"

    async def _open_network(self, name: str, n: dict, send) -> None:
        s = self.config.settings
        addr = self._local_address(name, n)
        bbmd = n.get("bbmd_addr")
        if bbmd and ":" not in bbmd:
            bbmd = f"{bbmd}:{DEFAULT_PORT}"
        if n["mode"] != "ipv6" and n["port"] != 0:
            # bacpypes3 retries a failed bind forever (SO_REUSEPORT): try the address ourselves first,
            # without SO_REUSEPORT, so a port held by anyone else is a clear start error at once
            from .bindcheck import probe_bind

            host = addr.rsplit(":", 1)[0].split("/")[0]
            problem = await trio.to_thread.run_sync(probe_bind, host, int(addr.rsplit(":", 1)[1]))
            if problem:
                raise RuntimeError(f"network {name}: {problem}")
        try:
            stack = await self.aio.run_sync(partial(
                Stack, name, n["mode"], addr, s["server_device_instance"], s["server_device_name"],
                int(s["apdu_timeout"] * 1000), s["apdu_retries"], send, bbmd=bbmd, ttl=n["ttl"],
                renew=n["reregister_at"], vmac=n.get("vmac"), peers=n.get("peers"), routes=n.get("routes")))
        except BacnetError as e:
            raise RuntimeError(f"network {name}: {e.reason}") from None
        self.stacks[name] = stack
        failure = None
        with trio.move_on_after(10) as cs:
            try:
                await self.aio.run(stack.ready)
            except OSError as e:
                failure = e
        if cs.cancelled_caught or failure is not None:
            await self.aio.run_sync(stack.close)
            del self.stacks[name]
            raise RuntimeError(f"network {name}: {await self._bind_problem(n, addr, failure)}") from None
        self.net_status[name] = {"mode": n["mode"], "address": addr, "registration": None}
        if n["mode"] == "ipv6":
            self.net_status[name]["vmac"] = stack.vmac
        if n["mode"] == "foreign":
            self.net_status[name].update(bbmd=bbmd, ttl=n["ttl"], registration="pending")
        self.log.info("network %s: %s on %s%s", name, n["mode"], addr, f" (BBMD {bbmd})" if bbmd else "")

    async def _bind_problem(self, n: dict, addr: str, failure: OSError | None) -> str:
        """Why the network's socket did not bind: the address, and who holds the port when the OS says."""
        from .bindcheck import probe_bind

        host = addr.rsplit(":", 1)[0].split("/")[0].strip("[]").split("%")[0]
        port = int(addr.rsplit(":", 1)[1])
        try:
            msg = await trio.to_thread.run_sync(probe_bind, host, port)
        except (OSError, ValueError):
            msg = None
        if msg:
            return msg
        why = f"{failure.strerror or failure}" if failure is not None else "no answer from the socket within 10s"
        return f"cannot bind UDP {addr} ({why}; address not on this host, or in use)"

    async def _pump(self, inbox):
        async for item in inbox:
            kind = item[0]
            try:
                if kind == "i-am":
                    await self._on_iam(*item[1:])
                elif kind == "cov":
                    self._on_cov(*item[1:])
                elif kind == "fd":
                    self._on_fd(item[1], item[2])
                for fn in list(self.listeners):
                    fn(item)
            except Exception:  # one bad notification must not stop the pump
                self.log.error("handling %s failed", kind, exc_info=True)

    async def _on_iam(self, net, inst, address, max_apdu, seg, vendor):
        self.stats["i_ams"] += 1
        now = trio.current_time()
        key = (net, inst)
        known = key in self.seen
        self.seen[key] = {"network": net, "device_instance": inst, "address": address, "max_apdu": max_apdu,
                          "segmentation": seg, "vendor_id": vendor, "seen": time.time()}
        d = self.by_inst.get(key)
        if d is not None:
            d.last_iam = now
            if d.address is None or d.cfg.settings.get("address") is None:
                d.address = address
            if d.cfg.settings.get("max_apdu") is None:
                d.max_apdu = max_apdu
            if d.cfg.settings.get("segmentation") is None:
                d.segmentation = seg
            d.iam_event.set()
            d.iam_event = trio.Event()
            d.resolved.set()
            return
        if not known:
            self.new_since_cycle.add(key)
            dkey = f"{net}:{inst}"
            try:
                rows = self.ctx.gateway.state.discovery_list(driver=self.ctx.id)
            except Exception:
                rows = []
            if not any(r["key"] == dkey for r in rows):
                await self.ctx.report_discovery(dkey, {**self.seen[key], "passive": True})

    def _on_fd(self, net, status):
        st = self.net_status.get(net)
        if st is None:
            return
        if status == 0:
            if st.get("registration") != "registered":
                self.log.info("network %s: registered with BBMD %s (ttl %ss)", net, st.get("bbmd"), st.get("ttl"))
            st["registration"] = "registered"
            st["registered_at"] = time.time()
            st["registrations"] = st.get("registrations", 0) + 1
            st.pop("registration_error", None)
        else:
            reason = "expired" if status == "expired" else f"refused by the BBMD (result code {status:#06x})"
            st["registration"] = "failed"
            st["registration_error"] = reason
            self.log.error("network %s: foreign-device registration %s", net, reason)
            self.ctx.emit("ForeignRegistrationFailed", None, network=net, bbmd=st.get("bbmd"), reason=reason)
        self._bump()

    async def _watch_registration(self, net):
        """Report a BBMD that never answers (bacpypes3 keeps retrying by itself)."""
        st = self.net_status[net]
        limit = max(5.0, 2 * self.config.settings["apdu_timeout"])
        await trio.sleep(limit)
        if st.get("registration") == "pending":
            st["registration"] = "failed"
            st["registration_error"] = f"no answer from BBMD {st.get('bbmd')} within {limit:g}s (still trying)"
            self.log.error("network %s: %s", net, st["registration_error"])
            self.ctx.emit("ForeignRegistrationFailed", None, network=net, bbmd=st.get("bbmd"),
                          reason=st["registration_error"])
