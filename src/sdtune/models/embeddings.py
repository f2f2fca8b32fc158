"""Textual inversion: one new token whose input embedding is all a run trains (Gal et al. 2022, "An Image is Worth
One Word"), in the file format diffusers, AUTOMATIC1111 and ComfyUI load.

The token is added to the tokenizer the way ``TextualInversionLoaderMixin.load_textual_inversion`` adds it at
inference (``tokenizer.add_tokens``: an added token, matched in the prompt text before BPE), so the ids a run
trains on are the ids a user's pipeline makes of the same prompt. The text encoder's token embedding is wrapped,
not resized: the base rows stay frozen (in the mixed-precision dtype), one fp32 row per encoder is the
trainable parameter, substituted wherever the new id appears. Checkpoints therefore hold that row alone (the
trainable state), and exact resume is the loop's own.

SDXL has two tokenizers and text encoders: the token gets a row in each (768 and 1280 wide on the real model),
saved as ``{"clip_l": (1, 768), "clip_g": (1, 1280)}``, the layout AUTOMATIC1111 and ComfyUI read for SDXL
embeddings; diffusers loads each part into its encoder (:func:`load_into_pipeline`). SD saves ``{token: (1, D)}``
(the diffusers training script's ``learned_embeds.safetensors`` layout, which AUTOMATIC1111 reads too, naming
the embedding after the file: the file is therefore ``RUN/embeddings/<token>.safetensors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdtune.errors import ConfigError, ModelLoadError
from sdtune.run_folder import EMBEDDINGS_DIR, embedding_file_name  # noqa: F401 - the run folder's layout
from sdtune.words import counted

SDXL_PARTS = ("clip_l", "clip_g")  # AUTOMATIC1111 / ComfyUI names of SDXL's two text encoders


class LearnedRows(torch.nn.Module):
    """The trainable rows (V, D), fp32: a module of its own so that the frozen base rows come first in
    ``parameters()`` (transformers reads a model's dtype from its first parameter)."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(rows.detach().float().clone())


class LearnedTokenEmbedding(torch.nn.Module):
    """A frozen ``nn.Embedding`` with the rows of ``token_ids`` taken from a trainable fp32 parameter.

    ``forward(ids (B, L)) -> (B, L, D)`` in the base's dtype; ids of new tokens may lie past the base's rows.
    """

    def __init__(self, base: torch.nn.Embedding, token_ids: list[int], rows: torch.Tensor,
                 norm_limit: float | None = None):
        super().__init__()
        self.base = base
        self.learned = LearnedRows(rows)
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)
        largest = float(base.weight.detach().float().norm(dim=-1).max())
        self.max_norm = None if norm_limit is None else norm_limit * largest  # absolute, for this encoder

    def rows(self) -> torch.Tensor:
        """The rows the text encoder sees (V, D), fp32: the trained ones, scaled down to ``max_norm`` where longer."""
        weight = self.learned.weight
        if self.max_norm is None:
            return weight
        return weight * (self.max_norm / weight.norm(dim=-1, keepdim=True).clamp(min=self.max_norm))

    @property
    def weight(self) -> torch.Tensor:
        """The base rows (what ``get_input_embeddings().weight`` readers expect; the new rows are not in it)."""
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        match = input_ids.unsqueeze(-1) == self.token_ids.to(input_ids.device)  # (B, L, V)
        is_new = match.any(-1)
        out = self.base(torch.where(is_new, torch.zeros_like(input_ids), input_ids))
        new = self.rows()[match.to(torch.int8).argmax(-1)].to(out.dtype)
        return torch.where(is_new.unsqueeze(-1), new, out)


