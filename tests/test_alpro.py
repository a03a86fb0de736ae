"""LAVIS's ALPRO (TimeSformer + BERT) built offline as ``alpro_retrieval_offline``: LAVIS's own class, trained and
evaluated by LAVIS's own ``forward`` and ``compute_sim_matrix``."""
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, ListLoader, read_log_records, run_module

MIXED_RUN = REPO / "tests" / "configs" / "tiny_mixed_run.yaml"
CAPTIONS = ["a small red circle moves up", "a large blue square moves down", "a green triangle moves to the left",
            "a white diamond moves to the right", "a small cyan circle moves up", "a purple square moves down"]


@pytest.fixture
def tiny_alpro(lavis_glscl):
    from lavis.common.registry import registry

    torch.manual_seed(0)
    return registry.get_model_class("alpro_retrieval_offline").from_pretrained("tiny")


def videos(count, model, seed=0):
    """``[N, 3, T, S, S]`` random clips in ALPRO's layout, ``T`` the model's ``n_frms``."""
    encoder = model.visual_encoder
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, encoder.num_frames, encoder.img_size, encoder.img_size, generator=generator)


def test_offline_alpro_is_lavis_alpro_retrieval_with_its_timesformer_and_the_bert_base_uncased_vocabulary(tiny_alpro):
    from lavis.models.alpro_models.alpro_retrieval import AlproRetrieval
    from lavis.models.med import XBertEncoder
    from lavis.models.timesformer.vit import TimeSformer

    model = tiny_alpro
    assert isinstance(model, AlproRetrieval)
    assert type(model).forward is AlproRetrieval.forward
    assert type(model).compute_sim_matrix is AlproRetrieval.compute_sim_matrix
    assert isinstance(model.visual_encoder, TimeSformer)
    assert type(model.visual_encoder).forward_features is TimeSformer.forward_features
    assert type(model.text_encoder) is XBertEncoder and model.text_encoder.config.add_cross_attention is False
    assert model.tokenizer("[MASK] hello").input_ids == [101, 103, 7592, 102]  # bert-base-uncased's ids


def test_sized_timesformer_at_vit_b_sizes_is_lavis_timesformer(lavis_glscl):
    """At LAVIS's hard-coded sizes (768 x 12, 12 heads) the sized TimeSformer has LAVIS's parameters, names and
    shapes, and gives LAVIS's features with LAVIS's weights."""
    from lavis.models.timesformer.vit import TimeSformer

    from lavis_glscl.models.baselines.lavis_offline import SizedTimeSformer

    torch.manual_seed(0)
    lavis_encoder = TimeSformer(image_size=32, patch_size=16, n_frms=2).eval()
    sized = SizedTimeSformer(image_size=32, patch_size=16, n_frms=2, width=768, layers=12, heads=12).eval()
    theirs, ours = lavis_encoder.state_dict(), sized.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    torch.nn.Module.load_state_dict(sized, theirs)
    clips = torch.randn(2, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sized.forward_features(clips), lavis_encoder.forward_features(clips))


def test_alpro_refuses_a_timesformer_narrower_than_its_text(lavis_glscl):
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    cls = registry.get_model_class("alpro_retrieval_offline")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.vision.width = 16
    with pytest.raises(ValueError, match="must equal the text width"):
        cls.from_config(cfg)


def test_tiny_alpro_trains_two_steps_and_lavis_evaluator_scores_it(tiny_alpro):
    """Two AdamW steps of LAVIS's ALPRO forward in a plain process (no process group), then LAVIS's own evaluator:
    each query's shortlist is its top ``k_test`` by ITC, scored ITM + ITC, the rest left at LAVIS's -100."""
    model = tiny_alpro
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = model.vision_proj.weight.detach().clone()
    for step in range(2):
        output = model({"video": videos(4, model, seed=step), "text_input": CAPTIONS[:4]})
        assert torch.isfinite(output.loss) and output.loss_vtc > 0 and output.loss_vtm > 0
        optimizer.zero_grad()
        output.loss.backward()
        assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
        optimizer.step()
    assert not torch.equal(model.vision_proj.weight, before)

    model.eval()
    gallery = videos(len(CAPTIONS), model, seed=9)
    k_test = 3
    with torch.no_grad():  # as LAVIS's runner evaluates
        scores_v2t, scores_t2v = model.compute_sim_matrix(ListLoader(gallery, CAPTIONS, key="video"),
                                                          {"k_test": k_test})
    assert scores_v2t.shape == scores_t2v.shape == (6, 6)
    with torch.no_grad():  # the ITC similarities, from the model's parts
        text = model.tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=model.max_txt_len,
                               return_tensors="pt")
        text_cls = model.text_encoder.forward_text(text, token_type_ids=torch.zeros_like(text.input_ids))
        text_feat = F.normalize(model.text_proj(text_cls.last_hidden_state[:, 0]), dim=-1)
        video_feat = F.normalize(model.vision_proj(model.visual_encoder.forward_features(gallery)[:, 0]), dim=-1)
        sims = video_feat @ text_feat.t()
    for scores, similarity in ((scores_v2t, sims), (scores_t2v, sims.t())):
        scored = torch.from_numpy(scores) > -100
        assert (scored.sum(dim=1) == k_test).all()
        shortlist = torch.zeros_like(scored)
        shortlist.scatter_(1, similarity.topk(k_test, dim=1).indices, True)
        assert torch.equal(scored, shortlist)


@pytest.mark.slow
def test_alpro_trains_through_the_runner_on_the_shapes_videos_and_glscl_retrieval_scores_it(tmp_path):
    """The compare command's ALPRO row at tiny size: videos only, in ALPRO's layout, LAVIS's evaluator, pair
    accuracy from ``glscl_retrieval``."""
    video = "datasets.shapes_video_demo.vis_processor"
    options = [f"run.output_dir={tmp_path}", "model.arch=alpro_retrieval_offline", "model.model_type=tiny",
               "run.train_dataset_ratios=[0.0,1.0]", "run.iters_per_epoch=2", f"{video}.train.n_frms=2",
               f"{video}.eval.n_frms=2", f"{video}.train.layout=cthw", f"{video}.eval.layout=cthw"]
    result = run_module("lavis_glscl.train", ["--cfg-path", str(MIXED_RUN), "--options", *options], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    steps = read_log_records(tmp_path, "train_step")
    assert [s["train_step_modality"] for s in steps] == ["video", "video"]
    assert all(s["train_step_loss_vtc"] > 0 and s["train_step_loss_vtm"] > 0 for s in steps)
    assert "pair_accuracy" in result.stdout and "txt_r1" in result.stdout
