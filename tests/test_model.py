"""Model factory: architectures, MC dropout on the head, local weights, image decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from connector.contracts.errors import BadItem, ConfigError
from connector.learning.images import BadImage, decode_image, infer_channels, random_affine
from connector.learning.model import ModelSpec, build_model
from connector.learning.trained import TrainedModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png(mode: str = "L", size: tuple[int, int] = (20, 12)) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("arch", "dim"),
    [
        ("small_cnn", 128),
        ("resnet18", 512),
        ("mobilenet_v3_small", 1024),
        ("efficientnet_b0", 1280),
    ],
)
def test_architectures_give_features_and_head(arch: str, dim: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch), num_classes=4, data_channels=1).eval()
    channels = 1 if arch == "small_cnn" else 3
    with torch.no_grad():
        emb = model.features(torch.randn(2, channels, 32, 32))
        logits = model.head(emb)
    assert emb.shape == (2, dim)
    assert logits.shape == (2, 4)


def test_mc_dropout_samples_the_head_only_and_is_seeded() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(dropout=0.5), 3, 1).eval()
    emb = torch.randn(5, model.feature_dim)
    a = model.head_samples(emb, 8, torch.Generator().manual_seed(1))
    b = model.head_samples(emb, 8, torch.Generator().manual_seed(1))
    assert a.shape == (5, 8, 3)
    assert torch.equal(a, b)
    assert a.std(dim=1).mean() > 0  # the samples differ
    det = model.head_samples(emb, 1, None)
    assert torch.allclose(det[:, 0], model.fc(emb))


def test_trained_model_infer_shapes_with_ensemble() -> None:
    spec = ModelSpec(ensemble_size=2, image_size=16)
    tm = TrainedModel.untrained(spec, ["a", "b", "c"], seed=0, channels=1)
    tm.members.append(build_model(spec, 3, 1).eval())
    x = torch.randint(0, 255, (6, 1, 16, 16), dtype=torch.uint8)
    probs, emb = tm.infer(x, mc_samples=4, generator=torch.Generator(), with_embeddings=True)
    assert probs.shape == (6, 8, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert emb is not None and emb.shape == (6, tm.feature_dim)


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-random.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(ModelSpec(arch="resnet18", weights=str(path)), num_classes=5)
    assert torch.equal(model.backbone.state_dict()["conv1.weight"], reference.conv1.weight)
    assert model.fc.out_features == 5


def test_local_weights_of_another_arch_are_refused(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit arch 'resnet18'"):
        build_model(ModelSpec(arch="resnet18", weights=str(path)), num_classes=2)


def test_frozen_backbone_has_no_trainable_backbone_parameters(tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    torch.save(build_model(ModelSpec(), 2, 1).backbone.state_dict(), path)
    model = build_model(ModelSpec(weights=str(path), freeze_backbone=True), 2, 1)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.fc.parameters())


def test_bad_specs_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        ModelSpec(arch="vgg1000")
    with pytest.raises(ConfigError, match="needs pretrained weights"):
        ModelSpec(freeze_backbone=True)
    with pytest.raises(ConfigError, match="unknown torchvision weights"):
        build_model(ModelSpec(arch="resnet18", weights="NoSuch_Weights.X"), 2)


def test_decode_converts_modes_and_sizes() -> None:
    gray = decode_image(_png("L"), channels=1, size=16)
    rgb_from_gray = decode_image(_png("L"), channels=3, size=16)
    assert gray.shape == (1, 16, 16) and gray.dtype == torch.uint8
    assert rgb_from_gray.shape == (3, 16, 16)
    assert decode_image(_png("RGBA"), channels=1, size=8).shape == (1, 8, 8)
    assert infer_channels([_png("L"), _png("L")]) == 1
    assert infer_channels([_png("L"), _png("RGB")]) == 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero-byte"),
        (b"hello, not an image", "not an image"),
        (_png("RGB", (64, 64))[:200], "truncated"),
    ],
)
def test_decode_rejects_bad_objects(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=reason):
        decode_image(data, 1, 16)


def test_predict_raises_bad_item_for_undecodable_input() -> None:
    tm = TrainedModel.untrained(ModelSpec(image_size=16), ["a", "b"], channels=1)
    with pytest.raises(BadItem):
        tm.predict([_png("L"), b"garbage"])


def test_augmentation_keeps_shape_and_is_seeded() -> None:
    x = torch.rand(4, 1, 16, 16)
    a = random_affine(x, torch.Generator().manual_seed(0))
    b = random_affine(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
