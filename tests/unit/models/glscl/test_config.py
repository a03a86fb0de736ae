"""The typed GLSCL config refuses unknown objectives, negative modes and model types."""
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
