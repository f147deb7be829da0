"""Image embeddings from a local transformers vision model (CLIP, BLIP, SigLIP, DINOv2, ...).

The folder is whatever ``save_pretrained`` wrote: ``config.json``, the weights and the image
processor's ``preprocessor_config.json``. The model class is the one the folder's config names in
``architectures`` (so a ``CLIPVisionModelWithProjection`` or a full ``CLIPModel`` keep their
projection), else ``AutoModel``. The embedding of an image is, in order of preference, the
projected image embedding (``get_image_features`` / ``image_embeds``: the CLIP space LAION's
aesthetic head expects), the pooled output of the model (or of its ``vision_model``, e.g. BLIP's,
the reference code's encoder), or the mean of the last hidden states.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from attribution_pipeline.data.contributors import to_uint8


class VisionEncoder:
    """images float ``(N, C, H, W)`` in [-1, 1] (or uint8 HWC arrays) → embeddings ``(N, D)`` float64."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        path = str(path)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        names = [n for n in (getattr(config, "architectures", None) or []) if hasattr(transformers, n)]
        cls = getattr(transformers, names[0]) if names else AutoModel
        self.model = cls.from_pretrained(path, local_files_only=True).eval().to(device)
        self.model.requires_grad_(False)
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.device = torch.device(device)
        self.path = path

    @torch.no_grad()
    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.device)
        model = self.model
        if hasattr(model, "get_image_features"):  # CLIPModel, SiglipModel, BlipModel: projected embedding
            out = model.get_image_features(pixel_values=pixel_values)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        if hasattr(model, "visual_projection"):  # CLIPVisionModelWithProjection
            return model(pixel_values=pixel_values).image_embeds
        if hasattr(model, "vision_model"):  # a multi-modal model (e.g. BlipForQuestionAnswering): its vision tower
            model = model.vision_model
        out = model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(dim=1)

    def __call__(self, images, batch_size: int = 64) -> np.ndarray:
        if isinstance(images, torch.Tensor):
            arr = to_uint8(images)
            if arr.shape[1] == 1:
                arr = np.repeat(arr, 3, axis=1)
            images = list(arr.transpose(0, 2, 3, 1))
        out = []
        for i in range(0, len(images), batch_size):
            inputs = self.processor(images=list(images[i:i + batch_size]), return_tensors="pt")
            out.append(self._embed(inputs["pixel_values"]).float().cpu().numpy())
        if not out:
            raise ValueError("no images to embed")
        return np.concatenate(out).astype(np.float64)


@functools.lru_cache(maxsize=4)
def load_vision_encoder(path: str, device: str = "cpu") -> VisionEncoder:
    """One ``VisionEncoder`` per (folder, device) per process."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: missing; expected a transformers vision model folder "
                                "(config.json, weights, preprocessor_config.json)")
    return VisionEncoder(path, device)


def read_image_folder(folder: str | Path) -> list[np.ndarray]:
    """Every PNG/JPEG under ``folder`` (sorted) as uint8 RGB ``(H, W, 3)`` arrays."""
    from PIL import Image

    files = sorted(f for f in Path(folder).rglob("*")
                   if f.suffix.lower() in (".png", ".jpg", ".jpeg") and not f.name.startswith("."))
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
