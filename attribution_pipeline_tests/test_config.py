import pytest

from attribution_pipeline.config import PipelineConfig, load_preset


def test_preset_and_override_build_typed_config():
    cfg = PipelineConfig().override(load_preset("digits")).override({"model": {"block_out_channels": [8, 16]}})
    assert cfg.model.block_out_channels == (8, 16)  # lists from TOML/JSON become tuples
    assert cfg.valuation.properties == ("quality", "diversity")
    assert PipelineConfig.from_dict(cfg.to_dict()) == cfg  # round trip


def test_unknown_key_is_rejected_with_its_path():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stepz'\] in config.train"):
        PipelineConfig().override({"train": {"stepz": 3}})


def test_missing_preset_names_known_ones():
    with pytest.raises(FileNotFoundError, match="digits"):
        load_preset("no_such_preset")