def text_models(text_encoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The CLIP text models of a run's text encoder: one (SD) or two (SDXL's DualTextEncoder)."""
    if hasattr(text_encoder, "text_encoder_2"):
        return [text_encoder.text_encoder, text_encoder.text_encoder_2]
    return [text_encoder]


def tokenizers(tokenizer: Any) -> list[Any]:
    if hasattr(tokenizer, "tokenizer_2"):
        return [tokenizer.tokenizer, tokenizer.tokenizer_2]
    return [tokenizer]


def vector_tokens(token: str, num_vectors: int = 1) -> list[str]:
    """The tokens of an embedding of ``num_vectors`` rows, named as diffusers' ``load_textual_inversion`` names them
    (``token``, ``token_1``, ...), so that a prompt tokenizes alike in training and after loading."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand_prompt(prompt: str, tokenizer: Any) -> str:
    """``prompt`` with each multi-vector token written out (``sks`` -> ``sks sks_1 sks_2``), as a diffusers
    pipeline rewrites it before encoding (its own ``_maybe_convert_prompt``: training then sees what users' pipelines
    see). A prompt without such a token is returned as is. SDXL's two tokenizers hold the same tokens: the first
    decides."""
    from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin

    first = tokenizers(tokenizer)[0]
    if not any(name.endswith("_1") for name in getattr(first, "added_tokens_encoder", {})):
        return prompt  # no multi-vector token: nothing to write out (the common case costs no tokenize)
    return TextualInversionLoaderMixin._maybe_convert_prompt(None, prompt, first)


def check_token(token: str, tokenizer: Any, num_vectors: int = 1) -> None:
    """Refuse a token diffusers would refuse to load (already a vocabulary entry) or could not find in a prompt."""
    for tok in tokenizers(tokenizer):
        for name in vector_tokens(token, num_vectors):
            if name in tok.get_vocab():
                raise ConfigError(f"train.textual_inversion.token={token!r}: {name!r} is already a token of the "
                                  "model's vocabulary, so diffusers' load_textual_inversion would refuse the "
                                  f"embedding: choose another, e.g. '<{token.strip('<>')}>'")


def is_vocabulary_word(token: str, tokenizer: Any) -> bool:
    """Whether ``token`` is a whole word of a tokenizer's vocabulary (CLIP stores words as ``sks</w>``, which
    :func:`check_token` does not see). diffusers adds such a token, but it then stands for the new embedding in
    every prompt, the word's own meaning gone, and it matches inside other words too (``sks`` in "asks", ``man``
    in "woman"): a token like ``<sks>`` is in no text. The same answer once the token was added (the tokenizer then
    reads it as the added token: the vocabulary's own entry for the word is looked up instead)."""
    for tok in tokenizers(tokenizer):
        if token in tok.get_added_vocab():
            if f"{token.lower()}</w>" in tok.get_vocab():
                return True
            continue
        pieces = tok.tokenize(token)
        if len(pieces) == 1 and pieces[0].removesuffix("</w>") == token.lower():
            return True
    return False


def initial_rows(tok: Any, embedding: torch.nn.Embedding, initializer: str) -> torch.Tensor:
    """The mean of the input embeddings of ``initializer``'s tokens (1, D): where the new token starts.

    Raises ConfigError when it has no tokens."""
    ids = tok(initializer, add_special_tokens=False).input_ids
    if not ids:
        raise ConfigError(f"train.textual_inversion.initializer={initializer!r} has no tokens: give a word, e.g. "
                          "'person' or 'dog'")
    with torch.no_grad():
        return embedding.weight[torch.tensor(ids)].float().mean(0, keepdim=True)


