from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttachmentKey(_message.Message):
    __slots__ = ("network_name", "container_id", "ifname")
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    network_name: str
    container_id: str
    ifname: str
    def __init__(self, network_name: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ...) -> None: ...

class PodRef(_message.Message):
    __slots__ = ("namespace", "name", "uid", "infra_container_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    INFRA_CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    uid: str
    infra_container_id: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ..., infra_container_id: _Optional[str] = ...) -> None: ...

class AllocateRequest(_message.Message):
    __slots__ = ("client_version", "key", "netns", "pod", "driver", "requires_multi_nic")
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_MULTI_NIC_FIELD_NUMBER: _ClassVar[int]
    client_version: str
    key: AttachmentKey
    netns: str
    pod: PodRef
    driver: str
    requires_multi_nic: bool
    def __init__(self, client_version: _Optional[str] = ..., key: _Optional[_Union[AttachmentKey, _Mapping]] = ..., netns: _Optional[str] = ..., pod: _Optional[_Union[PodRef, _Mapping]] = ..., driver: _Optional[str] = ..., requires_multi_nic: _Optional[bool] = ...) -> None: ...

class AddressAssignment(_message.Message):
    __slots__ = ("address", "family", "device_number", "route_table", "network_card")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ROUTE_TABLE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CARD_FIELD_NUMBER: _ClassVar[int]
    address: str
    family: int
    device_number: int
    route_table: int
    network_card: int
    def __init__(self, address: _Optional[str] = ..., family: _Optional[int] = ..., device_number: _Optional[int] = ..., route_table: _Optional[int] = ..., network_card: _Optional[int] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("key", "driver", "addresses", "vpc_cidrs", "use_external_snat", "driver_data")
    class DriverDataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    VPC_CIDRS_FIELD_NUMBER: _ClassVar[int]
    USE_EXTERNAL_SNAT_FIELD_NUMBER: _ClassVar[int]
    DRIVER_DATA_FIELD_NUMBER: _ClassVar[int]
    key: AttachmentKey
    driver: str
    addresses: _containers.RepeatedCompositeFieldContainer[AddressAssignment]
    vpc_cidrs: _containers.RepeatedScalarFieldContainer[str]
    use_external_snat: bool
    driver_data: _containers.ScalarMap[str, str]
    def __init__(self, key: _Optional[_Union[AttachmentKey, _Mapping]] = ..., driver: _Optional[str] = ..., addresses: _Optional[_Iterable[_Union[AddressAssignment, _Mapping]]] = ..., vpc_cidrs: _Optional[_Iterable[str]] = ..., use_external_snat: _Optional[bool] = ..., driver_data: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("client_version", "key", "reason", "pod")
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    client_version: str
    key: AttachmentKey
    reason: str
    pod: PodRef
    def __init__(self, client_version: _Optional[str] = ..., key: _Optional[_Union[AttachmentKey, _Mapping]] = ..., reason: _Optional[str] = ..., pod: _Optional[_Union[PodRef, _Mapping]] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ("found", "released")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    found: bool
    released: Allocation
    def __init__(self, found: _Optional[bool] = ..., released: _Optional[_Union[Allocation, _Mapping]] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("client_version", "key")
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    client_version: str
    key: AttachmentKey
    def __init__(self, client_version: _Optional[str] = ..., key: _Optional[_Union[AttachmentKey, _Mapping]] = ...) -> None: ...

class LookupReply(_message.Message):
    __slots__ = ("found", "allocation")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    found: bool
    allocation: Allocation
    def __init__(self, found: _Optional[bool] = ..., allocation: _Optional[_Union[Allocation, _Mapping]] = ...) -> None: ...

class GcRequest(_message.Message):
    __slots__ = ("client_version", "network_name", "valid")
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    client_version: str
    network_name: str
    valid: _containers.RepeatedCompositeFieldContainer[AttachmentKey]
    def __init__(self, client_version: _Optional[str] = ..., network_name: _Optional[str] = ..., valid: _Optional[_Iterable[_Union[AttachmentKey, _Mapping]]] = ...) -> None: ...

class GcReply(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: _containers.RepeatedCompositeFieldContainer[AttachmentKey]
    def __init__(self, released: _Optional[_Iterable[_Union[AttachmentKey, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("client_version",)
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_version: str
    def __init__(self, client_version: _Optional[str] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("ready", "detail")
    READY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    detail: str
    def __init__(self, ready: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...
