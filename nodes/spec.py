"""One declarative node description -> a V3 ``io.ComfyNode`` class (when ``comfy_api.latest`` is
importable) or a classic V1 class (fallback). Node modules only declare `NodeSpec` objects.

Execution contract: ``spec.fn(**inputs)`` returns a tuple of outputs in declared order, or a
`Result` carrying outputs plus a UI dict (``{"images": [...], "text": [...]}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

CATEGORY = "ImageDoctor"
PREFIX = "ImageDoctor"


@dataclass
class In:
    id: str
    type: str  # IMAGE, MASK, INT, FLOAT, STRING, BOOLEAN, COMBO, MODEL, VAE, CONDITIONING or custom
    tooltip: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: list | Callable[[], list] | None = None  # COMBO only (callable: evaluated at schema time)
    multiline: bool = False
    optional: bool = False
    control_after_generate: bool | None = None

    def combo_options(self) -> list:
        opts = self.options() if callable(self.options) else self.options
        return list(opts or [])


@dataclass
class Out:
    name: str
    type: str
    tooltip: str


@dataclass
class Result:
    values: tuple
    ui: dict | None = None


@dataclass
class NodeSpec:
    key: str  # class-mapping key without prefix, e.g. "Diagnose" -> "ImageDoctorDiagnose"
    display: str
    subcategory: str
    description: str
    inputs: list[In]
    outputs: list[Out]
    fn: Callable[..., Any]
    output_node: bool = False
    not_idempotent: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def node_id(self) -> str:
        return PREFIX + self.key

    @property
    def category(self) -> str:
        return f"{CATEGORY}/{self.subcategory}" if self.subcategory else CATEGORY

    def run(self, **kwargs) -> Result:
        for inp in self.inputs:  # fill omitted optional inputs with their defaults
            if inp.id not in kwargs and inp.optional:
                kwargs[inp.id] = inp.default
        out = self.fn(**kwargs)
        res = out if isinstance(out, Result) else Result(tuple(out))
        if len(res.values) != len(self.outputs):
            raise RuntimeError(f"{self.node_id} returned {len(res.values)} values for {len(self.outputs)} outputs")
        return res


# ----------------------------------------------------------------------------------- V1
def _v1_input(inp: In) -> tuple:
    opts: dict[str, Any] = {"tooltip": inp.tooltip}
    for key in ("default", "min", "max", "step"):
        value = getattr(inp, key)
        if value is not None:
            opts[key] = value
    if inp.type == "STRING" and inp.multiline:
        opts["multiline"] = True
    if inp.control_after_generate:
        opts["control_after_generate"] = True
    if inp.type == "COMBO":
        return (inp.combo_options(), opts)
    return (inp.type, opts)


def build_v1(spec: NodeSpec) -> type:
    def INPUT_TYPES(cls):  # noqa: N802
        d: dict[str, dict] = {"required": {}}
        for inp in spec.inputs:
            d.setdefault("optional" if inp.optional else "required", {})[inp.id] = _v1_input(inp)
        return d

    def execute(self, **kwargs):
        res = spec.run(**kwargs)
        if res.ui is not None:
            return {"ui": res.ui, "result": res.values}
        return res.values

    attrs = {
        "INPUT_TYPES": classmethod(INPUT_TYPES),
        "RETURN_TYPES": tuple(o.type for o in spec.outputs),
        "RETURN_NAMES": tuple(o.name for o in spec.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in spec.outputs),
        "FUNCTION": "execute",
        "CATEGORY": spec.category,
        "DESCRIPTION": spec.description,
        "OUTPUT_NODE": spec.output_node,
        "NOT_IDEMPOTENT": spec.not_idempotent,
        "execute": execute,
        "SPEC": spec,
        "__doc__": spec.description,
    }
    return type(spec.node_id, (), attrs)


# ----------------------------------------------------------------------------------- V3
_V3_TYPES = {
    "IMAGE": "Image", "MASK": "Mask", "INT": "Int", "FLOAT": "Float", "STRING": "String",
    "BOOLEAN": "Boolean", "COMBO": "Combo", "MODEL": "Model", "VAE": "Vae", "CONDITIONING": "Conditioning",
}


def _v3_type(io, type_name: str):
    attr = _V3_TYPES.get(type_name)
    if attr is not None and hasattr(io, attr):
        return getattr(io, attr)
    return io.Custom(type_name)


def _v3_input(io, inp: In):
    t = _v3_type(io, inp.type)
    kw: dict[str, Any] = {"tooltip": inp.tooltip, "optional": inp.optional}
    if inp.type == "COMBO":
        return t.Input(inp.id, options=inp.combo_options(), default=inp.default, **kw)
    if inp.type in ("INT", "FLOAT"):
        for key in ("default", "min", "max", "step"):
            if getattr(inp, key) is not None:
                kw[key] = getattr(inp, key)
        if inp.control_after_generate:
            kw["control_after_generate"] = True
        return t.Input(inp.id, **kw)
    if inp.type == "STRING":
        return t.Input(inp.id, default=inp.default, multiline=inp.multiline, **kw)
    if inp.type == "BOOLEAN":
        return t.Input(inp.id, default=inp.default, **kw)
    return t.Input(inp.id, **kw)


def build_v3(spec: NodeSpec, io) -> type:
    def define_schema(cls):
        return io.Schema(
            node_id=spec.node_id,
            display_name=spec.display,
            category=spec.category,
            description=spec.description,
            inputs=[_v3_input(io, i) for i in spec.inputs],
            # output ids are prefixed so they never clash with input ids (V3 requires uniqueness)
            outputs=[_v3_type(io, o.type).Output(id=f"out_{o.name}", display_name=o.name, tooltip=o.tooltip)
                     for o in spec.outputs],
            is_output_node=spec.output_node,
            not_idempotent=spec.not_idempotent,
        )

    def execute(cls, **kwargs):
        res = spec.run(**kwargs)
        return io.NodeOutput(*res.values, ui=res.ui)

    attrs = {
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
        "SPEC": spec,
        "__doc__": spec.description,
    }
    return type(spec.node_id, (io.ComfyNode,), attrs)


def v3_io():
    """``comfy_api.latest.io`` or None when the V3 API is not importable."""
    try:
        from comfy_api.latest import io  # type: ignore

        if not hasattr(io, "ComfyNode") or not hasattr(io, "Schema"):
            return None
        return io
    except Exception:  # noqa: BLE001 - any failure means: use V1
        return None


def build(spec: NodeSpec, io=None) -> type:
    return build_v3(spec, io) if io is not None else build_v1(spec)
