"""Every declared service of one subnet's hosts, served by one process.

For each host the process opens the listening sockets inside that host's network
namespace and serves them with asyncio. A vulnerable service's handler, given a
well-formed exploit, starts the marker implant in that host (and nothing else).
A supervisor stops a host's services when its data file is corrupted (red's
impact) and restarts them once the data is healthy again or the actuator asks
(blue's Restore). Run: python -m cyberdial.range.emulation.programs.services.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import sys

from cyberdial.range.emulation.netns import socket_in
from cyberdial.range.emulation.plan import GREEN_PASSWORD, HostPlan, ServicePlan
from cyberdial.range.emulation.programs.common import Program
from cyberdial.range.emulation.programs.payloads import (
    EXPLOIT_OFFSET,
    GREEN_USER,
    LOGIN_FAILED,
    MAX_REQUEST,
    exploit_offset,
)
from cyberdial.range.emulation.state import record_pid

IMPLANT_MODULE = "cyberdial.range.emulation.programs.implant"
SUPERVISE_S = 0.2
REQUEST_TIMEOUT_S = 5.0
IMPLANT_READY_S = 10.0


class Services:
    def __init__(self, program: Program) -> None:
        self.program = program
        self.plan = program.plan
        assert program.subnet is not None
        self.hosts = [h for h in self.plan.hosts_in(program.subnet) if h.services]
        self.servers: dict[str, list[asyncio.Server]] = {}
        self.implants: list[asyncio.subprocess.Process] = []

    # ------------------------------------------------------------ lifecycle

    async def open_host(self, host: HostPlan) -> None:
        pid = self.plan.host_pids[host.name]
        servers = []
        for service in host.services:
            sock = socket_in(pid)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", service.port))
            sock.listen(128)
            sock.setblocking(False)
            servers.append(await asyncio.start_server(
                functools.partial(self.handle, host, service), sock=sock))
        self.servers[host.name] = servers

    async def close_host(self, host: HostPlan) -> None:
        for server in self.servers.pop(host.name, []):
            server.close()
            await server.wait_closed()

    def data_ok(self, host: HostPlan) -> bool:
        for service in host.services:
            try:
                live = self.plan.data_file(host.name, service.name).read_bytes()
                gold = (self.plan.golden_dir(host.name) / "srv" / f"{service.name}.dat"
                        ).read_bytes()
            except OSError:
                return False
            if live != gold:
                return False
        return True

    async def supervise(self) -> None:
        while self.program.running():
            for host in self.hosts:
                request = self.plan.restart_request(host.name)
                restart = request.exists()
                if restart:
                    request.unlink(missing_ok=True)
                    await self.close_host(host)
                    self.program.log.info("%s: services restarted on request", host.name)
                healthy = self.data_ok(host)
                if host.name in self.servers and not healthy:
                    self.program.log.info("%s: data corrupted, services stop", host.name)
                    await self.close_host(host)
                elif host.name not in self.servers and healthy:
                    await self.open_host(host)
            self.implants = [p for p in self.implants if p.returncode is None]
            await asyncio.sleep(SUPERVISE_S)

    async def run(self) -> None:
        for host in self.hosts:
            await self.open_host(host)
        self.program.ready()
        await self.supervise()
        for host in self.hosts:
            await self.close_host(host)

    # -------------------------------------------------------------- serving

    async def handle(self, host: HostPlan, service: ServicePlan, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            if service.protocol == "tcp":
                writer.write(f"CYBERDIAL {service.name} ready\n".encode())
                await writer.drain()
                request = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            else:
                request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            reply = await self.answer(host, service, request[:MAX_REQUEST])
            if reply:
                writer.write(reply)
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def answer(self, host: HostPlan, service: ServicePlan, request: bytes) -> bytes:
        http = service.protocol == "http"
        offset = exploit_offset(request)
        if offset is not None:
            if not service.vulnerable or offset != EXPLOIT_OFFSET:
                return b""  # the handler "crashes": the connection just closes
            pid = await self.start_implant(host)
            text = f"OK implant {pid}\n" if pid else "ERROR implant failed\n"
            return (b"HTTP/1.0 200 OK\r\n\r\n" if http else b"") + text.encode()
        data = self.plan.data_file(host.name, service.name).read_bytes()
        if http:
            credentials = [line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                           if line.lower().startswith(b"authorization:")]
            if credentials:
                if request.startswith(b"GET /data") and credentials[0] == (
                        f"{GREEN_USER}:{GREEN_PASSWORD}".encode()):
                    return b"HTTP/1.0 200 OK\r\n\r\n" + data
                return b"HTTP/1.0 401 Unauthorized\r\n\r\n" + LOGIN_FAILED + b"\n"
            return b"HTTP/1.0 200 OK\r\n\r\n" + service.name.encode() + b"\n"
        words = request.split()
        if words[:1] == [b"LOGIN"]:
            if words[1:3] == [GREEN_USER.encode(), GREEN_PASSWORD.encode()]:
                return b"LOGIN OK\n" + data
            return LOGIN_FAILED + b"\n"
        return b"ERROR unknown request\n"

    async def start_implant(self, host: HostPlan) -> int:
        """Start the marker implant inside `host`; its PID once it is listening, else 0."""
        process = await asyncio.create_subprocess_exec(
            *self.plan.exec_prefix(host.name), sys.executable, "-m",
            IMPLANT_MODULE, "--run-dir", str(self.plan.root), "--host", host.name,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        # Recorded before anything else, so a crash now still lets `range down` find it.
        record_pid(self.plan.root, f"implants-{self.program.subnet}", process.pid, "implant",
                   host.name)
        self.implants.append(process)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), IMPLANT_READY_S)
        except TimeoutError:
            line = b""
        if not line.startswith(b"ready"):
            self.program.log.warning("%s: implant did not start", host.name)
            return 0
        self.program.log.info("%s: implant %d started by exploit", host.name, process.pid)
        return process.pid


def main() -> int:
    program = Program("services", "serve one subnet's declared services")
    asyncio.run(Services(program).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
