"""The subset of ComfyUI's V3 node API (``comfy_api.latest.io``) our nodes use, for ComfyUI
versions that predate it (and for headless use): the same node classes then present the classic
V1 interface (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``, ``VALIDATE_INPUTS``, ``IS_CHANGED``).

Only constructor arguments our nodes pass are accepted; anything else is a TypeError, so a node
that works here also builds against the real API (checked by the end-to-end harness).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ComfyNode", "Schema", "NodeOutput", "Custom", "Image", "Mask", "Int", "Float", "String", "Boolean",
           "Combo", "Model", "Vae", "Conditioning", "SEGS"]


def _prune(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class _Input:
    io_type = "*"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip

    def as_dict(self) -> dict:
        return _prune({"display_name": self.display_name, "tooltip": self.tooltip})

    def v1_type(self):
        return self.io_type


class _WidgetInput(_Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, default=None):
        super().__init__(id, display_name, optional, tooltip)
        self.default = default

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"default": self.default})


class _Output:
    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None):
        self.id, self.display_name, self.tooltip = id, display_name, tooltip


def _socket_type(io_type: str, input_cls=_Input) -> type:
    """A ComfyType-like class with nested ``Input`` / ``Output`` bound to ``io_type``."""
    return type(io_type, (), {
        "io_type": io_type,
        "Input": type("Input", (input_cls,), {"io_type": io_type}),
        "Output": type("Output", (_Output,), {"io_type": io_type}),
    })


def Custom(io_type: str) -> type:  # noqa: N802 - the name of the real API's factory
    return _socket_type(io_type)


class _IntInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, default=None, min=None, max=None,
                 step=None, control_after_generate=None):
        super().__init__(id, display_name, optional, tooltip, default)
        self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step,
                                           "control_after_generate": self.control_after_generate})


class _FloatInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, default=None, min=None, max=None,
                 step=None, round=None):
        super().__init__(id, display_name, optional, tooltip, default)
        self.min, self.max, self.step, self.round = min, max, step, round

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step, "round": self.round})


class _StringInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, multiline=False, placeholder=None,
                 default=None):
        super().__init__(id, display_name, optional, tooltip, default)
        self.multiline, self.placeholder = multiline, placeholder

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"multiline": self.multiline or None, "placeholder": self.placeholder})


class _ComboInput(_WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, default=None):
        super().__init__(id, display_name, optional, tooltip, default)
        self.options = list(options or [])

    def v1_type(self):
        return list(self.options)


Image = _socket_type("IMAGE")
Mask = _socket_type("MASK")
Model = _socket_type("MODEL")
Vae = _socket_type("VAE")
Conditioning = _socket_type("CONDITIONING")
SEGS = _socket_type("SEGS")
Int = _socket_type("INT", _IntInput)
Float = _socket_type("FLOAT", _FloatInput)
String = _socket_type("STRING", _StringInput)
Boolean = _socket_type("BOOLEAN", _WidgetInput)
Combo = _socket_type("COMBO", _ComboInput)


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    description: str = ""
    is_output_node: bool = False
    not_idempotent: bool = False

    def validate(self) -> None:
        ins, outs = [i.id for i in self.inputs], [o.id for o in self.outputs]
        if len(set(ins)) != len(ins) or len(set(outs)) != len(outs) or set(ins) & set(outs):
            raise ValueError(f"{self.node_id}: input and output ids must be unique, got {ins} / {outs}")


class NodeOutput:
    def __init__(self, *args: Any, ui: dict | None = None):
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args if self.args else None


class _classproperty:  # noqa: N801
    def __init__(self, fget):
        self.fget = fget

    def __get__(self, obj, owner):
        return self.fget(owner)


def _schema(cls) -> Schema:
    schema = cls.define_schema()
    schema.validate()
    return schema


class ComfyNode:
    """Base of a node written against the V3 API, seen by an old ComfyUI as a V1 node."""

    FUNCTION = "EXECUTE_NORMALIZED"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # V1 looks these up by name; define them only where the node implements the V3 hook,
        # because an old ComfyUI treats the mere presence of IS_CHANGED as "check every run".
        if "validate_inputs" in cls.__dict__:
            cls.VALIDATE_INPUTS = cls.validate_inputs
        if "fingerprint_inputs" in cls.__dict__:
            cls.IS_CHANGED = cls.fingerprint_inputs

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        out: dict[str, dict] = {"required": {}}
        for i in _schema(cls).inputs:
            out.setdefault("optional" if i.optional else "required", {})[i.id] = (i.v1_type(), i.as_dict())
        return out

    RETURN_TYPES = _classproperty(lambda cls: tuple(o.io_type for o in _schema(cls).outputs))
    RETURN_NAMES = _classproperty(lambda cls: tuple(o.display_name or o.io_type for o in _schema(cls).outputs))
    OUTPUT_TOOLTIPS = _classproperty(lambda cls: tuple(o.tooltip for o in _schema(cls).outputs))
    CATEGORY = _classproperty(lambda cls: _schema(cls).category)
    DESCRIPTION = _classproperty(lambda cls: _schema(cls).description)
    OUTPUT_NODE = _classproperty(lambda cls: _schema(cls).is_output_node)
    NOT_IDEMPOTENT = _classproperty(lambda cls: _schema(cls).not_idempotent)

    def EXECUTE_NORMALIZED(self, **kwargs):  # noqa: N802
        out = type(self).execute(**kwargs)
        if not isinstance(out, NodeOutput):
            out = NodeOutput(*out)
        return {"ui": out.ui, "result": out.args} if out.ui is not None else out.args