def add_learned_token(tokenizer: Any, text_encoder: torch.nn.Module, token: str, initializer: str | None,
                      norm_limit: float | None = None, num_vectors: int = 1) -> list[LearnedTokenEmbedding]:
    """Add ``token`` to each tokenizer and wrap each encoder's token embedding (:class:`LearnedTokenEmbedding`).

    ``initializer``: the text whose embedding the token starts from (None: the token itself, as the tokenizer read
    it before it was added, so "sks" starts where the word "sks" was). ``norm_limit``: the longest the row may
    grow, as a multiple of the longest row of the encoder's vocabulary (None: unlimited). ``num_vectors``: rows per
    token (:func:`vector_tokens`), each starting at the initializer's embedding. Returns the wrappers, one per
    encoder.
    """
    check_token(token, tokenizer, num_vectors)
    names = vector_tokens(token, num_vectors)
    wrappers = []
    for tok, model in zip(tokenizers(tokenizer), text_models(text_encoder), strict=True):
        base = model.get_input_embeddings()
        rows = initial_rows(tok, base, initializer or token).repeat(num_vectors, 1)
        tok.add_tokens(names)
        token_ids = [tok.convert_tokens_to_ids(name) for name in names]
        wrapper = LearnedTokenEmbedding(base, token_ids, rows.to(base.weight.device), norm_limit)
        _replace_module(model, base, wrapper)
        wrappers.append(wrapper)
    return wrappers


def _replace_module(model: torch.nn.Module, old: torch.nn.Module, new: torch.nn.Module) -> None:
    """Put ``new`` where ``old`` sits in ``model`` (``embeddings.token_embedding`` in transformers 5,
    ``text_model.embeddings.token_embedding`` in 4: found by identity, not by name)."""
    for name, module in model.named_modules():
        if module is old:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
            return
    raise TypeError(f"{type(model).__name__}: its input embedding is not one of its modules")


def learned_wrapper(model: torch.nn.Module) -> LearnedTokenEmbedding:
    wrapper = model.get_input_embeddings()
    if not isinstance(wrapper, LearnedTokenEmbedding):
        raise TypeError("the text encoder has no learned token (add_learned_token was not applied)")
    return wrapper


def learned_state(text_encoder: torch.nn.Module, token: str) -> dict[str, torch.Tensor]:
    """The file's tensors: ``{token: (N, D)}`` (SD) or ``{"clip_l": (N, D1), "clip_g": (N, D2)}`` (SDXL), fp32;
    N = the vectors per token."""
    rows = [learned_wrapper(model).rows().detach().float().cpu().contiguous()
            for model in text_models(text_encoder)]
    return {token: rows[0]} if len(rows) == 1 else dict(zip(SDXL_PARTS, rows, strict=True))


def save_embedding(folder: Path, text_encoder: torch.nn.Module, token: str) -> Path:
    from safetensors.torch import save_file

    file = folder / embedding_file_name(token)
    save_file(learned_state(text_encoder, token), str(file), metadata={"token": token, "format": "pt"})
    return file


def read_embedding(file: Path) -> tuple[str | None, dict[str, torch.Tensor]]:
    """(the token stored in the file's metadata or None, its tensors); ModelLoadError for an unreadable file."""
    from safetensors import SafetensorError

    from sdtune.models.safetensors_files import open_safetensors

    try:
        with open_safetensors(file) as handle:  # a damaged file: DamagedFileError, naming it
            token = (handle.metadata() or {}).get("token")
            return token, {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError) as exc:  # a missing or foreign file
        raise ModelLoadError(f"{file}: not a readable embedding file ({exc})") from None


def load_into_pipeline(pipe: Any, file: Path, token: str | None = None) -> str:
    """Load a textual-inversion file into a diffusers pipeline with ``load_textual_inversion``; returns the token.

    SD: the file as is. SDXL: ``clip_l`` into ``text_encoder`` and ``clip_g`` into ``text_encoder_2``, as the
    diffusers documentation loads SDXL embeddings. ``token`` defaults to the one the file was saved with.
    """
    stored, state = read_embedding(file)
    token = token or stored or file.stem
    try:
        if hasattr(pipe, "text_encoder_2"):
            missing = [part for part in SDXL_PARTS if part not in state]
            if missing:
                raise ModelLoadError(f"{file}: an SDXL embedding needs tensors {list(SDXL_PARTS)}; it has "
                                     f"{sorted(state)} (made for SD 1.x/2.x?)")
            pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
        else:
            if len(state) != 1:
                raise ModelLoadError(f"{file}: an SD 1.x/2.x embedding holds one tensor; it has {sorted(state)} "
                                     "(made for SDXL?)")
            pipe.load_textual_inversion(next(iter(state.values())), token=token)
    except ValueError as exc:  # diffusers: a width that does not fit, a token already in the vocabulary
        raise ModelLoadError(f"cannot load embedding {file}: {exc}. Was it trained on this base model?") from None
    return token


