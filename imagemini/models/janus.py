"""The whole Janus network, with the parameter names of transformers'
`JanusForConditionalGeneration`, so its `model.safetensors` loads as is:

    model = load_janus("models/bundled", dtype=torch.bfloat16)

Pieces and what they are for:
- `model.language_model`  Llama decoder over text tokens and image embeddings (llama.py)
- `model.vision_model` + `model.aligner`  image understanding: pixels -> placeholder embeddings
- `model.vqmodel`  image tokenizer: codes <-> pixels (vq.py)
- `model.generation_embeddings` + `model.generation_aligner`  generated codes -> decoder input
- `model.generation_head`  decoder hidden state -> image-code logits
- `lm_head`  decoder hidden state -> text logits (tied to the token embeddings if absent)
"""

from __future__ import annotations

import copy
import hashlib
import threading
from pathlib import Path

import torch
from torch import nn

from .config import JanusConfig
from .layers import AlignerMLP, DirectCall, Linear, activation
from .llama import Attend, LlamaModel, padded_causal_attend
from .vision import VisionModel
from .vq import VQModel
from .weights import read_tensors, weight_files


_ENCODER32_LOCK = threading.Lock()


class GenerationHead(DirectCall, nn.Module):
    def __init__(self, hidden: int, projection: int, num_codes: int, act: str) -> None:
        super().__init__()
        self.proj_out = Linear(hidden, projection)
        self.vision_head = Linear(projection, num_codes)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision_head(self.act(self.proj_out(x)))


class JanusModel(nn.Module):
    def __init__(self, cfg: JanusConfig) -> None:
        super().__init__()
        v, q, t = cfg.vision, cfg.vq, cfg.text
        self.vision_model = VisionModel(v)
        self.aligner = AlignerMLP(v.hidden_size, v.projection_dim, v.depth, v.hidden_act)
        self.vqmodel = VQModel(q)
        self.generation_embeddings = nn.Embedding(q.num_embeddings, q.embed_dim)
        self.generation_aligner = AlignerMLP(q.embed_dim, q.projection_dim, q.num_hidden_layers, q.hidden_act)
        self.generation_head = GenerationHead(q.image_token_embed_dim, q.projection_dim, q.num_embeddings, q.hidden_act)
        self.language_model = LlamaModel(t)


class Janus(nn.Module):
    def __init__(self, cfg: JanusConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = JanusModel(cfg)
        self.lm_head = Linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        """Where the weights are (the token embeddings are never released by the engine)."""
        return self.model.language_model.embed_tokens.weight.device

    # --- the pieces the engine composes -------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.embed_tokens(ids)

    def embed_image_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.generation_aligner(self.model.generation_embeddings(codes))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [n, 3, S, S] (processor-normalised) -> [n, num_patches, text_hidden]."""
        return self.model.aligner(self.model.vision_model(pixels))

    def decoder(self, embeds: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        return self.model.language_model(embeds, positions, attend)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.generation_head(hidden)

    def encode_image_codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [n, 3, S, S] in [-1, 1] -> VQ codes [n, grid²] (the source echo's, processor.py),
        always in float32: in bfloat16 3% of the codes (merged) differ from those training
        wrote, in float32 from the 16-bit stored weights 0.5% (200 held-out scenes)."""
        vq = self.model.vqmodel
        if vq.quantize.embedding.weight.dtype == torch.float32:
            return vq.encode(pixels.float())
        with _ENCODER32_LOCK:
            encoder = self.__dict__.get("_encoder32")  # a plain attribute: not a submodule, not in state_dict
            if encoder is None:
                encoder = self.__dict__["_encoder32"] = copy.deepcopy(vq).float()
        return encoder.encode(pixels.float())

    def decode_image_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [n, grid²] -> pixels [n, 3, S, S], roughly in [-1, 1]."""
        return self.model.vqmodel.decode(codes)

    @torch.inference_mode()
    def decode_image_pixels(self, codes: list[int]) -> torch.Tensor:
        """One image's codes -> uint8 pixels [S, S, 3] (one image per call: same bits always)."""
        pixels = self.decode_image_codes(torch.tensor([codes], device=self.device))[0].float()
        return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu()

    # --- whole-sequence forward (reference checks and training) --------------------------
    def input_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image placeholders replaced by encoded images, in order; ids from
        the text vocabulary size up are image codes (a source echo), embedded as drawn codes are."""
        vocab = self.cfg.text.vocab_size
        codes = input_ids >= vocab
        embeds = self.embed_tokens(input_ids.clamp(max=vocab - 1))
        if bool(codes.any()):
            embeds[codes] = self.embed_image_codes(input_ids[codes] - vocab).to(embeds.dtype)
        if pixel_values is not None:
            features = self.encode_images(pixel_values).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
            mask = input_ids == self.cfg.image_token_id
            if int(mask.sum()) != features.shape[0]:
                raise ValueError(f"{int(mask.sum())} image placeholder tokens for {features.shape[0]} image features")
            embeds = embeds.masked_scatter(mask[..., None], features)
        return embeds

    def hidden_states(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, T, hidden] (left- or right-padded per attention_mask) -> [B, T, hidden]."""
        b, t, h = embeds.shape
        key_mask = attention_mask.bool() if attention_mask is not None else None
        if key_mask is not None and bool((key_mask[:, 1:] <= key_mask[:, :-1]).all()):
            # Right padding: causal attention never lets a real token see the padding after it.
            key_mask = None
        if key_mask is not None:
            positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            positions = torch.arange(t, device=embeds.device).expand(b, t)
        out = self.decoder(embeds.reshape(b * t, h), positions.reshape(-1), padded_causal_attend(b, t, key_mask))
        return out.view(b, t, h)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text logits [B, T, vocab] for a batch of token ids."""
        embeds = self.input_embeddings(input_ids, pixel_values)
        return self.text_logits(self.hidden_states(embeds, attention_mask))


def weights_digest(path: str | Path) -> str:
    """sha256 of the checkpoint's weight files, in order: part of the system fingerprint."""
    h = hashlib.sha256()
    for file in weight_files(path):
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_janus(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Janus:
    """Build the network from `config.json` and fill it from its weight files (weights.py: one
    file or the shards of an index), each tensor read once into its final storage. On another
    device each tensor is copied there as it is read: host memory holds one tensor at a time.

    Every parameter must be present in the files (except a tied `lm_head`), and every tensor
    in the files must belong to the network: a partial or foreign checkpoint is an error.
    """
    path = Path(path)
    cfg = JanusConfig.from_dir(path)
    with torch.device("meta"):
        model = Janus(cfg)
    expected = {name: p.shape for name, p in model.named_parameters()}
    device = torch.device(device)
    state = {name: tensor.to(device) for name, tensor in read_tensors(weight_files(path), expected, dtype)}
    if "lm_head.weight" not in state and "model.language_model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval()
