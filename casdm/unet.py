"""The DDPM/ADM-style UNet (Ho et al. 2020; Dhariwal & Nichol 2021), every size by arguments."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps, [B] -> [B, dim] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the width allows, fewer otherwise."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added between (DDPM's ResNet block)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(
            norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.out_layers = nn.Sequential(
            norm(out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head self-attention over spatial positions, with a residual connection.

    The q, k, v and output projections are linear layers over the positions' channel vectors
    (the 1x1 Conv1d of ADM's QKVAttention is the same map; as linear layers on [B, HW, C]
    they take the faster matmul path). A checkpoint written with the Conv1d projections loads:
    their [out, in, 1] weights are squeezed to [out, in].
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).reshape(B, C, H * W).transpose(1, 2)  # [B, HW, C]
        qkv = self.qkv(tokens).reshape(B, H * W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, HW, C / heads]
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        return x + self.proj(h).transpose(1, 2).reshape(B, C, H, W)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("qkv.weight", "proj.weight"):
            weight = state_dict.get(prefix + name)
            if weight is not None and weight.ndim == 3:  # a Conv1d projection: [out, in, 1]
                state_dict[prefix + name] = weight.squeeze(-1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Level(nn.Module):
    """One resolution step: a residual block, optionally followed by attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn_heads: int):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = Attention(out_ch, attn_heads) if attn_heads else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class UNet(nn.Module):
    """eps/x0 network: `UNet(...)(x, t) -> [B, out_channels, H, W]`.

    Each of the len(channel_mults) levels holds num_res_blocks residual blocks (with attention
    where the feature map's side is in attention_resolutions) and halves the resolution between
    levels; the decoder mirrors it with skip connections, as in Ho et al. 2020, Appendix B.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution: int,
        base_channels: int = 128,
        channel_mults: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        num_heads: int = 1,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.base_channels = base_channels
        emb_dim = 4 * base_channels
        self.time_embed = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def heads(res: int) -> int:
            return num_heads if res in attention_resolutions else 0

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, ch, res = [base_channels], base_channels, resolution
        for i, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(Level(ch, base_channels * mult, emb_dim, dropout, heads(res)))
                ch = base_channels * mult
                skips.append(ch)
            self.down.append(blocks)
            last = i == len(channel_mults) - 1
            self.downsample.append(
                nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1)
            )
            if not last:
                skips.append(ch)
                res //= 2

        self.mid = nn.ModuleList(
            [Level(ch, ch, emb_dim, dropout, num_heads), Level(ch, ch, emb_dim, dropout, 0)]
        )

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(
                    Level(ch + skips.pop(), base_channels * mult, emb_dim, dropout, heads(res))
                )
                ch = base_channels * mult
            self.up.append(blocks)
            first = i == 0
            self.upsample.append(
                nn.Identity()
                if first
                else nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)
                )
            )
            if not first:
                res *= 2

        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.base_channels))
        h = self.stem(x)
        hs = [h]
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for block in blocks:
                h = block(h, emb)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for blocks, up in zip(self.up, self.upsample, strict=True):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            h = up(h)
        return self.out(h)
