"""Signatures of the ComfyUI core nodes our workflows use, copied from ComfyUI's nodes.py /
comfy_extras (V1 INPUT_TYPES shape). Used to build and to validate workflows/ without ComfyUI.
Combo options of model files are ``None`` (they depend on the user's folders)."""

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "ddim", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]

# name -> {"required": {input: (type, opts)}, "optional": {...}, "outputs": [types], "output_node": bool}
CORE_NODES = {
    "LoadImage": {"required": {"image": (None, {"image_upload": True})}, "outputs": ["IMAGE", "MASK"]},
    "PreviewImage": {"required": {"images": ("IMAGE", {})}, "outputs": [], "output_node": True},
    "SaveImage": {"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                  "outputs": [], "output_node": True},
    "CheckpointLoaderSimple": {"required": {"ckpt_name": (None, {})}, "outputs": ["MODEL", "CLIP", "VAE"]},
    "CLIPTextEncode": {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP", {})},
                       "outputs": ["CONDITIONING"]},
    "EmptyLatentImage": {"required": {"width": ("INT", {"default": 512}), "height": ("INT", {"default": 512}),
                                      "batch_size": ("INT", {"default": 1})}, "outputs": ["LATENT"]},
    "KSampler": {"required": {
        "model": ("MODEL", {}), "seed": ("INT", {"default": 0, "control_after_generate": True}),
        "steps": ("INT", {"default": 20}), "cfg": ("FLOAT", {"default": 8.0}),
        "sampler_name": (SAMPLERS, {}), "scheduler": (SCHEDULERS, {}),
        "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "latent_image": ("LATENT", {}),
        "denoise": ("FLOAT", {"default": 1.0})}, "outputs": ["LATENT"]},
    "VAEDecode": {"required": {"samples": ("LATENT", {}), "vae": ("VAE", {})}, "outputs": ["IMAGE"]},
    "VAEEncode": {"required": {"pixels": ("IMAGE", {}), "vae": ("VAE", {})}, "outputs": ["LATENT"]},
    "SetLatentNoiseMask": {"required": {"samples": ("LATENT", {}), "mask": ("MASK", {})}, "outputs": ["LATENT"]},
    "ImageCompositeMasked": {"required": {
        "destination": ("IMAGE", {}), "source": ("IMAGE", {}), "x": ("INT", {"default": 0}),
        "y": ("INT", {"default": 0}), "resize_source": ("BOOLEAN", {"default": False})},
        "optional": {"mask": ("MASK", {})}, "outputs": ["IMAGE"]},
}

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def signatures():
    """name -> {"inputs": [(name, type_or_options, opts, optional)], "outputs": [...], "output_names": [...]}
    for the core nodes above and every ImageDoctor node (from the registry)."""
    from imagedoctor.nodes.registry import NODE_CLASS_MAPPINGS

    out = {}
    for name, d in CORE_NODES.items():
        inputs = [(k, t, o, False) for k, (t, o) in d["required"].items()]
        inputs += [(k, t, o, True) for k, (t, o) in d.get("optional", {}).items()]
        out[name] = {"inputs": inputs, "outputs": list(d["outputs"]), "output_names": list(d["outputs"])}
    for name, cls in NODE_CLASS_MAPPINGS.items():
        it = cls.INPUT_TYPES()
        inputs = [(k, v[0], v[1] if len(v) > 1 else {}, False) for k, v in it.get("required", {}).items()]
        inputs += [(k, v[0], v[1] if len(v) > 1 else {}, True) for k, v in it.get("optional", {}).items()]
        out[name] = {"inputs": inputs, "outputs": list(cls.RETURN_TYPES), "output_names": list(cls.RETURN_NAMES)}
    return out


def is_widget(type_or_options) -> bool:
    return type_or_options is None or isinstance(type_or_options, list) or type_or_options in WIDGET_TYPES
