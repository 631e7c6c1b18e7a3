"""Whether `serve` / `ui` may listen on an address: beyond this machine, a key or --no-auth.

On a loopback address (127.0.0.0/8, ::1, localhost) only this machine can connect, so no key is
needed. Anywhere else, without a key anyone who reaches the port can use it (the UI lets them
upload files and start training jobs), so the server refuses to start unless the operator says
--no-auth, which prints a warning. This module binds nothing; the commands call it first.
"""

from __future__ import annotations

import ipaddress

from chattune.config import ConfigError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach; a host name other than localhost is not."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_binding(command: str, host: str, api_key: str | None, no_auth: bool) -> str | None:
    """Raise ConfigError when `command` would serve `host` to others without a key; the warning
    to print (or None) otherwise."""
    if no_auth and api_key:
        raise ConfigError(f"{command}: --no-auth and an API key (--api-key or CHATTUNE_API_KEY) "
                          "contradict each other; give one of them")
    if no_auth:
        return (f"{command} on {host} with --no-auth: anyone who can reach this port can use it "
                "without a key")
    if api_key or is_loopback(host):
        return None
    raise ConfigError(f"{command} --host {host}: other machines could connect, and there is no "
                      "API key; give --api-key KEY (or set CHATTUNE_API_KEY), or --no-auth to let "
                      "anyone who reaches the port use it")
