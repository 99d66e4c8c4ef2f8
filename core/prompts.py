"""Prompt builders of the published checkpoints, and their image-resize policies.

Each published checkpoint was trained (and is queried by its authors) with one exact user text,
system turn, assistant pre-fill and input image size. A `PromptVariant` bundles the four; the
builders below return its strings byte for byte, typos, odd spacing and stray escapes included
(one changed character changes the tokens, and on identical weights the outputs move).

================  ==============================================================================
variant           used by (provenance in docs/fidelity.md)
================  ==============================================================================
imagedoctor       ``GYX97/ImageDoctor`` inference (default of format ``imagedoctor``)
imagedoctor-fast  its score-only reward scorer: answer pre-filled, caption punctuation stripped
imagedoctor-grpo  its GRPO rollouts: VLM-R1 "odLength" wrapper around the inference prompt
imagedoctor-mini  the pack's built-in mini diagnoser: the inference prompt without the stray
                  backslash (what it was trained on)
sdg-grpo          ``P1n3/sdg-detector-grpo``: "thinkpe_imp" query + its GRPO system turn (default
                  of format ``sdg``)
sdg-sft           ``P1n3/sdg-detector-sft``: the same query, no system turn
sdg-reward        how BoxFlow-GRPO queries the detector for rewards: no system turn, 512x512 image
sdg-gpt           the GPT zero-shot baseline prompt of the SDG paper (longer; our former default)
================  ==============================================================================

A fine-tune trained on another variant names it in its ``config.json``
(``imagedoctor_prompt_variant``; ``imagedoctor_image_area`` overrides the image policy), and
`Diagnoser.from_pretrained` reads both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FORMATS = ("imagedoctor", "sdg")

#: ImageDoctor was trained on images of about 512x512 pixels (aspect kept at inference).
IMAGEDOCTOR_IMAGE_AREA = 512 * 512


# ----------------------------------------------------------------------------------------------
# the published strings (runtime values; provenance in docs/fidelity.md)
# ----------------------------------------------------------------------------------------------
#: ImageDoctor inference prompt. Upstream writes a backslash before ” inside a Python f-string; the
#: invalid escape keeps the backslash at runtime, so the checkpoint is queried with ``format: \” I``.
IMAGEDOCTOR_PROMPT = 'Given a caption and an image generated based on this caption, please analyze the provided image in detail. Evaluate it on various dimensions including Semantic Alignment (How well the image content corresponds to the caption), Aesthetics (composition, color usage, and overall artistic quality), Plausibility (realism and attention to detail), and Overall Impression (General subjective assessment of the image\'s quality). For each evaluation dimension, provide a score between 0-1 and provide a concise rationale for the score. Use a chain-of-thought process to detail your reasoning steps, and enclose all potential important areas and detailed reasoning within <think> and </think> tags. The important areas are represented in following format: \\” I need to focus on the bounding box area. Proposed regions (xyxy): ..., which is an enumerated list in the exact format:1.[x1,y1,x2,y2];\n2.[x1,y1,x2,y2];\n3.[x1,y1,x2,y2]… Here, x1,y1 is the top-left corner, and x2,y2 is the bottom-right corner. Then, within the <answer> and </answer> tags, summarize your assessment in the following format: "Semantic Alignment score: ... \nMisalignment Locations: ...\nAesthetic score: ...\nPlausibility score: ... nArtifact Locations: ...\nOverall Impression score: ...". No additional text is allowed in the answer section.\n\n Your actual evaluation should be based on the quality of the provided image.**\n\nYour task is provided as follows:\nText Caption: [{caption}]'

#: Score-only prompt of upstream's DenseFlow reward scorer (used with `IMAGEDOCTOR_FAST_PREFILL`).
IMAGEDOCTOR_FAST_PROMPT = 'Given a caption and an image generated based on this caption, please analyze the provided image in detail. Evaluate it on various dimensions including Semantic Alignment (How well the image content corresponds to the caption), Aesthetics (composition, color usage, and overall artistic quality), Plausibility (realism and attention to detail), and Overall Impression (General subjective assessment of the image\'s quality). For each evaluation dimension, provide a score between 0-1. Within the <answer> and </answer> tags, summarize your assessment in the following format: "Semantic Alignment score: ...\nMisalignment Locations: ...\nAesthetic score: ...\nPlausibility score: ...\nArtifact Locations: ...\nOverall Impression score: ...". No additional text is allowed in the answer section.\n\n Your actual evaluation should be based on the quality of the provided image.**\n\nYour task is provided as follows:\nText Caption: [{caption}]'

#: Assistant pre-fill that makes ImageDoctor skip its reasoning (upstream reward scorer).
IMAGEDOCTOR_FAST_PREFILL = "<think>\n...</think>\n<answer>"

#: VLM-R1's "odLength" question template, wrapped around the question during ImageDoctor GRPO.
IMAGEDOCTOR_GRPO_WRAPPER = 'First thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>\n'
IMAGEDOCTOR_GRPO_PROMPT = IMAGEDOCTOR_GRPO_WRAPPER + IMAGEDOCTOR_PROMPT

#: The SDG detectors' query ("thinkpe_imp"): what they were trained on and are queried with.
SDG_THINKPE_IMP_PROMPT = (
    'You are an AI image quality evaluator. You will be given **one image** to analyze.\n'
    '\n'
    '### Definitions\n'
    '\n'
    '**Misalignment**: Areas where the image content does NOT match the text caption, including:\n'
    '- Missing objects: Objects mentioned in caption but not present in image\n'
    '- Extra objects: Objects present in image but not mentioned in caption\n'
    '- Wrong attributes: Incorrect color, size, material, count, or other properties\n'
    '- Wrong spatial relationships: Incorrect positions, orientations, or arrangements\n'
    '\n'
    '**Artifact**: Visual defects in the generated image, including:\n'
    '- Distorted anatomy: Malformed hands, extra/missing limbs, wrong number    of fingers\n'
    '- Duplicated/missing parts: Repeated or absent body parts, objects\n'
    '- Warped geometry: Perspective errors, impossible shapes\n'
    '- Texture issues: Melted, smeared, or overly smooth textures\n'
    '- Unnatural edges: Jagged, broken, or blurry boundaries\n'
    '- Garbled text: Unreadable or malformed text/letters\n'
    '- Lighting inconsistencies: Wrong shadows, reflections, or light sources\n'
    '\n'
    'Text Caption: {caption}\n'
    '\n'
    '**Goal**: Produce a detailed analysis    of the image quality and output bounding boxes with severity scores for all detected issues.\n'
    '\n'
    '### Strict Output Rules\n'
    'Output **TWO blocks in this exact order**:\n'
    '1) `<think>` - Your detailed analysis\n'
    '2) `<answer>` - JSON list    of bounding boxes\n'
    '\n'
    '### Think Format (STRICT)\n'
    '<think>\n'
    '### Step 1: Caption Understanding\n'
    '- Briefly summarize what the caption requires (subject, key attributes, actions, setting, style/composition if mentioned).\n'
    '\n'
    '### Step 2: Visual Analysis & Defect Spotting (Issue Summary)\n'
    '- Describe the quality issues you observe in the image.\n'
    '- Each bullet MUST include:\n'
    '  (a) the issue category (artifact or misalignment)\n'
    '  (b) what is affected\n'
    '  (c) concrete visual evidence\n'
    '\n'
    '### Step 3: Localization (Box-by-Box Grounding)\n'
    '- Provide a detailed, precise localization statement for EACH defect instance.\n'
    '</think>\n'
    '\n'
    '### Answer Format (for <answer>)\n'
    'Return a JSON list:\n'
    '[\n'
    '    {"box_2d": [x0, y0, x1, y1], "label": "misalignment"|"artifact", "description": "brief description    of the issue", "importance": N}\n'
    ']\n'
    '\n'
    'Bounding box coordinates are in normalized 0-1000 space: [x0, y0, x1, y1].\n'
    'If there are no issues, output an empty list.\n'
    '\n'
    '### Importance Scoring\n'
    'For EACH box, assign an integer importance score from 1 to 100:\n'
    '- 90-100: Critical defect, immediately obvious, ruins the image.\n'
    '- 70-89: Major defect, clearly visible at normal viewing distance.\n'
    '- 40-69: Moderate defect, noticeable on closer inspection.\n'
    '- 15-39: Minor defect, only visible on careful examination.\n'
    '- 1-14: Negligible defect, barely perceptible.\n'
    '\n'
    'Now analyze the image and produce your output:\n'
)

#: System turn of the GRPO detector's training (note the trailing space); SFT used none.
SDG_GRPO_SYSTEM_PROMPT = "You are a helpful assistant. "

#: The SDG paper's GPT zero-shot baseline prompt (longer: examples and a description style guide).
SDG_PROMPT = 'You are an AI image quality evaluator. You will be given **one image** to analyze.\n\n### Definitions\n\n**Misalignment**: Areas where the image content does NOT match the text caption, including:\n- Missing objects: Objects mentioned in caption but not present in image\n- Extra objects: Objects present in image but not mentioned in caption\n- Wrong attributes: Incorrect color, size, material, count, or other properties\n- Wrong spatial relationships: Incorrect positions, orientations, or arrangements\n\n**Artifact**: Visual defects in the generated image, including:\n- Distorted anatomy: Malformed hands, extra/missing limbs, wrong number    of fingers\n- Duplicated/missing parts: Repeated or absent body parts, objects\n- Warped geometry: Perspective errors, impossible shapes\n- Texture issues: Melted, smeared, or overly smooth textures\n- Unnatural edges: Jagged, broken, or blurry boundaries\n- Garbled text: Unreadable or malformed text/letters\n- Lighting inconsistencies: Wrong shadows, reflections, or light sources\n\nText Caption: {caption}\n\n**Goal**: Produce a detailed analysis    of the image quality and output bounding boxes with severity scores for all detected issues.\n\n### Strict Output Rules\nOutput **TWO blocks in this exact order**:\n1) `<think>` - Your detailed analysis\n2) `<answer>` - JSON list    of bounding boxes\n\n### Think Format (STRICT)\n<think>\n### Step 1: Caption Understanding\n- Briefly summarize what the caption requires (subject, key attributes, actions, setting, style/composition if mentioned).\n\n### Step 2: Visual Analysis & Defect Spotting (Issue Summary)\n- Describe the quality issues you observe in the image.\n- Each bullet MUST include:\n  (a) the issue category (artifact or misalignment)\n  (b) what is affected (object/part)\n  (c) concrete visual evidence\n\n### Step 3: Localization (Box-by-Box Grounding)\n- Provide a detailed, precise localization statement for EACH defect instance.\n</think>\n\n### Answer Format (for <answer>)\nReturn a JSON list:\n[\n    {"box_2d": [x0, y0, x1, y1], "label": "misalignment"|"artifact", "description": "brief description    of the issue", "importance": N}\n]\n\nBounding box coordinates are in normalized 0-1000 space: [x0, y0, x1, y1].\nIf there are no issues, output an empty list.\n\n### Importance Scoring\nFor EACH box, assign an integer importance score from 1 to 100:\n- 90-100: Critical defect, immediately obvious, ruins the image (e.g., missing limb, completely wrong subject, large garbled text).\n- 70-89: Major defect, clearly visible at normal viewing distance (e.g., extra fingers, noticeable texture melting, prominent unreadable text).\n- 40-69: Moderate defect, noticeable on closer inspection (e.g., minor hand deformity, slight color mismatch, small distorted detail).\n- 15-39: Minor defect, only visible on careful examination (e.g., tiny floating speck, slight boundary blur, minor lighting inconsistency).\n- 1-14: Negligible defect, barely perceptible (e.g., sub-pixel aliasing, faint halo, minuscule texture irregularity).\n\n### Description Style Guide\nFor EACH box, write `description` with richer detail:\n- 18 to 45 words per description.\n- Must mention the affected object/part.\n- Must include at least one concrete evidence phrase (e.g., fused contours, missing separations, distorted geometry, incorrect lettering, absent requested object, incorrect identity traits).\n- Do NOT use vague words like "weird/strange/bad".\n- Do NOT include numeric coordinates in description.\n\nNow analyze the image and produce your output:\n'

SDG_SYSTEM_PROMPT = "You are a helpful assistant."


# ----------------------------------------------------------------------------------------------
# image policies
# ----------------------------------------------------------------------------------------------
RESAMPLERS = ("bicubic", "lanczos", "bilinear", "nearest")
POLICY_KINDS = ("area", "fixed", "keep")


@dataclass(frozen=True)
class ImagePolicy:
    """How an image is resized before the processor (which then snaps it to its patch grid).

    - ``area``: about ``area`` pixels, aspect kept: scale ``sqrt(area / (w*h))``, each side
      truncated with ``int()`` and at least 1 (ImageDoctor inference).
    - ``fixed``: exactly ``width`` x ``height`` (aspect not kept; upstream reward scorers).
    - ``keep``: unchanged; the processor's own min/max pixel budget applies.
    """

    kind: str = "keep"
    area: int | None = None
    width: int | None = None
    height: int | None = None
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"unknown image policy {self.kind!r}; use one of {list(POLICY_KINDS)}")
        if self.resample not in RESAMPLERS:
            raise ValueError(f"unknown resample {self.resample!r}; use one of {list(RESAMPLERS)}")
        if self.kind == "area" and (not isinstance(self.area, int) or self.area < 1):
            raise ValueError(f"an 'area' image policy needs a positive integer area, got {self.area!r}")
        if self.kind == "fixed" and not (isinstance(self.width, int) and isinstance(self.height, int)
                                         and self.width > 0 and self.height > 0):
            raise ValueError(f"a 'fixed' image policy needs positive width and height, got {self.width}x{self.height}")

    @classmethod
    def from_area(cls, area: int | None, resample: str = "bicubic") -> "ImagePolicy":
        """``area`` pixels with the aspect kept, or ``keep`` for None (the trainers' ``image_area``)."""
        if area is None:
            return cls("keep")
        if isinstance(area, bool) or not isinstance(area, int) or area < 1:
            raise ValueError(f"image_area must be a positive integer number of pixels or None, got {area!r}")
        return cls("area", area=area, resample=resample)

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of ``width`` x ``height`` is resized to."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if self.kind == "fixed":
            return int(self.width), int(self.height)
        if self.kind == "area":
            return resize_for_model(width, height, self.area)
        return int(width), int(height)

    def apply(self, image):
        """Resize a PIL image by this policy (returned unchanged when the size already fits)."""
        from PIL import Image

        size = self.size_for(image.width, image.height)
        if size == image.size:
            return image
        return image.resize(size, getattr(Image.Resampling, self.resample.upper()))

    def describe(self) -> str:
        if self.kind == "area":
            return f"about {self.area} px, aspect kept, {self.resample}"
        if self.kind == "fixed":
            return f"{self.width}x{self.height}, {self.resample}"
        return "unchanged (the processor's pixel budget)"


def resize_for_model(width: int, height: int, area: int | None = IMAGEDOCTOR_IMAGE_AREA) -> tuple[int, int]:
    """Size the image is resized to before the processor: about ``area`` pixels, aspect kept.

    Upstream ImageDoctor inference's rule: scale ``sqrt(area / (w*h))``, each side ``int()``-
    truncated and at least 1. ``area=None`` keeps the image as it is.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if area is None:
        return int(width), int(height)
    r = math.sqrt(area / (width * height))
    return max(1, int(width * r)), max(1, int(height * r))


# ----------------------------------------------------------------------------------------------
# prompt variants
# ----------------------------------------------------------------------------------------------
#: Trailing whitespace and sentence punctuation (ASCII and CJK) that the score-only scorer strips.
_TRAILING_PUNCT = re.compile(r"[\s\.\,\!\?\:\;…、，。！？；：]+$")
CAPTION_RULES = ("raw", "strip-punct")


@dataclass(frozen=True)
class PromptVariant:
    """Everything a checkpoint's prompt depends on.

    ``template`` holds the user text after the image, with ``{caption}`` where the caption goes
    (substituted once, literally: braces in a caption are kept). ``system`` is the system turn
    (None: no system message, so the chat template's default applies). ``prefill`` starts the
    assistant turn. ``caption`` says how the caption is cleaned: ``raw`` (inserted as given) or
    ``strip-punct`` (stripped, then a trailing run of whitespace/punctuation removed).
    """

    name: str
    format: str
    template: str
    system: str | None = None
    prefill: str = ""
    caption: str = "raw"
    image: ImagePolicy = ImagePolicy()
    source: str = ""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"prompt variant {self.name!r}: unknown format {self.format!r}; use one of {list(FORMATS)}")
        if self.caption not in CAPTION_RULES:
            raise ValueError(f"prompt variant {self.name!r}: caption rule must be one of {list(CAPTION_RULES)}")
        if self.template.count("{caption}") != 1:
            raise ValueError(f"prompt variant {self.name!r}: the template needs exactly one '{{caption}}' slot")

    def clean_caption(self, caption: str) -> str:
        if not isinstance(caption, str):
            raise TypeError(f"the prompt must be a string, got {type(caption).__name__}")
        if self.caption == "strip-punct":
            return _TRAILING_PUNCT.sub("", caption.strip())
        return caption

    def user_text(self, caption: str) -> str:
        head, tail = self.template.split("{caption}")
        return head + self.clean_caption(caption) + tail


_IMAGEDOCTOR_512_BICUBIC = ImagePolicy("fixed", width=512, height=512, resample="bicubic")

PROMPT_VARIANTS: dict[str, PromptVariant] = {
    v.name: v
    for v in (
        PromptVariant("imagedoctor", "imagedoctor", IMAGEDOCTOR_PROMPT,
                      image=ImagePolicy.from_area(IMAGEDOCTOR_IMAGE_AREA),
                      source="EthanG97/ImageDoctor inference.py:10-20, :38-40"),
        PromptVariant("imagedoctor-fast", "imagedoctor", IMAGEDOCTOR_FAST_PROMPT, prefill=IMAGEDOCTOR_FAST_PREFILL,
                      caption="strip-punct", image=_IMAGEDOCTOR_512_BICUBIC,
                      source="EthanG97/ImageDoctor modify/flow_grpo/flow_grpo/doctor_hp.py:83, :91, :93, :115"),
        PromptVariant("imagedoctor-grpo", "imagedoctor", IMAGEDOCTOR_GRPO_PROMPT,
                      image=ImagePolicy("fixed", width=512, height=512, resample="lanczos"),
                      source="EthanG97/ImageDoctor grpo_jsonl_np.py:1538-1544, grpo_trainer.py:580; "
                             "om-ai-lab/VLM-R1 qwen_module.py:76-83"),
        # Not a published checkpoint's: the inference prompt without upstream's stray backslash, as
        # this pack wrote it before matching upstream byte for byte. The shipped imagedoctor-mini was
        # trained on it and names it in its config.json (one character changes its outputs).
        PromptVariant("imagedoctor-mini", "imagedoctor", IMAGEDOCTOR_PROMPT.replace("\\\u201d", "\u201d", 1),
                      image=ImagePolicy.from_area(IMAGEDOCTOR_IMAGE_AREA),
                      source="this pack (imagedoctor-mini, docs/mini-model.md)"),
        PromptVariant("sdg-grpo", "sdg", SDG_THINKPE_IMP_PROMPT, system=SDG_GRPO_SYSTEM_PROMPT,
                      source="nianbai006/SDG dense_grpo_rewards.py:107-169, sdg_detector/scripts/train_grpo.sh:87"),
        PromptVariant("sdg-sft", "sdg", SDG_THINKPE_IMP_PROMPT,
                      source="nianbai006/SDG dense_grpo_rewards.py:107-169, sdg_detector/scripts/train_sft.sh:67-91"),
        PromptVariant("sdg-reward", "sdg", SDG_THINKPE_IMP_PROMPT,
                      image=ImagePolicy("fixed", width=512, height=512, resample="bicubic"),
                      source="nianbai006/SDG dense_grpo_rewards.py:256-271"),
        PromptVariant("sdg-gpt", "sdg", SDG_PROMPT, system=SDG_SYSTEM_PROMPT,
                      source="nianbai006/SDG sdg_detector/inference/eval_gpt_thinkpe_imp.py:60"),
    )
}

#: The variant each format uses when neither the caller nor the checkpoint names one.
DEFAULT_VARIANTS = {"imagedoctor": "imagedoctor", "sdg": "sdg-grpo"}
#: ``think=False`` asks ImageDoctor for scores without reasoning.
NO_THINK_VARIANTS = {"imagedoctor": "imagedoctor-fast"}


def get_variant(variant: str | PromptVariant) -> PromptVariant:
    """The `PromptVariant` called ``variant`` (a `PromptVariant` is returned as is)."""
    if isinstance(variant, PromptVariant):
        return variant
    try:
        return PROMPT_VARIANTS[variant]
    except (KeyError, TypeError):
        raise ValueError(f"unknown prompt variant {variant!r}; use one of {sorted(PROMPT_VARIANTS)}") from None


def resolve_variant(format: str = "imagedoctor", think: bool = True,
                    variant: str | PromptVariant | None = None) -> PromptVariant:
    """The variant to use: ``variant`` if given (it must be of ``format``), else the format's
    default, or its score-only variant when ``think`` is False."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {list(FORMATS)}")
    if variant is None:
        name = DEFAULT_VARIANTS[format] if think else NO_THINK_VARIANTS.get(format, DEFAULT_VARIANTS[format])
        return PROMPT_VARIANTS[name]
    v = get_variant(variant)
    if v.format != format:
        raise ValueError(f"prompt variant {v.name!r} is for format {v.format!r}, not {format!r}; "
                         f"use one of {sorted(n for n, p in PROMPT_VARIANTS.items() if p.format == format)}")
    return v


def resolve_image_policy(variant: PromptVariant, image_area: int | None | str = "auto",
                         checkpoint_area: int | None | str = "auto") -> ImagePolicy:
    """The image policy a call uses: ``image_area`` if given (pixels, aspect kept; None = unchanged),
    else the checkpoint's ``imagedoctor_image_area``, else ``variant``'s own policy."""
    if image_area == "auto":
        image_area = checkpoint_area
    return variant.image if image_area == "auto" else ImagePolicy.from_area(image_area)


def build_prompt(prompt: str, format: str = "imagedoctor", think: bool = True,
                 variant: str | PromptVariant | None = None) -> str:
    """The user-turn text that follows the image (see `resolve_variant` for the choice)."""
    return resolve_variant(format, think, variant).user_text(prompt)


def system_prompt(format: str, variant: str | PromptVariant | None = None, think: bool = True) -> str | None:
    """The system turn the checkpoint was trained with (None: no system message)."""
    return resolve_variant(format, think, variant).system


def assistant_prefill(format: str, think: bool = True, variant: str | PromptVariant | None = None) -> str:
    """Text placed at the start of the assistant turn before generation."""
    return resolve_variant(format, think, variant).prefill


def build_messages(prompt: str, format: str = "imagedoctor", think: bool = True,
                   variant: str | PromptVariant | None = None) -> list[dict]:
    """Chat messages for a Qwen-VL processor's chat template: [system], user = image, then text."""
    v = resolve_variant(format, think, variant)
    messages: list[dict] = []
    if v.system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": v.system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": v.user_text(prompt)}]})
    return messages
