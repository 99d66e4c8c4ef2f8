"""Defect Mask and Defects to SEGS (Impact Pack)."""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..core.masks import SOURCES, WEIGHTINGS, defect_mask, heatmap_mask
from ..core.geometry import box_mask
from ..core.refine import context_box
from .comfy_io import Diagnosis, Segs, io
from .comfy_types import ComfyInputError, diagnoses, from_masks, image_batch

LABEL_CHOICES = ["all", "artifact", "misalignment"]


def _seg_type():
    """Impact Pack's SEG namedtuple when installed, else an identical one."""
    try:
        from impact.core import SEG  # type: ignore

        return SEG
    except Exception:  # noqa: BLE001
        return _SEG


_SEG = namedtuple("SEG", ["cropped_image", "cropped_mask", "confidence", "crop_region", "bbox", "label",
                          "control_net_wrapper"], defaults=[None])


def _labels(labels: str):
    if labels not in LABEL_CHOICES:
        raise ComfyInputError(f"input 'labels' must be one of {LABEL_CHOICES}, got {labels!r}")
    return None if labels == "all" else labels


def _defect_mask(diagnosis, source="boxes", labels="all", min_importance=0, threshold=0.5,
                 weighting="binary", grow=0, feather=0):
    diags = diagnoses(diagnosis, "diagnosis")
    if len({(d.width, d.height) for d in diags}) != 1:
        raise ComfyInputError("input 'diagnosis' describes images of different sizes; a MASK batch needs one size")
    if source not in SOURCES:
        raise ComfyInputError(f"input 'source' must be one of {list(SOURCES)}, got {source!r}")
    if weighting not in WEIGHTINGS:
        raise ComfyInputError(f"input 'weighting' must be one of {list(WEIGHTINGS)}, got {weighting!r}")
    lab = _labels(labels)
    masks = [defect_mask(d, source, lab, int(min_importance), float(threshold), weighting, int(grow), float(feather))
             for d in diags]
    return (from_masks(masks),)


def _defects_to_segs(image, diagnosis, labels="all", min_importance=0, crop_factor=1.5, drop_size=8,
                     mask_source="boxes", threshold=0.5, batch_index=0):
    imgs = image_batch(image, "image")
    b, h, w = imgs.shape[0], imgs.shape[1], imgs.shape[2]
    if not 0 <= int(batch_index) < b:
        raise ComfyInputError(f"input 'batch_index' is {batch_index} but the batch has {b} images")
    diags = diagnoses(diagnosis, "diagnosis", batch=b, size=(h, w))
    d = diags[int(batch_index)]
    lab = _labels(labels)
    if mask_source not in ("boxes", "heatmaps_in_boxes"):
        raise ComfyInputError(f"input 'mask_source' must be 'boxes' or 'heatmaps_in_boxes', got {mask_source!r}")
    hm = heatmap_mask(d, lab, float(threshold)) if mask_source == "heatmaps_in_boxes" else None
    SEG = _seg_type()
    segs = []
    img = imgs[int(batch_index) : int(batch_index) + 1]
    for defect in d.defects_of(lab, int(min_importance)):
        x0, y0, x1, y1 = defect.box
        if x1 - x0 < drop_size or y1 - y0 < drop_size:
            continue
        cx0, cy0, cx1, cy1 = context_box(defect.box, w, h, float(crop_factor), min_crop=1)
        full = box_mask(defect.box, w, h).astype(np.float32)
        if hm is not None:
            full = full * hm
        cropped_mask = np.ascontiguousarray(full[cy0:cy1, cx0:cx1], dtype=np.float32)
        segs.append(SEG(
            img[:, cy0:cy1, cx0:cx1, :].clone(),
            cropped_mask,
            float(defect.importance_or()) / 100.0,
            [cx0, cy0, cx1, cy1],
            [int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))],
            defect.label,
            None,
        ))
    return (((h, w), segs),)


