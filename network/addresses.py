"""The addresses of this machine, for the values a modality engineer types into a device.

Read locally only (iproute2's JSON output, /proc, the resolver's view of our own
host name): nothing here sends a packet anywhere.
"""

import ipaddress
import json
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Address:
    address: str
    interface: str = ""

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address.split("%")[0]).version


def _usable(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    # Link-local IPv6 needs a zone on the device side; devices rarely take it.
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast or (ip.version == 6 and ip.is_link_local))


def _from_iproute2() -> list[Address]:
    ip = shutil.which("ip")
    if not ip:
        return []
    try:
        out = subprocess.run([ip, "-j", "addr"], capture_output=True, text=True, timeout=5, check=True).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    found = []
    for link in links:
        if "UP" not in link.get("flags", []):
            continue
        for info in link.get("addr_info", []):
            if info.get("family") in ("inet", "inet6") and info.get("local"):
                found.append(Address(info["local"], link.get("ifname", "")))
    return found


def _from_proc_inet6() -> list[Address]:
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) == 6:
            found.append(Address(str(ipaddress.IPv6Address(bytes.fromhex(parts[0]))), parts[5]))
    return found


def _from_host_name() -> list[Address]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [Address(info[4][0]) for info in infos]


def local_addresses() -> list[Address]:
    """Non-loopback IPv4 then IPv6 addresses of this machine, each once, with its interface if known."""
    seen: dict[str, Address] = {}
    for address in _from_iproute2() + _from_proc_inet6() + _from_host_name():
        if _usable(address.address) and (address.address not in seen or not seen[address.address].interface):
            seen[address.address] = address
    return sorted(seen.values(), key=lambda a: (a.version, ipaddress.ip_address(a.address.split("%")[0])))
