"""One subnet's green users: real requests from user hosts, and the admins' false positives.

Every step each user host, with the scenario's `work_rate`, logs in to a server it
may reach (same subnet or an allowed flow) and reads its data; the outcome goes to
`green/<name>.jsonl`, which the referee counts. With `fp_exploit` a user mistypes
the password (the service answers LOGIN FAILED, which sensors flag); with
`fp_scan` an admin ping-sweeps its subnet and connect-scans a neighbour (sensors
see a port scan; the sweep only where they detect sweeps). All
requests of a step run concurrently, each from a socket made inside its user's
network namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time

from cyberdial.range.emulation.netns import in_netns, socket_in
from cyberdial.range.emulation.plan import GREEN_PASSWORD, HostPlan
from cyberdial.range.emulation.programs.common import Program
from cyberdial.range.emulation.programs.payloads import (
    icmp_echo_request,
    login_ok,
    login_request,
)
from cyberdial.range.hub import SensorLink
from cyberdial.range.wire import StepTick

ADMIN_SCAN_PORTS = 8
WORK_TIMEOUT_S = 0.5
MAX_REPLY = 65536


class Green:
    def __init__(self, program: Program) -> None:
        self.program = program
        plan = self.plan = program.plan
        assert program.subnet is not None
        scenario = json.loads((plan.root / "scenario.json").read_text(encoding="utf-8"))
        self.green = scenario["green"]
        subnet = plan.subnet(program.subnet)
        reachable = {subnet.name, *subnet.flows}
        self.users = [h for h in plan.hosts_in(subnet.name) if h.user]
        self.neighbours = list(plan.hosts_in(subnet.name))
        servers = [plan.host(name) for name in self.green["servers"]]
        # Green works only where the firewall lets it: the scenario's flows.
        self.servers = [s for s in servers if s.subnet in reachable and s.services]
        # A request's whole exchange: a server answers in milliseconds, a cut-off one never.
        self.timeout = WORK_TIMEOUT_S

    async def exchange(self, user: HostPlan, ip: str, port: int, request: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        sock = socket_in(self.plan.host_pids[user.name])
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (ip, port))
            await loop.sock_sendall(sock, request)
            reply = b""
            while len(reply) < MAX_REPLY:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    break
                reply += chunk
            return reply
        finally:
            sock.close()

    async def work(self, step: int, user: HostPlan, mistype: bool) -> None:
        server = self.program.rng.choice(self.servers)
        service = self.program.rng.choice(server.services)
        password = GREEN_PASSWORD + ("-typo" if mistype else "")
        error = ""
        try:
            reply = await asyncio.wait_for(
                self.exchange(user, server.ip, service.port,
                              login_request(service.protocol, password)), self.timeout)
            ok = login_ok(service.protocol, reply)
            if not ok:
                error = reply[:80].decode(errors="replace")
        except (TimeoutError, OSError) as failure:
            ok, error = False, f"{type(failure).__name__}: {failure}"
        self.program.append_jsonl("green", {
            "time": time.time(), "step": step, "user": user.name, "server": server.name,
            "service": service.name,
            # A mistyped login is noise, not work: the referee counts neither way.
            "ok": None if mistype else ok, "mistyped": mistype, "error": error[:120],
        })

    def admin_sweep(self, admin: HostPlan, others: list[HostPlan]) -> None:
        """An admin's ping sweep of its subnet (sensors flag it if they detect sweeps)."""
        with in_netns(self.plan.host_pids[admin.name]):
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        with sock:
            sock.setblocking(False)
            for seq, host in enumerate(others):
                try:
                    sock.sendto(icmp_echo_request(os.getpid(), seq, b"admin-sweep"),
                                (host.ip, 0))
                except OSError:
                    break  # the admin's own link is down (restore): the sweep fails

    async def admin_scan(self, admin: HostPlan) -> None:
        others = [h for h in self.neighbours if h.name != admin.name]
        if not others:
            return
        self.admin_sweep(admin, others)
        target = self.program.rng.choice(others)
        ports = self.plan.scan_ports[:ADMIN_SCAN_PORTS]

        async def probe(port: int) -> None:
            # A connect scan: the handshake (or its refusal) is all it waits for.
            sock = socket_in(self.plan.host_pids[admin.name])
            sock.setblocking(False)
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, (target.ip, port)), 0.3)
            except (TimeoutError, OSError):
                pass
            finally:
                sock.close()

        await asyncio.gather(*(probe(p) for p in ports))

    async def step_work(self, step: int) -> None:
        """One step's work of every user of the subnet, all at once."""
        rng, green = self.program.rng, self.green
        tasks = []
        for user in self.users:
            if self.servers and rng.random() < green["work_rate"]:
                tasks.append(self.work(step, user, mistype=False))
            if self.servers and rng.random() < green["fp_exploit"]:
                tasks.append(self.work(step, user, mistype=True))
            if rng.random() < green["fp_scan"]:
                tasks.append(self.admin_scan(user))
        if tasks:
            await asyncio.gather(*tasks)

    def on_tick(self, tick: StepTick) -> None:
        """Green's work of one step of the bridge's clock; done before we answer the tick."""
        if tick.step < 0:
            return
        try:
            self.loop.run_until_complete(self.step_work(tick.step))
        except Exception:
            if not self.program.controller_gone():
                raise
            # Its hosts vanished under the work: `running()` now stops us, quietly.

    def run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            with SensorLink(self.plan.alert_endpoint, self.plan.run_id, self.program.name,
                            key=self.program.key, subnet=self.program.subnet,
                            role="green") as link:
                self.program.follow_steps(link, self.on_tick)
        finally:
            self.loop.close()


def main() -> int:
    program = Program("green", "green users of one subnet", keyed=True)
    Green(program).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

