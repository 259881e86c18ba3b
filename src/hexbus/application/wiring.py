"""The wiring check: a handler must be able to take what it subscribes to.

Why at subscribe time: a handler annotated ``UserDeleted`` but subscribed to
``UserCreated`` would otherwise fail on the first message in production; here it fails
when the service starts, before any traffic.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from hexbus.application.patterns import compile_pattern
from hexbus.domain.errors import InvalidHandlerError
from hexbus.domain.events import DomainEvent, EventRegistry

__all__ = ["check_handler", "handler_name", "is_async_handler"]


def handler_name(handler: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, bound method or callable object (durable name)."""
    target: Any = handler
    if isinstance(handler, types.MethodType):
        target = handler.__func__
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if qualname is None:  # callable instance or functools.partial
        inner = getattr(handler, "func", None)
        if inner is not None:
            return handler_name(inner)
        cls = type(handler)
        module, qualname = cls.__module__, cls.__qualname__
    return f"{module}.{qualname}"


def _call_target(handler: Callable[..., Any]) -> Callable[..., Any]:
    """The function whose signature receives the event (``__call__`` for callable objects)."""
    if inspect.isfunction(handler) or inspect.ismethod(handler):
        return handler
    call = getattr(handler, "__call__", None)  # noqa: B004 - the bound method, not callability
    return call if inspect.ismethod(call) else handler


def is_async_handler(handler: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, bound methods and objects with ``async __call__``."""
    inner = handler
    while hasattr(inner, "func") and not inspect.isfunction(inner):  # functools.partial
        inner = inner.func
    return inspect.iscoroutinefunction(inner) or inspect.iscoroutinefunction(
        getattr(inner, "__call__", None)  # noqa: B004
    )


def _first_param_annotation(handler: Callable[..., Any]) -> tuple[bool, Any]:
    """(has_annotation, annotation) of the parameter that receives the event."""
    target = _call_target(handler)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return False, None
    try:
        signature.bind(object())
    except TypeError:
        raise InvalidHandlerError(
            f"handler {handler_name(handler)} must accept exactly one positional argument "
            f"(the event), but its signature is {signature}; read per-delivery data from "
            "hexbus.current_context() instead of extra parameters"
        ) from None
    params = list(signature.parameters.values())
    if not params or params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        return False, None
    name = params[0].name
    func = target.__func__ if inspect.ismethod(target) else target
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: nothing to check against
        return False, None
    if name not in hints:
        return False, None
    return True, hints[name]


def _accepted_classes(annotation: Any) -> list[type] | None:
    """Classes the annotation accepts; ``None`` means anything (Any, object, a TypeVar)."""
    if annotation is Any or annotation is object or isinstance(annotation, typing.TypeVar):
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        out: list[type] = []
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            accepted = _accepted_classes(arg)
            if accepted is None:
                return None
            out.extend(accepted)
        return out
    if origin is typing.Annotated:
        return _accepted_classes(typing.get_args(annotation)[0])
    if isinstance(annotation, type):
        return [annotation]
    return None  # a Protocol alias or something exotic: do not guess


def check_handler(
    target: type[DomainEvent] | str, handler: Any, registry: EventRegistry
) -> None:
    """Raise ``InvalidHandlerError`` when ``handler`` cannot take events of ``target``."""
    if not callable(handler):
        raise InvalidHandlerError(
            f"handler {handler!r} is not callable; subscribe an async def or def that takes "
            "the event, or an EventHandler object with bus.register(obj)"
        )
    has_annotation, annotation = _first_param_annotation(handler)
    if not has_annotation:
        return
    accepted = _accepted_classes(annotation)
    if accepted is None:
        return
    name = handler_name(handler)
    for cls in accepted:
        if not issubclass(cls, DomainEvent) and cls is not object:
            raise InvalidHandlerError(
                f"handler {name} annotates its event parameter as {annotation!r}, which is "
                "not a DomainEvent subclass; annotate it with the event class it handles"
            )
    if isinstance(target, str):
        regex = compile_pattern(target)
        wrong = [
            cls.__qualname__
            for cls in registry
            if regex.match(cls.event_type) and not issubclass(cls, tuple(accepted))
        ]
        if wrong:
            raise InvalidHandlerError(
                f"handler {name} is subscribed to pattern {target!r}, which also matches "
                f"{', '.join(sorted(wrong))}, but its parameter is annotated {annotation!r}; "
                "annotate it with DomainEvent (or a common base class) or narrow the pattern"
            )
        return
    if not issubclass(target, tuple(accepted)):
        raise InvalidHandlerError(
            f"handler {name} is subscribed to {target.__qualname__} "
            f"({target.event_type!r}) but its parameter is annotated {annotation!r}; "
            "subscribe it to the type it handles or fix the annotation"
        )
