"""Node SNAT and connmark rules (reference 3.2 step 3 and 3.4), kept in sync by ipamd.

Usage (inside the node's network namespace)::

    config = SnatConfig.from_env(os.environ, vpc_cidrs=..., primary_ip=..., primary_interface=...)
    backend = backend_from_env(os.environ)      # VPCCNI_SNAT_BACKEND=auto|iptables|nftables|...
    remove_others(backend)                      # once at start: leftovers of another backend
    backend.sync(desired_rules(config))         # at start and whenever the VPC CIDRs change
    backend.remove()                            # feature switched off

See docs/snat.md.
"""

from __future__ import annotations

from vpccni.ipamd.snat.iptables import IptablesBackend
from vpccni.ipamd.snat.model import NOTHING
from vpccni.ipamd.snat.model import DesiredRules
from vpccni.ipamd.snat.model import Randomize
from vpccni.ipamd.snat.model import SnatBackend
from vpccni.ipamd.snat.model import SnatConfig
from vpccni.ipamd.snat.model import SnatError
from vpccni.ipamd.snat.model import desired_rules
from vpccni.ipamd.snat.nftables import NftablesBackend
from vpccni.ipamd.snat.select import BACKEND_ENV
from vpccni.ipamd.snat.select import backend_from_env
from vpccni.ipamd.snat.select import choose
from vpccni.ipamd.snat.select import make_backend
from vpccni.ipamd.snat.select import remove_others

__all__ = [
    "BACKEND_ENV",
    "NOTHING",
    "DesiredRules",
    "IptablesBackend",
    "NftablesBackend",
    "Randomize",
    "SnatBackend",
    "SnatConfig",
    "SnatError",
    "backend_from_env",
    "choose",
    "desired_rules",
    "make_backend",
    "remove_others",
]
