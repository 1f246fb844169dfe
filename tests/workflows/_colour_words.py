"""A weight-free, test-only text-capable extractor (fulcra.interfaces.TextExtractor): pixel colours
(pooled to a patch grid) as features, colour words as the text side, relevancy as LERF's Eq. C.2
against a grey canonical phrase. Loaded by ``extractor=_colour_words:ColourWords`` (module:attr)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

WORDS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "grey": (1.0, 1.0, 1.0),
}


class ColourWords:
    name = "colour_words"
    dim = 3

    def __init__(self, patch_size: int = 2, temperature: float = 10.0):
        self.patch_size, self.temperature = int(patch_size), float(temperature)

    def __call__(self, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x = images.float()
        return F.avg_pool2d(x, self.patch_size) if self.patch_size > 1 else x

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for t in [texts] if isinstance(texts, str) else texts:
            hit = [w for w in WORDS if w in t.lower()]
            if not hit:
                raise ValueError(f"colour_words: no colour word in {t!r} (knows {', '.join(WORDS)})")
            rows.append(torch.tensor(WORDS[hit[0]]))
        return F.normalize(torch.stack(rows), dim=-1)

    def relevancy(self, features: torch.Tensor, queries, channel_dim: int = -1) -> torch.Tensor:
        q = queries if isinstance(queries, torch.Tensor) else self.embed_text(queries)
        f = F.normalize(features.movedim(channel_dim, -1).float(), dim=-1)
        grey = F.normalize(torch.tensor([[1.0, 1.0, 1.0]]), dim=-1).to(f.device)
        r = torch.sigmoid(self.temperature * (f @ q.to(f.device).T - (f @ grey.T).amax(-1, keepdim=True)))
        return r.movedim(-1, channel_dim)