def verify_embedding_file(file: Path, tokenizer: Any, text_encoder: torch.nn.Module, prompt: str, *, base: str,
                          allow_pickle: bool = False, revision: str | None = None, variant: str | None = None) -> str:
    """Load ``file`` as users do (diffusers ``load_textual_inversion`` into a fresh ``base``) and check, per text
    encoder, that ``prompt`` tokenizes to the ids training used and that the token's row is the trained one
    (bitwise: both fp32). Returns a line for the log; raises SdtuneError when the load differs."""
    from sdtune.errors import SdtuneError
    from sdtune.models.loading import family_of_pipeline, load_pipeline

    pipe = load_pipeline(base, allow_pickle=allow_pickle, revision=revision, variant=variant, torch_dtype=torch.float32)
    try:
        _, state = read_embedding(file)
        token = load_into_pipeline(pipe, file)
        fresh_tok, fresh_encoder = family_of_pipeline(pipe).text_of(pipe)
        parts = list(state) if len(state) == 1 else list(SDXL_PARTS)
        for tok, fresh, model, part in zip(tokenizers(tokenizer), tokenizers(fresh_tok), text_models(fresh_encoder),
                                           parts, strict=True):
            ids = tok(expand_prompt(prompt, tok)).input_ids  # as training tokenized it
            loaded_ids = fresh(pipe.maybe_convert_prompt(prompt, fresh)).input_ids  # as the pipeline does
            if list(ids) != list(loaded_ids):
                raise SdtuneError(f"{file}: {prompt!r} tokenizes to {list(loaded_ids)} after loading, {list(ids)} in "
                                  "training")
            names = vector_tokens(token, state[part].shape[0])
            rows = model.get_input_embeddings().weight[[fresh.convert_tokens_to_ids(n) for n in names]]
            if not torch.equal(rows.float().cpu(), state[part]):
                raise SdtuneError(f"{file}: the rows diffusers loaded for {token!r} are not the trained ones")
    finally:
        del pipe
    return (f"loads with diffusers load_textual_inversion as the trained token {token!r} "
            f"({counted(len(state), 'encoder')})")


BUNDLE_PREFIX = "bundle_emb"  # AUTOMATIC1111's key prefix for embeddings carried inside a LoRA file


def bundle_state(file: Path) -> dict[str, torch.Tensor]:
    """An embedding file's tensors as AUTOMATIC1111 reads them from a LoRA file (its Lora extension's
    ``bundle_emb.<name>.<key>``; the name is the prompt word): SD ``bundle_emb.<token>.string_to_param.*`` (N, D),
    SDXL ``bundle_emb.<token>.clip_l`` / ``.clip_g``. The token is the one the file was saved with."""
    stored, state = read_embedding(file)
    token = stored or file.stem
    if set(state) == set(SDXL_PARTS):
        return {f"{BUNDLE_PREFIX}.{token}.{part}": state[part] for part in SDXL_PARTS}
    if len(state) != 1:
        raise ModelLoadError(f"{file}: not an embedding of one token ({sorted(state)})")
    return {f"{BUNDLE_PREFIX}.{token}.string_to_param.*": next(iter(state.values()))}


def unbundle(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The embeddings bundled in a LoRA state dict, per token, in the embedding file's layout (the inverse of
    :func:`bundle_state`: ``{token: {token: (N, D)}}`` or ``{token: {"clip_l": ..., "clip_g": ...}}``)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(f"{BUNDLE_PREFIX}."):
            token, _, part = key[len(BUNDLE_PREFIX) + 1:].partition(".")
            found.setdefault(token, {})[token if part.startswith("string_to_param") else part] = value
    return found
