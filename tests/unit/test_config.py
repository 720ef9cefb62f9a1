import json

import pytest

from eartalking import config


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_preset_round_trip(tmp_path, name):
    cfg = config.preset(name)
    cfg.save(tmp_path / "c.json")
    again = config.ModelConfig.load(tmp_path / "c.json")
    assert again == cfg
    assert again.dims() == cfg.dims()


def test_tiny_dims_are_consistent():
    d = config.tiny().dims()
    assert d["tokens_per_frame"] == d["grid"] ** 2 == 64
    assert d["samples_per_frame"] == 640 and d["audio_tokens_per_frame"] == 4
    assert d["block_len"] == d["n_controls"] + d["audio_tokens_per_frame"] + d["tokens_per_frame"]
    assert d["window_len"] == d["window"] * d["block_len"]
    # the portrait itself (pixel path) and four feature maps
    assert json.loads(d["ref_shapes"])[0] == [3, 128, 128] and len(json.loads(d["ref_shapes"])) == 5


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset"):
        config.preset("huge")
