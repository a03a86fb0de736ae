"""LAVIS's own run yamls for GLSCL: sizes taken from LAVIS's processors, LAVIS's model options reported once, unknown
keys refused."""
import pytest
from lavis_layouts import LAVIS_PROJECTS, write_coco


def lavis_config(name, options):
    from lavis_glscl.launch import check_config, parse_args

    return check_config(parse_args("x", ["--cfg-path", str(LAVIS_PROJECTS / name), "--options", *options]))


def test_the_image_size_comes_from_the_processors_or_the_run_stops_naming_both_keys(lavis_glscl, caplog):
    from lavis_glscl.typed_options import ConfigError

    write_coco()
    with caplog.at_level("INFO"):
        cfg = lavis_config("albef/train/ret_coco_ft.yaml", ["model.arch=glscl_retrieval", "model.model_type=tiny"])
    assert cfg.model_cfg.vision.image_size == 384 and "model.vision.image_size 32 -> 384" in caplog.text
    with pytest.raises(ConfigError) as refusal:
        lavis_config("albef/train/ret_coco_ft.yaml", ["model.arch=glscl_retrieval", "model.model_type=tiny",
                                                      "datasets.coco_retrieval.vis_processor.eval.image_size=288"])
    message = str(refusal.value)
    assert "datasets.coco_retrieval.vis_processor.train.image_size=384" in message
    assert "datasets.coco_retrieval.vis_processor.eval.image_size=288" in message


def test_lavis_model_options_are_reported_once_while_unknown_keys_are_refused(lavis_glscl, caplog, monkeypatch):
    from lavis_glscl import lavis_config as adaptation
    from lavis_glscl.typed_options import ConfigError

    monkeypatch.setattr(adaptation, "_reported", set())
    write_coco()
    with caplog.at_level("WARNING"):
        lavis_config("albef/train/ret_coco_ft.yaml", ["model.arch=glscl_retrieval", "model.model_type=tiny"])
        lavis_config("blip/train/retrieval_coco_ft.yaml", ["model.arch=glscl_retrieval", "model.model_type=tiny"])
    reports = [r.getMessage() for r in caplog.records if "belong to LAVIS's own models" in r.getMessage()]
    no_effect = "belong to LAVIS's own models and have no effect on GlsclRetrieval"
    assert reports == [f"model options ['queue_size'] {no_effect}",
                       f"model options ['alpha', 'negative_all_rank'] {no_effect}"]
    with pytest.raises(ConfigError, match="unknown option.*model.queue_sise"):
        lavis_config("albef/train/ret_coco_ft.yaml", ["model.arch=glscl_retrieval", "model.model_type=tiny",
                                                      "model.queue_sise=3"])
