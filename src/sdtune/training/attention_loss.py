"""Break-A-Scene's cross-attention loss: the learned token looks at the person, and only there.

Avrahami et al. 2023, "Break-A-Scene: Extracting Multiple Concepts from a Single Image" (section 3.2, their
``--lambda_attention`` 1e-2 and 16x16 maps on SD 2.1's 64x64 latents): besides the masked diffusion loss, the
cross-attention map of each learned token is pulled towards its mask::

    loss += weight * mean_b || A_b / max(A_b) - M_b ||^2

``A_b`` is the attention of every query pixel to the token (its vectors averaged), averaged over heads and over
the UNet's cross-attention layers at one map size, and ``M_b`` the sample's loss mask (``data.masked_loss``)
averaged down to that size. Why: a token whose attention covers the background binds the photos' backgrounds and
forms to itself; one that attends to the person alone carries the person wherever a prompt puts it.

How the maps are read: a forward hook on each cross-attention layer keeps its inputs (the query tokens and the
text states) during the step's main forward; the maps are computed from them after it, with the layer's own
``to_q`` / ``to_k`` (LoRA included), in float32. Nothing is computed inside the forward, so a gradient-
checkpointed UNet recomputes exactly what it saved (non-reentrant checkpointing; with reentrant checkpointing the
queries carry no gradient and only the token learns from the term). The term has no state: exact resume holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from sdtune.config import RunConfig
from sdtune.errors import ConfigError


def grid_of(latent_hw: tuple[int, int], queries: int) -> tuple[int, int, int] | None:
    """The (downscale, height, width) of a layer with ``queries`` pixels on latents of ``latent_hw``: the UNet halves
    each side per level, rounding up (stride-2 convolutions with padding 1); None when no level matches."""
    height, width = latent_hw
    scale = 1
    while height * width > queries and (height > 1 or width > 1):
        height, width, scale = (height + 1) // 2, (width + 1) // 2, scale * 2
    return (scale, height, width) if height * width == queries else None


class AttentionLoss:
    """The term for one run: the UNet's cross-attention layers (hooked), the token's ids, the weight, the map sizes.

    ``token_ids``: the learned token's vector ids in the first tokenizer (SDXL's two tokenizers split a prompt
    alike, so the positions are the same for both encoders' states)."""

    def __init__(self, unet: torch.nn.Module, token_ids: list[int], weight: float, downscales: list[int]) -> None:
        from diffusers.models.attention_processor import Attention

        self.token_ids = torch.tensor(token_ids)
        self.weight, self.downscales = weight, sorted(set(downscales))
        # a UNet without any is refused before this is built (chosen_downscales)
        self.layers = [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
        self.captured: list[tuple[Any, torch.Tensor, torch.Tensor, tuple[int, int, int]]] = []
        self.latent_hw: tuple[int, int] | None = None  # while recording: the forward's latent size
        self.seen: set[int] = set()  # the downscales the last forward's layers had (for the error below)
        for layer in self.layers:
            layer.register_forward_hook(self._capture, with_kwargs=True)

    def _capture(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        """Keep a layer's inputs when recording and its maps are of a chosen size (no other layer's are held)."""
        if self.latent_hw is None:
            return
        hidden = args[0] if args else kwargs.get("hidden_states")
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        if hidden is None or text is None or hidden.ndim != 3:
            return
        grid = grid_of(self.latent_hw, hidden.shape[1])
        if grid is not None:
            self.seen.add(grid[0])
            if grid[0] in self.downscales:
                self.captured.append((module, hidden, text, grid))

    @contextlib.contextmanager
    def recording(self, latent_hw: tuple[int, int]) -> Iterator[None]:
        """Keep the chosen cross-attention layers' inputs of the forward run inside the block (and only those);
        ``latent_hw``: the latents' (height, width) in that forward."""
        self.captured, self.seen, self.latent_hw = [], set(), latent_hw
        try:
            yield
        finally:
            self.latent_hw = None

    @staticmethod
    def probabilities(layer: Any, hidden: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, heads, queries, text tokens) attention probabilities of ``layer`` in float32: what its processor
        computes (group norm, cross norm and q/k norms included when the layer has them)."""
        if getattr(layer, "group_norm", None) is not None:
            hidden = layer.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
        if getattr(layer, "norm_cross", None):
            text = layer.norm_encoder_hidden_states(text)
        query = layer.head_to_batch_dim(layer.to_q(hidden)).float()
        key = layer.head_to_batch_dim(layer.to_k(text)).float()
        if getattr(layer, "norm_q", None) is not None:
            query, key = layer.norm_q(query), layer.norm_k(key)
        with torch.autocast(query.device.type, enabled=False):  # the scores in float32 under a bf16/fp16 autocast
            scores = torch.softmax(query @ key.transpose(-1, -2) * layer.scale, dim=-1)
        return scores.view(hidden.shape[0], layer.heads, *scores.shape[1:])

    def loss(self, input_ids: torch.Tensor, masks: torch.Tensor, num_train: int) -> torch.Tensor | None:
        """The weighted term of the last recorded forward over the group's first ``num_train`` examples (the
        training ones) whose prompt has the token; None when none has it (a dropped caption). ``input_ids``:
        (B, L), or (B, 2, L) on SDXL; ``masks``: (B, 1, H, W) loss masks in [0, 1]."""
        captured, self.captured = self.captured, []
        if not captured:  # the chosen sizes are checked against the UNet before training (chosen_downscales)
            raise ConfigError(f"train.attention_loss.downscales={self.downscales}: this UNet's cross-attention maps "
                              f"are {sorted(self.seen)} times smaller than its latents here: choose among those")
        ids = input_ids[:num_train]
        ids = ids[:, 0] if ids.ndim == 3 else ids
        where = torch.isin(ids, self.token_ids.to(ids.device)).float()  # (b, L)
        has = where.sum(dim=1) > 0
        if not bool(has.any()):
            return None
        where = where[has]
        share = where / where.sum(-1, keepdim=True)  # each of the token's vectors weighs alike
        by_size: dict[tuple[int, int, int], list[torch.Tensor]] = {}
        for layer, hidden, text, grid in captured:
            probs = self.probabilities(layer, hidden[:num_train][has], text[:num_train][has]).mean(dim=1)  # (b,Q,L)
            by_size.setdefault(grid, []).append((probs * share[:, None, :].to(probs.device)).sum(-1))
        terms = []
        for (_, height, width), maps in by_size.items():
            attention = torch.stack(maps).mean(dim=0).view(-1, height, width)  # (b, h, w)
            attention = attention / attention.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)
            target = F.interpolate(masks[:num_train][has].float().to(attention.device), size=(height, width),
                                   mode="area")[:, 0]
            terms.append(F.mse_loss(attention, target))
        return self.weight * torch.stack(terms).mean()


def attention_levels(unet_config: Any) -> list[int]:
    """The downscales (latent side / map side) at which ``unet_config``'s UNet has cross-attention: a down block
    ``i`` works at ``2**i``, the middle block at the last one's (up blocks mirror the down blocks)."""
    found = {2 ** i for i, kind in enumerate(unet_config.down_block_types) if "CrossAttn" in kind}
    if "CrossAttn" in str(getattr(unet_config, "mid_block_type", None) or "UNetMidBlock2DCrossAttn"):
        found.add(2 ** (len(unet_config.down_block_types) - 1))
    return sorted(found)


def chosen_downscales(options: Any, unet_config: Any, latent_side: int) -> list[int]:
    """``train.attention_loss.downscales``, checked against the UNet (ConfigError naming the ones it has); without
    them the level whose maps are nearest 16 on a side (Break-A-Scene's 16x16 of SD's 64x64 latents at 512 px;
    ties: the finer maps)."""
    levels = attention_levels(unet_config)
    if not levels:
        raise ConfigError("train.attention_loss: this UNet has no cross-attention layers to read the token's "
                          "attention from: remove train.attention_loss")
    if options.downscales is None:
        return [min(levels, key=lambda d: (abs(latent_side / d - 16), d))]
    missing = [d for d in options.downscales if d not in levels]
    if missing:
        raise ConfigError(f"train.attention_loss.downscales={options.downscales}: this UNet has cross-attention "
                          f"maps {levels} times smaller than its latents, not {missing}: choose among those, or "
                          "leave downscales out (the maps nearest 16x16)")
    return list(options.downscales)


def attention_note(cfg: RunConfig) -> str | None:
    """A note when the term never reaches the token: the masks (and with them the term) start after the token
    froze, so it trains the LoRA's attention alone (Break-A-Scene pulls the token's)."""
    learned = cfg.train.attention_loss and cfg.train.textual_inversion
    if not learned:
        return None
    frozen = learned.token_steps(cfg.train.max_steps)
    first = cfg.data.unmasked_steps(cfg.train.max_steps)
    if frozen is None or first < frozen:
        return None
    return (f"note: train.attention_loss applies with the masks from step {first + 1} (data.mask_start), after the "
            f"token's last step {frozen} (ti_fraction): it trains the LoRA's attention, not the token's; start "
            "the masks earlier for the token to learn where the person is")


def _latent_side(cfg: RunConfig, comps: Any) -> int:
    """The latents' side at ``data.resolution``."""
    from sdtune.data.buckets import vae_downscale

    return max(1, cfg.data.resolution // vae_downscale(comps.vae.config))


def maps_in_use(cfg: RunConfig, comps: Any) -> list[int]:
    """The downscales (latent side / map side) the run's term reads: ``train.attention_loss.downscales``, or the
    level nearest 16x16 at ``data.resolution``; ConfigError for sizes the UNet lacks."""
    assert cfg.train.attention_loss is not None
    return chosen_downscales(cfg.train.attention_loss, comps.unet.config, _latent_side(cfg, comps))


def describe_maps(cfg: RunConfig, comps: Any, downscales: list[int] | None = None) -> str:
    """The maps in words, for the console and the model card: "4x smaller than the latents (16x16 at
    data.resolution 512)" (buckets of another size have maps of another size, at the same downscale);
    ``downscales``: :func:`maps_in_use`, when already known."""
    side = _latent_side(cfg, comps)
    downscales = downscales or maps_in_use(cfg, comps)
    return (f"{', '.join(map(str, downscales))}x smaller than the latents "
            f"({', '.join(f'{-(-side // d)}x{-(-side // d)}' for d in downscales)} at data.resolution "
            f"{cfg.data.resolution})")


def build_attention_loss(cfg: RunConfig, comps: Any) -> AttentionLoss | None:
    """The run's term (``train.attention_loss``), or None without it; ConfigError for map sizes the UNet lacks,
    before any latent is cached. ``comps``: the run's components, the learned token already added to the
    tokenizer(s) (``sdtune.training.pivotal.add_pivotal_token``)."""
    from sdtune.models.embeddings import tokenizers, vector_tokens

    options, learned = cfg.train.attention_loss, cfg.train.textual_inversion
    if options is None or learned is None:
        return None
    downscales = maps_in_use(cfg, comps)
    print(f"cross-attention loss: weight {options.weight:g} on the maps {describe_maps(cfg, comps, downscales)}")
    if (note := attention_note(cfg)) is not None:
        print(note)
    first = tokenizers(comps.tokenizer)[0]
    ids = [first.convert_tokens_to_ids(name) for name in vector_tokens(learned.token, learned.num_vectors)]
    return AttentionLoss(comps.unet, ids, options.weight, downscales)
