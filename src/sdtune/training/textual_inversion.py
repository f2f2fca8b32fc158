"""What a textual-inversion run adds to the one loop: a check that its data names the token, and its output.

The mechanics (the added token, the wrapped embedding, the file format) are ``sdtune.models.embeddings``; the loop
trains the token's row as it trains any parameter (``sdtune.training.modules``).
"""

from __future__ import annotations

from pathlib import Path

from sdtune.config import RunConfig
from sdtune.errors import DataError
from sdtune.words import counted, plural


def check_learned_token(cfg: RunConfig, stream, tokenizer) -> None:
    """Refuse a run whose training prompts never contain the token (it would train nothing); say how many lack it.

    Checked on the token ids (as the tokenizer splits the prompt), not the text: "asks" holds the token too."""
    learned = cfg.train.textual_inversion
    if learned is None:
        return
    from sdtune.models.embeddings import tokenizers

    first = tokenizers(tokenizer)[0]
    token_id = first.convert_tokens_to_ids(learned.token)
    prompts = sorted({p for example in stream.train for p in example.prompts})
    lacking = [p for p in prompts if token_id not in first(p).input_ids]
    if len(lacking) == len(prompts):
        shown = "; ".join(repr(p) for p in prompts[:3])
        raise DataError(f"no training prompt contains train.textual_inversion.token {learned.token!r} (e.g. {shown}), "
                        "so its embedding would learn nothing: put the token into the captions or the instance "
                        "prompt")
    if lacking:
        print(f"note: {len(lacking)} of {counted(len(prompts), 'training prompt')} "
              f"{plural(len(lacking), 'lacks', 'lack')} the token {learned.token!r} (e.g. "
              f"{lacking[0]!r}); {plural(len(lacking), 'it teaches', 'they teach')} its embedding nothing")
    if (note := vocabulary_word_note(cfg, tokenizer)) is not None:
        print(note)
    for key, prompt in kept_prompts(cfg):
        if token_id in first(prompt).input_ids:
            raise DataError(f"{key} {prompt!r} contains train.textual_inversion.token {learned.token!r} as the "
                            "tokenizer reads it (an added token matches inside words too: 'man' in 'woman'), so "
                            "that prompt, which must stay without the person, would train the token: choose a "
                            f"token no such prompt contains, e.g. '<{learned.token.strip('<>')}>'")


def vocabulary_word_note(cfg: RunConfig, tokenizer) -> str | None:
    """A note when the learned token is a whole word of the tokenizer (``sks`` or ``person`` in CLIP's vocabulary):
    not refused (the demo and many recipes write ``sks``), but said once, since the word is gone from every prompt.

    The token is added as a new token (``models.embeddings.add_learned_token``, as diffusers'
    ``load_textual_inversion`` adds it), and an added token is matched in the prompt's text before it is split into
    words, case-insensitively and inside longer words too: wherever a prompt writes the word it now reads the learned
    embedding. Prompts that must stay without the subject (class, preservation) are refused when they hold it
    (:func:`check_learned_token`).
    """
    from sdtune.models.embeddings import is_vocabulary_word, tokenizers

    learned = cfg.train.textual_inversion
    if learned is None or not is_vocabulary_word(learned.token, tokenizer):
        return None
    word = learned.token
    first = tokenizers(tokenizer)[0]
    token_id = first.convert_tokens_to_ids(word)
    shown = [p for p in cfg.validation.prompts if token_id in first(p).input_ids]
    here = f": here validation prompt {shown[0]!r}" if shown else ""
    return (f"note: train.textual_inversion.token {word!r} is a word the tokenizer already has: added as the learned "
            f"token, it is read wherever a prompt writes {word!r} (any case, inside longer words too), so every "
            f"prompt that writes it (validation prompts, and `sdtune generate` with this run) reads the learned "
            f"embedding instead of the word{here}; a new token such as <{word.strip('<>')}> leaves the word alone")


def kept_prompts(cfg: RunConfig) -> list[tuple[str, str]]:
    """``(key, prompt)`` for every prompt the run keeps as it was, without the learned token: the class prompt
    and class subsets' prompts (prior preservation) and output preservation's prompts."""
    data = cfg.data
    kept = [("data.class_prompt", data.class_prompt)] if data.class_prompt else []
    kept += [("a class subset's class_prompts", p) for sub in data.subsets or [] for p in sub.class_prompts]
    if cfg.train.preservation is not None:
        kept += [("train.preservation prompt", p) for p in cfg.train.preservation.resolved_prompts(data)]
    return kept


def example_prompt_with_token(cfg: RunConfig) -> str:
    from sdtune.training.outputs import example_prompt

    assert cfg.train.textual_inversion is not None
    prompt = example_prompt(cfg)
    token = cfg.train.textual_inversion.token
    return prompt if token in prompt else f"a photo of {token}"


def save_embedding_output(run_dir: Path, cfg: RunConfig, tokenizer, text_encoder) -> Path:
    """``RUN/embeddings/<token>.safetensors`` (fp32, the dtype the row trained in), written whole or not at all.

    With ``save.verify`` it is loaded into a fresh base with diffusers ``load_textual_inversion`` before the folder
    takes its name, and the token's ids and row compared with training's (``models.embeddings``)."""
    from sdtune.atomic import write_folder
    from sdtune.models.embeddings import EMBEDDINGS_DIR, embedding_file_name, save_embedding, verify_embedding_file

    learned = cfg.train.textual_inversion
    assert learned is not None

    def write(tmp: Path) -> None:
        file = save_embedding(tmp, text_encoder, learned.token)
        if cfg.save.verify:
            model = cfg.model
            line = verify_embedding_file(file, tokenizer, text_encoder, example_prompt_with_token(cfg),
                                         base=model.base, allow_pickle=model.allow_pickle, revision=model.revision,
                                         variant=model.variant)
            print(f"RUN/{EMBEDDINGS_DIR} verified: {line}")

    write_folder(run_dir / EMBEDDINGS_DIR, write)
    return run_dir / EMBEDDINGS_DIR / embedding_file_name(learned.token)
