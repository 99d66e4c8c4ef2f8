"""Prompt builders for the two published output formats, and the image resize policy.

The prompt strings are the published models' own instructions, reproduced character for
character (typos and odd spacing included) because the checkpoints were trained on them:
- ImageDoctor (``GYX97/ImageDoctor``): the upstream inference prompt, and the shorter
  score-only prompt its DenseFlow reward scorer uses with a pre-filled empty ``<think>``.
- SDG detector (``P1n3/sdg-detector-*``): the "thinkpe_imp" template (description + importance),
  with the default system prompt "You are a helpful assistant.".
"""

from __future__ import annotations

import math

FORMATS = ("imagedoctor", "sdg")

IMAGEDOCTOR_PROMPT = 'Given a caption and an image generated based on this caption, please analyze the provided image in detail. Evaluate it on various dimensions including Semantic Alignment (How well the image content corresponds to the caption), Aesthetics (composition, color usage, and overall artistic quality), Plausibility (realism and attention to detail), and Overall Impression (General subjective assessment of the image\'s quality). For each evaluation dimension, provide a score between 0-1 and provide a concise rationale for the score. Use a chain-of-thought process to detail your reasoning steps, and enclose all potential important areas and detailed reasoning within <think> and </think> tags. The important areas are represented in following format: ” I need to focus on the bounding box area. Proposed regions (xyxy): ..., which is an enumerated list in the exact format:1.[x1,y1,x2,y2];\n2.[x1,y1,x2,y2];\n3.[x1,y1,x2,y2]… Here, x1,y1 is the top-left corner, and x2,y2 is the bottom-right corner. Then, within the <answer> and </answer> tags, summarize your assessment in the following format: "Semantic Alignment score: ... \nMisalignment Locations: ...\nAesthetic score: ...\nPlausibility score: ... nArtifact Locations: ...\nOverall Impression score: ...". No additional text is allowed in the answer section.\n\n Your actual evaluation should be based on the quality of the provided image.**\n\nYour task is provided as follows:\nText Caption: [{prompt}]'

#: Score-only variant used by upstream's DenseFlow reward scorer (answer without reasoning).
IMAGEDOCTOR_FAST_PROMPT = 'Given a caption and an image generated based on this caption, please analyze the provided image in detail. Evaluate it on various dimensions including Semantic Alignment (How well the image content corresponds to the caption), Aesthetics (composition, color usage, and overall artistic quality), Plausibility (realism and attention to detail), and Overall Impression (General subjective assessment of the image\'s quality). For each evaluation dimension, provide a score between 0-1. Within the <answer> and </answer> tags, summarize your assessment in the following format: "Semantic Alignment score: ...\nMisalignment Locations: ...\nAesthetic score: ...\nPlausibility score: ...\nArtifact Locations: ...\nOverall Impression score: ...". No additional text is allowed in the answer section.\n\n Your actual evaluation should be based on the quality of the provided image.**\n\nYour task is provided as follows:\nText Caption: [{prompt}]'

#: Assistant pre-fill that makes ImageDoctor skip its reasoning (upstream reward scorer).
IMAGEDOCTOR_FAST_PREFILL = "<think>\n...</think>\n<answer>"

