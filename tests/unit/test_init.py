"""The package's registrations in LAVIS: its model zoo, and ``load_model_and_preprocess`` building its models."""


def test_model_zoo_lists_every_glscl_model_and_type(lavis_glscl):
    zoo = lavis_glscl.model_zoo()
    assert zoo == {"albef_glscl_pretrain": ["demo", "tiny"], "albef_pretrain_offline": ["demo", "tiny"],
                   "albef_retrieval_offline": ["demo", "tiny"], "alpro_retrieval_offline": ["demo", "tiny"],
                   "blip_retrieval_offline": ["demo", "tiny"],
                   "glscl_nlvr": ["base", "demo", "tiny"], "glscl_pretrain": ["base", "demo", "demo_video", "tiny"],
                   "glscl_retrieval": ["base", "demo", "tiny"],
                   "glscl_vqa": ["base", "demo", "tiny"], "matching_dual_encoder": ["demo", "tiny"]}
    assert "glscl_retrieval" in str(zoo) and "base, demo, tiny" in str(zoo)


def test_lavis_load_model_and_preprocess_builds_glscl_retrieval(lavis_glscl):
    import torch
    from lavis.models import load_model_and_preprocess
    from PIL import Image

    model, vis_processors, text_processors = load_model_and_preprocess("glscl_retrieval", model_type="tiny",
                                                                       is_eval=True)
    image = vis_processors["eval"](Image.new("RGB", (40, 50), (255, 0, 0))).unsqueeze(0)
    caption = text_processors["eval"]("A red square!")
    assert image.shape == (1, 3, 32, 32) and caption == "a red square"
    assert not model.training and model.config.itm_negatives == "hard"
    with torch.no_grad():
        tokens = model.encode_image(image.unsqueeze(1))
    assert tokens.shape == (1, 1 + 16, 32)
