"""Defect Mask and Defects to SEGS (Impact Pack)."""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..core.masks import SOURCES, WEIGHTINGS, defect_mask, heatmap_mask
from ..core.geometry import box_mask
from ..core.refine import context_box
from .comfy_types import DIAGNOSIS, SEGS, ComfyInputError, diagnoses, from_masks, image_batch
from .spec import In, NodeSpec, Out

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


def defect_mask_node(diagnosis, source="boxes", labels="all", min_importance=0, threshold=0.5,
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


def defects_to_segs_node(image, diagnosis, labels="all", min_importance=0, crop_factor=1.5, drop_size=8,
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


DEFECT_MASK = NodeSpec(
    key="DefectMask",
    display="Defect Mask",
    subcategory="mask",
    description="MASK of the defects: thresholded heatmaps, defect boxes (binary or importance-weighted) or "
    "both; then grow/shrink and feather in pixels.",
    inputs=[
        In("diagnosis", DIAGNOSIS, "DIAGNOSIS from the Diagnose node."),
        In("source", "COMBO", "heatmaps, boxes or both (pixel-wise max).", options=list(SOURCES), default="boxes"),
        In("labels", "COMBO", "Which defect labels/heatmaps to include.", options=LABEL_CHOICES, default="all"),
        In("min_importance", "INT", "Ignore defect boxes below this importance (0 keeps all).", default=0, min=0,
           max=100),
        In("threshold", "FLOAT", "Heatmap threshold.", default=0.5, min=0.0, max=1.0, step=0.01),
        In("weighting", "COMBO", "binary: 0/1; importance: importance/100 in boxes and the heatmap value.",
           options=list(WEIGHTINGS), default="binary"),
        In("grow", "INT", "Grow (positive) or shrink (negative) the mask by this many pixels.", default=0,
           min=-256, max=256),
        In("feather", "FLOAT", "Soft edge width in pixels (0 = hard edges).", default=0.0, min=0.0, max=256.0,
           step=1.0),
    ],
    outputs=[Out("mask", "MASK", "Defect masks [B,H,W].")],
    fn=defect_mask_node,
)

DEFECTS_TO_SEGS = NodeSpec(
    key="DefectsToSEGS",
    display="Defects to SEGS",
    subcategory="mask",
    description="Impact Pack SEGS from the defect boxes of one image, for Impact Pack's detailers.",
    inputs=[
        In("image", "IMAGE", "Image the diagnosis describes."),
        In("diagnosis", DIAGNOSIS, "DIAGNOSIS from the Diagnose node."),
        In("labels", "COMBO", "Which defect labels become segments.", options=LABEL_CHOICES, default="all"),
        In("min_importance", "INT", "Skip defects below this importance.", default=0, min=0, max=100),
        In("crop_factor", "FLOAT", "Context around each box (crop region = box x factor).", default=1.5, min=1.0,
           max=10.0, step=0.1),
        In("drop_size", "INT", "Skip boxes smaller than this many pixels on a side.", default=8, min=1,
           max=4096),
        In("mask_source", "COMBO", "Segment mask: the box, or the thresholded heatmap inside the box.",
           options=["boxes", "heatmaps_in_boxes"], default="boxes"),
        In("threshold", "FLOAT", "Heatmap threshold for heatmaps_in_boxes.", default=0.5, min=0.0, max=1.0,
           step=0.01),
        In("batch_index", "INT", "Which image of the batch (SEGS describe one image).", default=0, min=0,
           max=4095),
    ],
    outputs=[Out("segs", SEGS, "Impact Pack SEGS ((H, W), [SEG, ...]).")],
    fn=defects_to_segs_node,
)

SPECS = [DEFECT_MASK, DEFECTS_TO_SEGS]
