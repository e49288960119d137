"""Helpers for the sampler tests: small experts with the DiT call signature that record calls."""
from __future__ import annotations

from typing import Iterator, Optional

import pytest
import torch
import torch.nn as nn

LATENT = (1, 4, 3, 4, 4)


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: one intra-op thread is many times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
TEXT = (1, 6, 8)


class ToyExpert(nn.Module):
    """A real nn.Module with the WanDiT forward signature and a nonlinear velocity.

    Every call is recorded (batch size, timesteps, inputs) so tests can see what the sampler
    sent to which expert.
    """

    def __init__(self, seed: int, channels: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix = nn.Parameter(torch.randn(channels, channels, generator=g) / channels ** 0.5)
        self.bias = nn.Parameter(torch.randn(channels, generator=g) * 0.1)
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                y: Optional[torch.Tensor] = None, clip_fea: Optional[torch.Tensor] = None,
                vace_context: Optional[torch.Tensor] = None, vace_scale: float = 1.0) -> torch.Tensor:
        self.calls.append(dict(batch=x.shape[0], t=t.detach().clone(), x=x.detach().clone(),
                               context=context, y=y, clip_fea=clip_fea,
                               vace_context=vace_context, vace_scale=vace_scale))
        batch = x.shape[0]
        s = t.float().reshape(batch, -1).mean(1).view(batch, 1, 1, 1, 1) / 1000.0
        out = torch.tanh(torch.einsum("oc,bcfhw->bofhw", self.mix, x)) * (0.5 + s)
        out = out + self.bias.view(1, -1, 1, 1, 1) + context.mean(dim=(1, 2)).view(batch, 1, 1, 1, 1)
        if y is not None:
            out = out + 0.1 * y.mean(dim=1, keepdim=True)
        if clip_fea is not None:
            out = out + 0.1 * clip_fea.mean(dim=(1, 2)).view(batch, 1, 1, 1, 1)
        if vace_context is not None:
            contexts = [vace_context] if torch.is_tensor(vace_context) else list(vace_context)
            scales = [vace_scale] * len(contexts) if isinstance(vace_scale, (int, float)) \
                else list(vace_scale)
            for context_j, scale_j in zip(contexts, scales):
                out = out + 0.1 * scale_j * context_j.mean(dim=1, keepdim=True)
        return out.float()


class RecordingExpert(ToyExpert):
    """A ToyExpert whose ``.to()`` calls are recorded instead of performed.

    Stands in for a GPU move on a machine without one: ``location`` is where the module would
    be, and every forward notes where it and its ``partner`` are at that moment.
    """

    def __init__(self, seed: int, name: str) -> None:
        super().__init__(seed)
        self.name = name
        self.location = "cpu"
        self.to_calls: list[str] = []
        self.partner: Optional["RecordingExpert"] = None
        self.seen_locations: list[tuple[str, str, Optional[str]]] = []

    def to(self, *args, **kwargs):  # type: ignore[override]
        target = args[0] if args else kwargs.get("device")
        self.to_calls.append(str(target))
        self.location = str(torch.device(target))
        return self

    def forward(self, x, t, context, **kwargs):
        partner = None if self.partner is None else self.partner.location
        self.seen_locations.append((self.name, self.location, partner))
        return super().forward(x, t, context, **kwargs)


def text(seed: int) -> torch.Tensor:
    return torch.randn(*TEXT, generator=torch.Generator().manual_seed(seed))
