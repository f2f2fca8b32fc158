"""Tiny random captioning models built offline, saved as a hub model folder is laid out (config.json, weights,
processor files): Florence-2 (BART text + DaViT vision), a JoyCaption-style Llava (Llama text + SigLIP vision +
a chat template that places the image in a plain-text user turn, as JoyCaption's does) and BLIP.

Their captions are nonsense made of ``WORDS``; the point is the real load-and-generate path. The image processors
are transformers' PIL ones (no torchvision here); the saved configs name the usual classes (``CLIPImageProcessor``,
``SiglipImageProcessor``), as the hub checkpoints do. Generation configs suppress the special tokens and ask for
at least 2 new tokens, so every caption is non-empty.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "photo", "of", "dog", "cat", "red", "blue", "person", "beach", "smiling", "the", "in", "is", "what",
         "describe", "image", "write", "caption", "this", "you", "are", "captioner", "system", "user", "assistant",
         ".", ",", "?", ":"]
# JoyCaption-like: string user content gets the image in front; an image part in a content list works as well.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}<|end|>"
    "{% if m['content'] is string %}{% if m['role'] == 'user' %}<image>{% endif %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot|>{% endfor %}{% if add_generation_prompt %}<|start|>assistant<|end|>{% endif %}")


def _word_tokenizer(specials: list[str], eos: str, **extra):
    """A word-level fast tokenizer over ``specials + WORDS`` (no files to download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token=eos, pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=256, **extra)


def _words_only(model, tokenizer) -> None:
    """Generation that writes words: special tokens suppressed (except the end), at least two new tokens."""
    ids = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]
    model.generation_config.suppress_tokens = sorted(set(ids))
    model.generation_config.min_new_tokens = 2
    model.generation_config.forced_bos_token_id = None
    model.generation_config.forced_eos_token_id = None


def _save(folder: Path, model_class, config, processor, tokenizer=None) -> Path:
    """Build the model with seed-0 random weights and save it with its processor, as a hub folder is laid out."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_class(config)
    if tokenizer is not None:
        _words_only(model, tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_florence2(folder: Path) -> Path:
    from transformers import (
        BartConfig,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    tokenizer = _word_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<image>"], "</s>",
                                extra_special_tokens={"image_token": "<image>"})
    # 64 px through strides 4*2*2*2 = 32: 2x2 image tokens + 1 pooled = 5
    image = CLIPImageProcessorPil(size={"height": 64, "width": 64}, do_center_crop=False, image_seq_length=5)
    processor = Florence2Processor(image_processor=image, tokenizer=tokenizer)
    text = BartConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                      max_position_embeddings=64, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                      decoder_start_token_id=2)
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 8, 8, 16], num_heads=[1, 1, 1, 2], num_groups=[1, 1, 1, 2],
                  window_size=2, projection_dim=16, drop_path_rate=0.0)
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    return _save(folder, Florence2ForConditionalGeneration, config, processor, tokenizer)


def build_tiny_llava(folder: Path) -> Path:
    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<image>", "<|start|>", "<|end|>", "<|eot|>"]
    tokenizer = _word_tokenizer(specials, "<|eot|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["</s>", "<image>", "<|start|>", "<|end|>"]})
    image = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image, tokenizer=tokenizer, patch_size=8, chat_template=CHAT_TEMPLATE,
                               vision_feature_select_strategy="full", image_token="<image>")
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8)  # 16 image tokens, no CLS (as JoyCaption's SigLIP)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_select_strategy="full",
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    return _save(folder, LlavaForConditionalGeneration, config, processor, tokenizer)


def build_tiny_blip(folder: Path) -> Path:
    """A random BlipForConditionalGeneration (a few KB) and its processor."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), model_max_length=64)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.sep_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=16)
    return _save(folder, BlipForConditionalGeneration, config, processor)


def made_of_words(text: str) -> bool:
    """Whether a caption is non-empty and made of the tiny vocabulary only (what a random tiny model can write)."""
    spaced = text
    for mark in ".,?:":
        spaced = spaced.replace(mark, f" {mark} ")
    return bool(text.strip()) and set(spaced.split()) <= set(WORDS)


BUILDERS = {"florence2": build_tiny_florence2, "llava": build_tiny_llava, "blip": build_tiny_blip}
