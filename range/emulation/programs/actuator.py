"""One subnet's actuator: carries out blue's commands on the real hosts and answers each.

Analyse lists the processes in the host's namespace and reads its privileged
marker; Remove kills user-level implants (an implant that owns the privileged
marker survives it); Restore takes the host's link down, kills every process in
its namespace but the shell that holds it, resets its files to the golden copy,
drops its decoy, asks the services process to restart its services and brings the
link back after the scenario's restore downtime (in steps of the bridge's clock: it
counts the steps the bridge closes); Block/Unblock edit the router's
nftables `blocked` set; Decoy opens a listener in the host (the sensor alerts on
contact). Commands arrive from the hub through `ActuatorLink`; arguments are
names checked against this subnet, never passed through a shell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import zmq

from cyberdial.range.emulation.netns import (
    cmdline,
    netns_inode,
    processes_in,
    socket_in,
)
from cyberdial.range.emulation.plan import HostPlan
from cyberdial.range.emulation.programs.common import Program
from cyberdial.range.hub import ActuatorLink
from cyberdial.range.wire import Command, CommandResult, StepDone

IMPLANT_MODULE = "cyberdial.range.emulation.programs.implant"
KILL_WAIT_S = 3.0


class Actuator:
    def __init__(self, program: Program) -> None:
        self.program = program
        plan = self.plan = program.plan
        assert program.subnet is not None
        self.subnet = plan.subnet(program.subnet)
        self.hosts = {h.name: h for h in plan.hosts_in(program.subnet)}
        scenario = json.loads((plan.root / "scenario.json").read_text(encoding="utf-8"))
        self.restore_downtime = int(scenario["blue"]["restore_downtime"])
        self.decoys: dict[str, socket.socket] = {}
        # Host -> steps its link stays down (as the simulator's `down` counter: a host
        # restored at step t is cut off for the green work of steps t .. t + downtime - 1).
        self.link_down_steps: dict[str, int] = {}

    # ---------------------------------------------------------- helpers

    def result(self, command: Command, ok: bool, detail: str, **extra: object) -> CommandResult:
        self.program.append_jsonl("actions", {
            "time": time.time(), "command_id": command.command_id, "action": command.action,
            "host": command.host, "subnet": command.subnet, "ok": ok, "detail": detail[:300],
        })
        return CommandResult(command_id=command.command_id, action=command.action, ok=ok,
                             host=command.host, subnet=command.subnet, detail=detail[:500],
                             **extra)

    def guests(self, host: HostPlan) -> list[int]:
        """Processes in the host's namespace besides the host's own (its holder shell or
        container init, and a container image's own daemons)."""
        own = self.plan.baseline(host.name)
        inode = netns_inode(self.plan.host_pids[host.name])
        if inode is None:
            return []
        return [pid for pid in processes_in([inode])[inode] if pid not in own]

    def implants(self, host: HostPlan) -> list[int]:
        return [pid for pid in self.guests(host) if IMPLANT_MODULE in cmdline(pid)]

    def marker_owner(self, host: HostPlan) -> int | None:
        try:
            words = self.plan.privileged_marker(host.name).read_text(encoding="utf-8").split()
        except OSError:
            return None
        return int(words[1]) if len(words) >= 2 and words[1].isdigit() else None

    def kill(self, pids: list[int]) -> list[int]:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.01)
        return pids

    def set_link(self, host: HostPlan, up: bool) -> None:
        subprocess.run(["ip", "link", "set", host.veth, "up" if up else "down"], check=True,
                       capture_output=True)

    def nft(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["mnexec", "-a", str(self.plan.router_pid), "nft", *args],
                              capture_output=True, text=True, check=False)

    def is_blocked(self) -> bool:
        out = self.nft("-j", "list", "set", "inet", self.plan.nft_table, "blocked")
        if out.returncode != 0:
            return False
        address, length = self.subnet.cidr.split("/")
        for item in json.loads(out.stdout).get("nftables", []):
            for element in item.get("set", {}).get("elem", []):
                prefix = element.get("prefix") if isinstance(element, dict) else None
                if prefix and prefix.get("addr") == address and str(prefix.get("len")) == length:
                    return True
        return False

    # ---------------------------------------------------------- actions

    def handle(self, command: Command) -> CommandResult:
        if command.action in ("block", "unblock"):
            if command.subnet != self.subnet.name:
                return self.result(command, False, f"subnet {command.subnet} is not served here")
            return self.block(command, command.action == "block")
        host = self.hosts.get(command.host or "")
        if host is None:
            return self.result(command, False, f"host {command.host} is not in {self.subnet.name}")
        return {
            "analyse": self.analyse, "remove": self.remove, "restore": self.restore,
            "decoy": self.decoy,
        }[command.action](command, host)

    def analyse(self, command: Command, host: HostPlan) -> CommandResult:
        guests = self.guests(host)
        implants = [p for p in guests if IMPLANT_MODULE in cmdline(p)]
        owner = self.marker_owner(host)
        level = "none" if not implants else "privileged" if owner in implants else "user"
        others = [p for p in guests if p not in implants]
        detail = (f"{len(implants)} implant(s) {implants}; privileged marker "
                  f"{'owned by ' + str(owner) if owner else 'absent'}; other processes {others}")
        return self.result(command, True, detail, compromise=level, implants=tuple(implants))

    def remove(self, command: Command, host: HostPlan) -> CommandResult:
        owner = self.marker_owner(host)
        implants = self.implants(host)
        killed = self.kill([p for p in implants if p != owner])
        survivors = [p for p in implants if p not in killed]
        detail = f"killed {killed}" + (f"; privileged implant {survivors} resists" if survivors
                                       else "")
        level = "privileged" if survivors else "none"
        return self.result(command, True, detail, compromise=level, implants=tuple(killed))

    def restore(self, command: Command, host: HostPlan) -> CommandResult:
        self.set_link(host, False)
        killed = self.kill(self.guests(host))
        shutil.rmtree(self.plan.host_dir(host.name), ignore_errors=True)
        shutil.copytree(self.plan.golden_dir(host.name), self.plan.host_dir(host.name))
        self.drop_decoy(host)
        self.plan.restart_request(host.name).write_text("restore\n", encoding="utf-8")
        self.link_down_steps[host.name] = self.restore_downtime
        if self.restore_downtime <= 0:
            self.bring_links_up(0)
        return self.result(command, True, f"killed {killed}; files reset; services restarting;"
                           f" link down for {self.restore_downtime} steps",
                           compromise="none", implants=tuple(killed))

    def block(self, command: Command, block: bool) -> CommandResult:
        cidr = self.subnet.cidr
        if block == self.is_blocked():
            return self.result(command, True, f"{cidr} already {'blocked' if block else 'open'}")
        verb = "add" if block else "delete"
        out = self.nft(verb, "element", "inet", self.plan.nft_table, "blocked", "{", cidr, "}")
        if out.returncode != 0:
            return self.result(command, False, f"nft {verb} failed: {out.stderr.strip()}")
        return self.result(command, True, f"{cidr} {'blocked' if block else 'unblocked'} at the"
                           " router")

    def decoy(self, command: Command, host: HostPlan) -> CommandResult:
        if host.name in self.decoys:
            return self.result(command, True, f"decoy already on port {host.decoy_port}")
        if not host.decoy_port:
            return self.result(command, False, "no free decoy port on this host")
        sock = socket_in(self.plan.host_pids[host.name])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", host.decoy_port))
        except OSError as error:
            sock.close()
            return self.result(command, False, f"cannot listen on {host.decoy_port}: {error}")
        sock.listen(16)
        sock.setblocking(False)
        self.decoys[host.name] = sock
        self.plan.decoy_file(host.name).write_text(f"{host.decoy_port}\n", encoding="utf-8")
        return self.result(command, True, f"decoy listening on port {host.decoy_port}")

    def drop_decoy(self, host: HostPlan) -> None:
        sock = self.decoys.pop(host.name, None)
        if sock is not None:
            sock.close()
        self.plan.decoy_file(host.name).unlink(missing_ok=True)

    # ------------------------------------------------------------- loop

    def episode_stamp(self) -> float:
        try:
            return self.plan.episode_file.stat().st_mtime
        except OSError:
            return 0.0

    def bring_links_up(self, steps: int = 1) -> None:
        """Count `steps` off every restored host's downtime; links whose time is up go up."""
        for name, left in list(self.link_down_steps.items()):
            if left - steps <= 0:
                self.set_link(self.hosts[name], True)
                del self.link_down_steps[name]
            else:
                self.link_down_steps[name] = left - steps

    def accept_decoys(self) -> None:
        for sock in self.decoys.values():
            for _ in range(16):
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, OSError):
                    break
                conn.close()

    def run(self) -> None:
        sender = f"actuator-{self.subnet.name}"
        with ActuatorLink(self.plan.command_endpoint, self.plan.run_id, sender,
                          hosts=list(self.hosts), subnet=self.subnet.name,
                          handler=self.handle, key=self.program.key) as link:
            clock = self.program.follower()
            poller = zmq.Poller()
            poller.register(link.socket, zmq.POLLIN)
            poller.register(clock.socket, zmq.POLLIN)
            self.program.ready()
            episode = self.episode_stamp()
            done = -1
            try:
                while self.program.running():
                    events = dict(poller.poll(50))
                    link.serve_once(0.0)
                    if events.get(clock.socket):
                        tick = clock.poll(0.0)
                        if tick is not None and tick.tick > done:
                            # The bridge closed a step: count it off the restore downtimes.
                            self.bring_links_up()
                            done = tick.tick
                        if tick is not None:
                            link.send("step_done", StepDone(tick=done), step=max(tick.step, 0))
                    self.accept_decoys()
                    if (stamp := self.episode_stamp()) != episode:
                        # A new episode: the controller reset every host; decoys go too.
                        episode = stamp
                        for name in list(self.decoys):
                            self.drop_decoy(self.hosts[name])
                        self.link_down_steps.clear()
            finally:
                clock.close()
        for name in list(self.decoys):
            self.drop_decoy(self.hosts[name])


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"


def main() -> int:
    program = Program("actuator", "carry out blue's commands on one subnet's hosts",
                      keyed=True)
    Actuator(program).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
