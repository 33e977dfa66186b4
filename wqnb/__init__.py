"""wqnb: Wippy's queue system in Python, made to be seen and taught in Jupyter.

The public API (DESIGN §4)::

    rt = wqnb.Runtime.from_yaml("app/")        # Wippy YAML entries
    rt.register_function("app.queue:task_handler", fn)
    await rt.start(); await rt.publish("app.queue:tasks", {"id": 1})
    await rt.drain(); await rt.stop()
    rt.timeline.df                             # every event, as pandas

    tl = wqnb.simulate(concurrency=4, prefetch=10, messages=1000, arrival_rate=80.0,
                       service_time=wqnb.Exponential(0.05), seed=1)   # virtual time
"""

from .clock import VirtualTimeLoop, run_virtual
from .errors import (
    AlreadySettled,
    ConfigError,
    CycleError,
    DriverUnavailable,
    HandlerError,
    MessageReleased,
    PermissionDenied,
    PublishError,
    QueueFull,
    QueueNotFound,
    RuntimeStateError,
    StopTimeout,
    VirtualTimeDeadlock,
    WqnbError,
)
from .message import Delivery, Message
from .runtime import Runtime, SyncRuntime
from .sim import Constant, Exponential, LogNormal, Uniform, simulate, sweep
from .theory import erlang_c
from .timeline import Timeline

__version__ = "0.1.0"

__all__ = [
    "AlreadySettled",
    "ConfigError",
    "Constant",
    "DriverUnavailable",
    "PublishError",
    "CycleError",
    "Delivery",
    "Exponential",
    "HandlerError",
    "LogNormal",
    "Message",
    "MessageReleased",
    "PermissionDenied",
    "QueueFull",
    "QueueNotFound",
    "Runtime",
    "RuntimeStateError",
    "StopTimeout",
    "SyncRuntime",
    "Timeline",
    "Uniform",
    "VirtualTimeDeadlock",
    "VirtualTimeLoop",
    "WqnbError",
    "erlang_c",
    "run_virtual",
    "simulate",
    "sweep",
]