class DefectMask(io.ComfyNode):
    """A MASK of the defects, from heatmaps, boxes or both."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorDefectMask",
            display_name="Defect Mask",
            category="ImageDoctor/mask",
            description="MASK of the defects: thresholded heatmaps, defect boxes (binary or importance-weighted) or "
            "both; then grow/shrink and feather in pixels.",
            inputs=[
                Diagnosis.Input("diagnosis", tooltip="DIAGNOSIS from the Diagnose node."),
                io.Combo.Input("source", options=list(SOURCES), default="boxes",
                               tooltip="heatmaps, boxes or both (pixel-wise max)."),
                io.Combo.Input("labels", options=LABEL_CHOICES, default="all",
                               tooltip="Which defect labels/heatmaps to include."),
                io.Int.Input("min_importance", default=0, min=0, max=100,
                             tooltip="Ignore defect boxes below this importance (0 keeps all)."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01, tooltip="Heatmap threshold."),
                io.Combo.Input("weighting", options=list(WEIGHTINGS), default="binary",
                               tooltip="binary: 0/1; importance: importance/100 in boxes and the heatmap value."),
                io.Int.Input("grow", default=0, min=-256, max=256,
                             tooltip="Grow (positive) or shrink (negative) the mask by this many pixels."),
                io.Float.Input("feather", default=0.0, min=0.0, max=256.0, step=1.0,
                               tooltip="Soft edge width in pixels (0 = hard edges)."),
            ],
            outputs=[io.Mask.Output("mask", display_name="mask", tooltip="Defect masks [B,H,W].")],
        )

    @classmethod
    def execute(cls, diagnosis, source="boxes", labels="all", min_importance=0, threshold=0.5, weighting="binary",
                grow=0, feather=0.0):
        return io.NodeOutput(*_defect_mask(diagnosis, source, labels, min_importance, threshold, weighting, grow,
                                           feather))


class DefectsToSEGS(io.ComfyNode):
    """Impact Pack SEGS from the defect boxes of one image."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorDefectsToSEGS",
            display_name="Defects to SEGS",
            category="ImageDoctor/mask",
            description="Impact Pack SEGS from the defect boxes of one image, for Impact Pack's detailers.",
            inputs=[
                io.Image.Input("image", tooltip="Image the diagnosis describes."),
                Diagnosis.Input("diagnosis", tooltip="DIAGNOSIS from the Diagnose node."),
                io.Combo.Input("labels", options=LABEL_CHOICES, default="all",
                               tooltip="Which defect labels become segments."),
                io.Int.Input("min_importance", default=0, min=0, max=100, tooltip="Skip defects below this importance."),
                io.Float.Input("crop_factor", default=1.5, min=1.0, max=10.0, step=0.1,
                               tooltip="Context around each box (crop region = box x factor)."),
                io.Int.Input("drop_size", default=8, min=1, max=4096,
                             tooltip="Skip boxes smaller than this many pixels on a side."),
                io.Combo.Input("mask_source", options=["boxes", "heatmaps_in_boxes"], default="boxes",
                               tooltip="Segment mask: the box, or the thresholded heatmap inside the box."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Heatmap threshold for heatmaps_in_boxes."),
                io.Int.Input("batch_index", default=0, min=0, max=4095,
                             tooltip="Which image of the batch (SEGS describe one image)."),
            ],
            outputs=[Segs.Output("segs", display_name="segs", tooltip="Impact Pack SEGS ((H, W), [SEG, ...]).")],
        )

    @classmethod
    def execute(cls, image, diagnosis, labels="all", min_importance=0, crop_factor=1.5, drop_size=8,
                mask_source="boxes", threshold=0.5, batch_index=0):
        return io.NodeOutput(*_defects_to_segs(image, diagnosis, labels, min_importance, crop_factor, drop_size,
                                               mask_source, threshold, batch_index))


NODES = [DefectMask, DefectsToSEGS]
