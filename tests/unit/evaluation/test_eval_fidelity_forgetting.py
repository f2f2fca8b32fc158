"""Subject fidelity (CLIP-I, DINO) and forgetting (score deltas, paired image similarity)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sdtune.errors import DataError
from sdtune.evaluation.clip_score import ClipScorer
from sdtune.evaluation.fidelity import DinoEmbedder, load_reference_images, mean_similarity_to_references
from sdtune.evaluation.forgetting import paired_similarity, score_deltas


def test_mean_similarity_to_references_by_hand():
    gen = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    refs = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    assert mean_similarity_to_references(gen, refs).tolist() == pytest.approx([0.8, 0.4])


def test_a_reference_photo_is_most_similar_to_itself(tiny_clip, tiny_vit, reference_dir):
    refs = load_reference_images(reference_dir)
    assert [p.name for p, _ in refs] == ["ref0.jpg", "ref1.jpg", "ref2.jpg"]
    images = [im for _, im in refs]
    for emb in (ClipScorer(str(tiny_clip)).image_embeddings(images), DinoEmbedder(str(tiny_vit)).embeddings(images)):
        assert emb.norm(dim=-1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
        sims = emb @ emb.T
        assert torch.diagonal(sims).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
        assert (sims.max(dim=1).indices == torch.arange(3)).all()


def test_reference_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_reference_images(tmp_path / "nope")
    with pytest.raises(DataError, match="no images"):
        load_reference_images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_reference_images(tmp_path)


def test_forgetting_pairs_by_prompt_and_seed():
    model = {("dog", 0): 20.0, ("dog", 1): 25.0, ("car", 0): 30.0}
    base = {("dog", 0): 22.0, ("dog", 1): 25.0}
    assert score_deltas(model, base) == {("dog", 0): -2.0, ("dog", 1): 0.0}
    a = {("dog", 0): torch.tensor([1.0, 0.0]), ("dog", 1): torch.tensor([0.0, 1.0])}
    b = {("dog", 0): torch.tensor([1.0, 0.0]), ("dog", 1): torch.tensor([1.0, 0.0])}
    assert paired_similarity(a, b) == {("dog", 0): 1.0, ("dog", 1): 0.0}


def test_grayscale_and_rgba_inputs_are_embedded(tiny_clip):
    scorer = ClipScorer(str(tiny_clip))
    emb = scorer.image_embeddings([Image.new("L", (20, 50), 128), Image.new("RGBA", (64, 64), (1, 2, 3, 100))])
    assert emb.shape == (2, 16)
