from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientHello(_message.Message):
    __slots__ = ("protocol_version", "name", "labels", "services", "token", "call_layers", "replaces", "client_certificates", "client_proof")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CALL_LAYERS_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PROOF_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    name: str
    labels: _containers.ScalarMap[str, str]
    services: _containers.RepeatedScalarFieldContainer[str]
    token: str
    call_layers: _containers.RepeatedScalarFieldContainer[str]
    replaces: bytes
    client_certificates: _containers.RepeatedScalarFieldContainer[bytes]
    client_proof: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., services: _Optional[_Iterable[str]] = ..., token: _Optional[str] = ..., call_layers: _Optional[_Iterable[str]] = ..., replaces: _Optional[bytes] = ..., client_certificates: _Optional[_Iterable[bytes]] = ..., client_proof: _Optional[bytes] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_size", "max_concurrent_calls", "keepalive_interval_ms", "dead_peer_timeout_ms")
    MAX_MESSAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_CALLS_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    DEAD_PEER_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    max_message_size: int
    max_concurrent_calls: int
    keepalive_interval_ms: int
    dead_peer_timeout_ms: int
    def __init__(self, max_message_size: _Optional[int] = ..., max_concurrent_calls: _Optional[int] = ..., keepalive_interval_ms: _Optional[int] = ..., dead_peer_timeout_ms: _Optional[int] = ...) -> None: ...

class ServerHello(_message.Message):
    __slots__ = ("protocol_version", "connection_id", "limits", "call_layer", "resume_secret")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CALL_LAYER_FIELD_NUMBER: _ClassVar[int]
    RESUME_SECRET_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    connection_id: str
    limits: Limits
    call_layer: str
    resume_secret: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., connection_id: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., call_layer: _Optional[str] = ..., resume_secret: _Optional[bytes] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("code", "reason")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CODE_UNSPECIFIED: _ClassVar[Refusal.Code]
        INVALID_HELLO: _ClassVar[Refusal.Code]
        UNSUPPORTED_VERSION: _ClassVar[Refusal.Code]
        UNAUTHENTICATED: _ClassVar[Refusal.Code]
        PERMISSION_DENIED: _ClassVar[Refusal.Code]
        RESOURCE_EXHAUSTED: _ClassVar[Refusal.Code]
        ALREADY_EXISTS: _ClassVar[Refusal.Code]
        UNAVAILABLE: _ClassVar[Refusal.Code]
    CODE_UNSPECIFIED: Refusal.Code
    INVALID_HELLO: Refusal.Code
    UNSUPPORTED_VERSION: Refusal.Code
    UNAUTHENTICATED: Refusal.Code
    PERMISSION_DENIED: Refusal.Code
    RESOURCE_EXHAUSTED: Refusal.Code
    ALREADY_EXISTS: Refusal.Code
    UNAVAILABLE: Refusal.Code
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: Refusal.Code
    reason: str
    def __init__(self, code: _Optional[_Union[Refusal.Code, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class GoAway(_message.Message):
    __slots__ = ("reason", "grace_ms")
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    grace_ms: int
    def __init__(self, reason: _Optional[str] = ..., grace_ms: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("client_hello", "server_hello", "refusal", "ping", "pong", "go_away")
    CLIENT_HELLO_FIELD_NUMBER: _ClassVar[int]
    SERVER_HELLO_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    GO_AWAY_FIELD_NUMBER: _ClassVar[int]
    client_hello: ClientHello
    server_hello: ServerHello
    refusal: Refusal
    ping: Ping
    pong: Pong
    go_away: GoAway
    def __init__(self, client_hello: _Optional[_Union[ClientHello, _Mapping]] = ..., server_hello: _Optional[_Union[ServerHello, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., go_away: _Optional[_Union[GoAway, _Mapping]] = ...) -> None: ...
