"""A test SMSC: the `smpp34` package's Server (a Rust SMPP implementation, independent of the
smpplib codec the gateway uses) in a subprocess, driven over a small HTTP control port.

Run as a script (`python tests/smsc_peer.py --port P --control-port C`), it prints
`READY <smpp port> <control port>` when it listens. Control endpoints (JSON):

    POST /config     {"throttle_every": N, "reject_status": S, "hold": bool, "dlr": "tlv" |
                      "text" | "text_decimal" | "none", "dlr_stat": "DELIVRD", "max_tps": R,
                      "reject_dest": "<addr>"}
    POST /mo         {"source", "dest", "hex" | "text", "data_coding", "esm_class",
                      "tlvs": [[tag, hex]], "repeat": N}  -> {"statuses": [...]}
    POST /flood      {"count", "rate" (MO/s, 0 = as fast as the window allows), "window",
                      "source_prefix", "text_prefix"}: MOs from distinct numbers, for benchmarks
    GET  /flood      {"sent", "acked", "first_mo", "last_mo", "mt", "first_mt", "last_mt",
                      "throttled"} (monotonic seconds in the SMSC process)
    POST /release    answer every held submit_sm (accept)
    POST /unbind     the SMSC unbinds every session
    GET  /submits    every submit_sm seen, in order, with its answer
    GET  /sessions   {"bound": n}

`SmscPeer` (below) starts, kills and restarts that process from a test or a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

READY_TIMEOUT_S = 20.0
PORT_ATTEMPTS = 5


class PortTaken(AssertionError):
    """The test SMSC could not bind its port: someone took it after `_free_port` chose it."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SmscPeer:
    """The test SMSC process: start, control, kill, restart on the same port."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self._chosen_port = port is None
        self.port = port or _free_port()
        self.control_port = _free_port()
        self.account = f"gw{secrets.token_hex(4)}"  # a system_id no other test SMSC shares
        self.log_path = log_dir / f"smsc-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    async def start(self) -> None:
        """Start the process and wait until it answers. A free port found by `_free_port` is
        only free until someone else binds it (other tests, another test run on the machine):
        a process that exits at once while a port of our choosing was taken meanwhile is
        started again on new ports."""
        for attempt in range(PORT_ATTEMPTS):
            try:
                await self._start_once()
                return
            except PortTaken:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                if self._chosen_port:
                    self.port = _free_port()
                self.control_port = _free_port()

    async def _start_once(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - a short spawn
            [
                sys.executable,
                __file__,
                "--port",
                str(self.port),
                "--control-port",
                str(self.control_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log_path.read_text()
                if "Address already in use" in text.rsplit("READY", 1)[-1]:
                    raise PortTaken(text)
                raise AssertionError(text)
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get(f"{self.url}/sessions") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise AssertionError(f"test SMSC not ready: {self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: the SMSC vanishes without an unbind, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    async def restart(self) -> None:
        self.kill()
        await self.start()

    async def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self._http is not None
        async with self._http.request(method, f"{self.url}{path}", json=body) as resp:
            data = await resp.json()
            assert resp.status == 200, data
            return data

    async def configure(self, **options: Any) -> None:
        await self._call("POST", "/config", options)

    async def mo(self, **fields: Any) -> list[int]:
        result = await self._call("POST", "/mo", fields)
        return list(result["statuses"])

    async def submits(self) -> list[dict[str, Any]]:
        return list(await self._call("GET", "/submits"))

    async def bound(self) -> int:
        return int((await self._call("GET", "/sessions"))["bound"])

    async def release(self) -> None:
        await self._call("POST", "/release")

    async def unbind_all(self) -> None:
        await self._call("POST", "/unbind")

    async def flood(self, **options: Any) -> None:
        await self._call("POST", "/flood", options)

    async def flood_stats(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/flood"))


@contextlib.asynccontextmanager
async def running_peer(log_dir: Path) -> AsyncIterator[SmscPeer]:
    peer = SmscPeer(log_dir)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.close()


# --- the SMSC process ------------------------------------------------------------------------


class _Smsc:
    def __init__(self, smpp34: Any) -> None:
        self.m = smpp34
        self.sessions: dict[str, Any] = {}
        self.config: dict[str, Any] = {"dlr": "none", "dlr_stat": "DELIVRD"}
        self.submits: list[dict[str, Any]] = []
        self.held: list[tuple[Any, dict[str, Any]]] = []
        self.counter = 0
        self.window_start = time.monotonic()
        self.window_count = 0
        self.flood: dict[str, Any] = {}

    def _over_tps(self) -> bool:
        max_tps = self.config.get("max_tps")
        if not max_tps:
            return False
        now = time.monotonic()
        if now - self.window_start >= 1.0:
            self.window_start, self.window_count = now, 0
        self.window_count += 1
        # A little slack over the limit: loopback jitter bunches submits at second edges.
        return bool(self.window_count > max_tps * 1.1 + 2)

    def _flood_submit(self, event: Any, throttled: bool) -> None:
        flood = self.flood
        if not flood or not event.destination_addr.startswith(flood["source_prefix"]):
            return
        now = time.monotonic()
        if throttled:
            flood["throttled"] += 1
            return
        flood["mt"] += 1
        flood["first_mt"] = flood["first_mt"] or now
        flood["last_mt"] = now

    def on_submit(self, event: Any) -> None:
        self.counter += 1
        record = {
            "n": self.counter,
            "session": event.session_id,
            "source": event.source_addr,
            "dest": event.destination_addr,
            "esm_class": event.esm_class,
            "data_coding": event.data_coding,
            "registered_delivery": event.registered_delivery,
            "hex": bytes(event.short_message).hex(),
            "at": time.time(),
        }
        every = self.config.get("throttle_every")
        if (every and self.counter % int(every) == 0) or self._over_tps():
            record["status"] = int(self.m.ESME_RTHROTTLED)
            event.reject(self.m.ESME_RTHROTTLED)
            self._flood_submit(event, throttled=True)
        elif self.config.get("reject_dest") == event.destination_addr:
            record["status"] = int(self.config.get("reject_status") or self.m.ESME_RINVDSTADR)
            event.reject(record["status"])
        elif self.config.get("hold"):
            self.held.append((event, record))
            return
        else:
            self._accept(event, record)
            self._flood_submit(event, throttled=False)
        if not self.flood.get("quiet"):
            self.submits.append(record)

    def _accept(self, event: Any, record: dict[str, Any]) -> None:
        message_id = f"{record['n']:08X}"
        record["message_id"] = message_id
        record["status"] = 0
        event.accept(message_id)
        if self.config.get("dlr", "none") != "none" and record["registered_delivery"]:
            asyncio.get_running_loop().create_task(self._receipt(record))

    async def _receipt(self, record: dict[str, Any]) -> None:
        # Receipts go back over the submitting session, or a receiver of the same account
        # when that one is a transmitter.
        session = self.sessions.get(record["session"])
        if session is None or not session.can_receive:
            account = session.system_id if session is not None else None
            session = next(
                (
                    s
                    for s in self.sessions.values()
                    if s.can_receive and (account is None or s.system_id == account)
                ),
                None,
            )
        if session is None:
            return
        mode, stat = self.config["dlr"], self.config.get("dlr_stat", "DELIVRD")
        mid = record["message_id"]
        text_id = str(int(mid, 16)) if mode == "text_decimal" else mid
        text = (
            f"id:{text_id} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
            f"submit date:2401011200 done date:2401011201 stat:{stat} err:000 text:"
        )
        tlvs = []
        if mode == "tlv":
            tlvs.append(self.m.Tlv(self.m.TLV_RECEIPTED_MESSAGE_ID, mid.encode() + b"\x00"))
        with contextlib.suppress(Exception):
            await session.deliver_sm(
                record["source"],
                text.encode(),
                source_addr=record["dest"],
                esm_class=0x04,
                tlvs=tlvs,
            )

    async def run_flood(self, body: dict[str, Any]) -> None:
        count, rate = int(body["count"]), float(body.get("rate", 0))
        window = asyncio.Semaphore(int(body.get("window", 10)))
        prefix, text = str(body["source_prefix"]), str(body.get("text_prefix", "PING"))
        flood = self.flood = {
            "source_prefix": prefix,
            "quiet": True,
            "sent": 0,
            "acked": 0,
            "first_mo": None,
            "last_mo": None,
            "mt": 0,
            "first_mt": None,
            "last_mt": None,
            "throttled": 0,
        }
        session = next(s for s in self.sessions.values() if s.can_receive)
        start = time.monotonic()

        async def one(i: int) -> None:
            try:
                await session.deliver_sm(
                    "12345",
                    f"{text} {i}".encode(),
                    source_addr=f"{prefix}{i:06d}",
                    source_addr_ton=1,
                )
                flood["acked"] += 1
            finally:
                window.release()

        tasks = []
        for i in range(count):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await window.acquire()
            now = time.monotonic()
            flood["first_mo"] = flood["first_mo"] or now
            flood["last_mo"] = now
            flood["sent"] += 1
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks, return_exceptions=True)

    async def deliver(self, body: dict[str, Any]) -> list[int]:
        data = bytes.fromhex(body["hex"]) if "hex" in body else body["text"].encode("latin-1")
        tlvs = [self.m.Tlv(int(tag), bytes.fromhex(value)) for tag, value in body.get("tlvs", [])]
        statuses = []
        for _ in range(int(body.get("repeat", 1))):
            for key, session in list(self.sessions.items()):
                if not session.can_receive:
                    continue
                try:
                    resp = await self._deliver_one(session, body, data, tlvs)
                except Exception:
                    self.sessions.pop(key, None)  # a session that just went away
                    continue
                statuses.append(int(resp.command_status))
                break
        return statuses

    async def _deliver_one(
        self, session: Any, body: dict[str, Any], data: bytes, tlvs: list[Any]
    ) -> Any:
        return await session.deliver_sm(
            body.get("dest", "12345"),
            data,
            source_addr=body.get("source", "254700000001"),
            source_addr_ton=int(body.get("source_ton", 1)),
            esm_class=int(body.get("esm_class", 0)),
            data_coding=int(body.get("data_coding", 0)),
            tlvs=tlvs,
        )


async def _serve(port: int, control_port: int) -> None:
    import smpp34
    from aiohttp import web

    smsc = _Smsc(smpp34)
    server = smpp34.Server("127.0.0.1", port, system_id="testsmsc")
    await server.start()

    async def events() -> None:
        while True:
            event = await server.next()
            if isinstance(event, smpp34.SubmitSmEvent):
                smsc.on_submit(event)
            elif isinstance(event, smpp34.Unbound):
                smsc.sessions.pop(event.session_id, None)
            else:
                smsc.sessions[event.session_id] = event

    async def config(request: web.Request) -> web.Response:
        smsc.config.update(await request.json())
        return web.json_response(smsc.config)

    async def mo(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("nowait"):
            # smpp34 1.5.0 never reads the deliver_sm_resp of a receiver-only session, so its
            # deliver_sm would not return: send and answer at once.
            asyncio.get_running_loop().create_task(smsc.deliver(body))
            return web.json_response({"statuses": []})
        return web.json_response({"statuses": await smsc.deliver(body)})

    async def flood(request: web.Request) -> web.Response:
        body = await request.json()
        asyncio.get_running_loop().create_task(smsc.run_flood(body))
        return web.json_response({"started": True})

    async def flood_stats(request: web.Request) -> web.Response:
        return web.json_response({k: v for k, v in smsc.flood.items() if k != "quiet"})

    async def release(request: web.Request) -> web.Response:
        held, smsc.held = smsc.held, []
        smsc.config["hold"] = False
        for event, record in held:
            smsc._accept(event, record)
            smsc.submits.append(record)
        return web.json_response({"released": len(held)})

    async def unbind(request: web.Request) -> web.Response:
        for session in list(smsc.sessions.values()):
            with contextlib.suppress(Exception):
                await session.unbind()
        return web.json_response({"ok": True})

    async def submits(request: web.Request) -> web.Response:
        return web.json_response(smsc.submits)

    async def sessions(request: web.Request) -> web.Response:
        return web.json_response({"bound": len(smsc.sessions)})

    app = web.Application()
    app.router.add_post("/config", config)
    app.router.add_post("/mo", mo)
    app.router.add_post("/release", release)
    app.router.add_post("/flood", flood)
    app.router.add_get("/flood", flood_stats)
    app.router.add_post("/unbind", unbind)
    app.router.add_get("/submits", submits)
    app.router.add_get("/sessions", sessions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    task = asyncio.create_task(events())
    print(f"READY {port} {control_port}", flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.port, args.control_port))
    except BaseException:
        traceback.print_exc()  # into the log: os._exit below would swallow it
        raise
    finally:
        # smpp34's extension can crash during interpreter teardown; leave without it.
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
