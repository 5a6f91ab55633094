"""EC2 API emulator of the local VPC simulator: moto plus the semantics a VPC CNI depends on.

moto keeps the books and speaks the wire format; a WSGI layer in front of it enforces what AWS
does and moto does not (see ``reference/test-infrastructure.md``, moto section): per-instance-type
ENI and address limits, /28 and /80 prefix delegation, trunk/efa interface types, network cards,
AWS refusals (``InvalidNetworkInterface.InUse``, device index taken, ...), allocation without
duplicates or reserved addresses, prompt ``InsufficientFreeAddressesInSubnet``, termination
semantics, pagination, and injected faults (throttling, latency, slow attachments).

Interface (relied on by the metadata emulator, the VPC fabric and ``vpccni sim``)::

    from vpccni.sim.ec2 import Ec2Emulator
    emu = Ec2Emulator(host="127.0.0.1", port=0, region="us-west-2", seed=None)
    emu.start()               # serves in background threads (account 123456789012)
    emu.endpoint_url          # "http://127.0.0.1:PORT" (endpoint_url / AWS_ENDPOINT_URL_EC2)
    emu.wsgi_app              # the WSGI app (may be served on more sockets)
    emu.backend               # moto's EC2 backend for (account, region), looked up on access
    emu.lock                  # RLock held while any EC2 request runs: hold it to read
    emu.faults                # FaultConfig: set_throttle(action, rate 0..1),
                              #   set_latency(action, seconds), set_attach_delay(seconds),
                              #   seed(n), clear(), apply(doc), snapshot(); action "*" = all
    emu.subscribe(cb)         # cb(action) after every successful mutating request, outside
                              #   the lock; cb("AttachmentAttached") when an attachment
                              #   leaves 'attaching'; unsubscribe(cb) to stop
    emu.describe_eni_state(instance_id) -> list[EniView]   # card, then device order
    emu.stats                 # RequestStats: counts()/throttled()/failed()/by_outcome()/
                              #   total()/reset(): every request by action and outcome
    emu.reset()               # wipe moto state and faults (also POST /moto-api/reset)
    emu.seed(n)               # repeatable address choice and throttling
    emu.stop()                # idempotent; Ec2Emulator is also a context manager

    from vpccni.sim.ec2.limits import limits_for   # -> InstanceLimits; unknown type raises
                                                   #    UnknownInstanceTypeError (a KeyError)

Faults over HTTP, for other processes: ``POST {endpoint_url}/vpccni-sim/faults`` with JSON
``{"clear": true, "seed": 1, "throttle": {"AssignPrivateIpAddresses": 0.5},
"latency": {"*": 0.05}, "attach_delay": 2.0}`` (every key optional; GET returns the config).

Error codes chosen where AWS documentation is thin (kept in one place for review):
re-attaching an attached ENI and deleting an attached ENI -> ``InvalidNetworkInterface.InUse``
(what AWS answers: "Interface: [eni-...] in use."); IPv6 assignment on a subnet without an IPv6
CIDR -> ``InvalidParameterValue``; explicit address already used -> ``InvalidIPAddress.InUse``;
detaching device 0 on card 0 -> ``OperationNotPermitted``.
"""

from __future__ import annotations

from vpccni.sim.ec2.faults import FaultConfig
from vpccni.sim.ec2.limits import InstanceLimits
from vpccni.sim.ec2.limits import UnknownInstanceTypeError
from vpccni.sim.ec2.limits import limits_for
from vpccni.sim.ec2.server import ATTACHED_EVENT
from vpccni.sim.ec2.server import Ec2Emulator
from vpccni.sim.ec2.views import EniView

__all__ = [
    "ATTACHED_EVENT",
    "Ec2Emulator",
    "EniView",
    "FaultConfig",
    "InstanceLimits",
    "UnknownInstanceTypeError",
    "limits_for",
]
