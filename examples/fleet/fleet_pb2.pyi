from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("hostname", "pid", "uptime_seconds", "load_1m", "calls")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOAD_1M_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    pid: int
    uptime_seconds: float
    load_1m: float
    calls: int
    def __init__(self, hostname: _Optional[str] = ..., pid: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., load_1m: _Optional[float] = ..., calls: _Optional[int] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("task", "args")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    task: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class RunOutput(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...