SDG_PROMPT = 'You are an AI image quality evaluator. You will be given **one image** to analyze.\n\n### Definitions\n\n**Misalignment**: Areas where the image content does NOT match the text caption, including:\n- Missing objects: Objects mentioned in caption but not present in image\n- Extra objects: Objects present in image but not mentioned in caption\n- Wrong attributes: Incorrect color, size, material, count, or other properties\n- Wrong spatial relationships: Incorrect positions, orientations, or arrangements\n\n**Artifact**: Visual defects in the generated image, including:\n- Distorted anatomy: Malformed hands, extra/missing limbs, wrong number    of fingers\n- Duplicated/missing parts: Repeated or absent body parts, objects\n- Warped geometry: Perspective errors, impossible shapes\n- Texture issues: Melted, smeared, or overly smooth textures\n- Unnatural edges: Jagged, broken, or blurry boundaries\n- Garbled text: Unreadable or malformed text/letters\n- Lighting inconsistencies: Wrong shadows, reflections, or light sources\n\nText Caption: {caption}\n\n**Goal**: Produce a detailed analysis    of the image quality and output bounding boxes with severity scores for all detected issues.\n\n### Strict Output Rules\nOutput **TWO blocks in this exact order**:\n1) `<think>` - Your detailed analysis\n2) `<answer>` - JSON list    of bounding boxes\n\n### Think Format (STRICT)\n<think>\n### Step 1: Caption Understanding\n- Briefly summarize what the caption requires (subject, key attributes, actions, setting, style/composition if mentioned).\n\n### Step 2: Visual Analysis & Defect Spotting (Issue Summary)\n- Describe the quality issues you observe in the image.\n- Each bullet MUST include:\n  (a) the issue category (artifact or misalignment)\n  (b) what is affected (object/part)\n  (c) concrete visual evidence\n\n### Step 3: Localization (Box-by-Box Grounding)\n- Provide a detailed, precise localization statement for EACH defect instance.\n</think>\n\n### Answer Format (for <answer>)\nReturn a JSON list:\n[\n    {"box_2d": [x0, y0, x1, y1], "label": "misalignment"|"artifact", "description": "brief description    of the issue", "importance": N}\n]\n\nBounding box coordinates are in normalized 0-1000 space: [x0, y0, x1, y1].\nIf there are no issues, output an empty list.\n\n### Importance Scoring\nFor EACH box, assign an integer importance score from 1 to 100:\n- 90-100: Critical defect, immediately obvious, ruins the image (e.g., missing limb, completely wrong subject, large garbled text).\n- 70-89: Major defect, clearly visible at normal viewing distance (e.g., extra fingers, noticeable texture melting, prominent unreadable text).\n- 40-69: Moderate defect, noticeable on closer inspection (e.g., minor hand deformity, slight color mismatch, small distorted detail).\n- 15-39: Minor defect, only visible on careful examination (e.g., tiny floating speck, slight boundary blur, minor lighting inconsistency).\n- 1-14: Negligible defect, barely perceptible (e.g., sub-pixel aliasing, faint halo, minuscule texture irregularity).\n\n### Description Style Guide\nFor EACH box, write `description` with richer detail:\n- 18 to 45 words per description.\n- Must mention the affected object/part.\n- Must include at least one concrete evidence phrase (e.g., fused contours, missing separations, distorted geometry, incorrect lettering, absent requested object, incorrect identity traits).\n- Do NOT use vague words like "weird/strange/bad".\n- Do NOT include numeric coordinates in description.\n\nNow analyze the image and produce your output:\n'

SDG_SYSTEM_PROMPT = "You are a helpful assistant."

#: ImageDoctor was trained on 512x512 images: inputs are resized to about this many pixels.
IMAGEDOCTOR_IMAGE_AREA = 512 * 512


def _clean_prompt(prompt: str) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"the prompt must be a string, got {type(prompt).__name__}")
    return prompt.strip()


def build_prompt(prompt: str, format: str = "imagedoctor", think: bool = True) -> str:
    """The user-turn text that follows the image for ``format`` ("imagedoctor" or "sdg").

    ``think=False`` selects ImageDoctor's score-only prompt (see `assistant_prefill`).
    """
    prompt = _clean_prompt(prompt)
    if format == "imagedoctor":
        template = IMAGEDOCTOR_PROMPT if think else IMAGEDOCTOR_FAST_PROMPT
        return template.replace("{prompt}", prompt)
    if format == "sdg":
        return SDG_PROMPT.replace("{caption}", prompt)
    raise ValueError(f"unknown format {format!r}; use one of {list(FORMATS)}")


def system_prompt(format: str) -> str | None:
    """The system turn the published model was trained with (None = the chat template's default)."""
    return SDG_SYSTEM_PROMPT if format == "sdg" else None


def assistant_prefill(format: str, think: bool = True) -> str:
    """Text placed at the start of the assistant turn before generation."""
    return IMAGEDOCTOR_FAST_PREFILL if (format == "imagedoctor" and not think) else ""


def build_messages(prompt: str, format: str = "imagedoctor", think: bool = True) -> list[dict]:
    """Chat messages (image placeholder + text) for a Qwen-VL processor's chat template."""
    messages: list[dict] = []
    system = system_prompt(format)
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": build_prompt(prompt, format, think)}],
        }
    )
    return messages


def resize_for_model(width: int, height: int, area: int | None = IMAGEDOCTOR_IMAGE_AREA) -> tuple[int, int]:
    """Size the image is resized to before the processor: about ``area`` pixels, aspect kept.

    Same rule as upstream ImageDoctor inference (scale ``sqrt(area / (w*h))``, truncated).
    ``area=None`` keeps the image as it is (the processor's own min/max pixels still apply).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if area is None:
        return int(width), int(height)
    r = math.sqrt(area / (width * height))
    return max(1, int(width * r)), max(1, int(height * r))
