"""The typed GLSCL config refuses unknown objectives, negative modes, model types and values out of range."""
import pytest

from lavis_glscl.models.glscl import GlsclPretrain


def test_unknown_objective_or_negative_mode_is_refused(lavis_glscl):
    from omegaconf import OmegaConf

    base = OmegaConf.load(GlsclPretrain.default_config_path("tiny")).model
    with pytest.raises(ValueError, match=r"unknown option\(s\) model.loss_weights.mgcs \(did you mean 'mgsc'\?\)"):
        GlsclPretrain.from_config(OmegaConf.merge(base, {"loss_weights": {"mgcs": 1.0}}))
    with pytest.raises(ValueError, match="itm_negatives"):
        GlsclPretrain.from_config(OmegaConf.merge(base, {"itm_negatives": "hardest"}))
    with pytest.raises(KeyError, match="unknown model_type"):
        GlsclPretrain.default_config_path("huge")


@pytest.mark.parametrize("options, message", [
    ({"loss_weights": {"mgsc": -1.0}}, r"model.loss_weights: mgsc must be >= 0, got -1.0"),
    ({"mgsc_image_mask_ratio": 1.5}, r"model: mgsc_image_mask_ratio must be in \[0, 1\), got 1.5"),
    ({"mgsc_text_mask_ratio": -0.4}, r"mgsc_text_mask_ratio must be in \[0, 1\), got -0.4"),
    ({"mltc_image_mask_ratio": 1.0}, r"mltc_image_mask_ratio must be in \[0, 1\), got 1.0"),
    ({"mlm_probability": 0.0}, r"mlm_probability must be in \(0, 1\], got 0.0"),
    ({"itc_temperature": 0.0}, r"itc_temperature must be > 0, got 0.0"),
    ({"mgsc_temperature": -0.03}, r"mgsc_temperature must be > 0, got -0.03"),
    ({"mltc_temperature": 0.0}, r"mltc_temperature must be > 0, got 0.0"),
])
def test_values_out_of_range_are_refused_before_building_naming_the_key(lavis_glscl, options, message):
    from omegaconf import OmegaConf

    from lavis_glscl.typed_options import ConfigError

    base = OmegaConf.load(GlsclPretrain.default_config_path("tiny")).model
    with pytest.raises(ConfigError, match=message):
        GlsclPretrain.check_options(OmegaConf.merge(base, options))
