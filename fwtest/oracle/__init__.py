"""The real Linux netfilter as the oracle (Linux and root only).

``KernelFirewall`` builds throw-away network namespaces (peer side, firewall,
PSAP side), loads a ruleset into the firewall with iptables-restore /
ip6tables-restore or ``nft -f``, injects packet records as Ethernet frames
and reports, per packet, whether the kernel let it through. See
``fwtest.oracle.kernel`` for the topology and how time is handled.
"""

from fwtest.oracle.kernel import (
    KernelFirewall,
    compress_timeline,
    kernel_replay,
    kernel_unavailable,
    ruleset_scripts,
    uses_conntrack,
)
from fwtest.oracle.netns import KernelError

__all__ = ["KernelError", "KernelFirewall", "compress_timeline", "kernel_replay", "kernel_unavailable",
           "ruleset_scripts", "uses_conntrack"]
