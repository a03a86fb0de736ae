"""The heat-map tool draws a map per phrase over the image."""
import numpy as np
import pytest
import torch
from helpers import align_bench_tiny_yaml
from PIL import Image


@pytest.mark.parametrize("arch", ["glscl_retrieval", "blip_retrieval_offline"])
def test_attention_maps_tool_draws_heat_maps_over_the_image(lavis_glscl, tmp_path, arch):
    from lavis.common.registry import registry

    from lavis_glscl.tools import attention_maps

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    torch.save({"model": registry.get_model_class(arch).from_pretrained("tiny").state_dict()}, checkpoint)
    image = tmp_path / "grey.png"
    Image.new("RGB", (48, 32), (128, 128, 128)).save(image)
    config = align_bench_tiny_yaml(tmp_path, tmp_path / "out", arch)
    common = ["--cfg-path", str(config), "--checkpoint", str(checkpoint), "--image", str(image),
              "--caption", "A red circle left of a blue square.", "--out-dir", str(tmp_path / "maps")]

    assert attention_maps.main([*common, "--phrases", "red circle", "Square"]) == 0
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert written == ["global.png", "phrase_01_red_circle.png", "phrase_02_square.png"]
    figure_size = (attention_maps.FIGURE_PIXELS, attention_maps.FIGURE_PIXELS + attention_maps.TITLE_PIXELS)
    for name in written:
        with Image.open(tmp_path / "maps" / name) as drawn:
            assert drawn.size == figure_size
            pixels = np.asarray(drawn.convert("RGB")).astype(int)
        # A grey image on a white page with a black title has no colour: any colour is the heat map's.
        colourful = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 30
        assert colourful.mean() > 0.5
    assert attention_maps.main([*common, "--phrases", "green star"]) == 2
