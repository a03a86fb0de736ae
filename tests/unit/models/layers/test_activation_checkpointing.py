"""``grad_checkpointing``: every ViT block, text layer and co-attention layer is recomputed in backward, and losses and
gradients equal the unchecked model's (dropout on, both unimodal-pass settings, train and eval mode)."""
import pytest
import torch
from helpers import tiny_batch

TOLERANCE = dict(rtol=0.0, atol=1e-5)


def losses_and_gradients(model, samples, seed=0):
    """One forward + backward from RNG seed ``seed``: ``({loss name: value}, {parameter name: gradient})``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    output = model(samples)
    output.loss.backward()
    losses = {key: value.detach().clone() for key, value in output.items() if key.startswith("loss")}
    gradients = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return losses, gradients


def assert_same_step(reference, checked):
    (reference_losses, reference_gradients), (losses, gradients) = reference, checked
    assert sorted(losses) == sorted(reference_losses)
    for name, value in reference_losses.items():
        torch.testing.assert_close(losses[name], value, **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")
    assert sorted(gradients) == sorted(reference_gradients)
    for name, value in reference_gradients.items():
        torch.testing.assert_close(gradients[name], value, **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")


def layer_families(model):
    """The checkpointed segments of a GLSCL model, by family."""
    return {"vit": list(model.vision_transformer.transformer.resblocks),
            "text": list(model.text_transformer.encoder.layer),
            "fusion": [*model.cross_modal_text_layers, *model.cross_modal_image_layers]}


def forward_calls(model, run, backward=True):
    """Calls of each family's layers while ``run()`` runs and, with ``backward``, while the backward of the loss it
    returns runs."""
    counts = {"forward": dict.fromkeys(layer_families(model), 0), "backward": dict.fromkeys(layer_families(model), 0)}
    phase = ["forward"]

    def counter(family):
        def hook(module, args):  # a pre-hook: the recomputation stops early, before a forward hook would run
            counts[phase[0]][family] += 1
        return hook

    handles = [layer.register_forward_pre_hook(counter(family))
               for family, layers in layer_families(model).items() for layer in layers]
    try:
        loss = run()
        phase[0] = "backward"
        if backward:
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return counts


@pytest.mark.parametrize("share_unimodal_passes", [True, False])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_checkpointed_losses_and_gradients_equal_unchecked(tiny, share_unimodal_passes, mode):
    """Dropout is on in train mode: equality there needs the recomputation to replay the forward's masks."""
    model = tiny("glscl_pretrain", share_unimodal_passes=share_unimodal_passes, grad_checkpointing=True)
    model.train(mode == "train")
    samples = tiny_batch(4)
    checked = losses_and_gradients(model, samples, seed=11)
    model.set_grad_checkpointing(False)
    unchecked = losses_and_gradients(model, samples, seed=11)
    assert_same_step(unchecked, checked)
    if mode == "train":  # the seed matters, so dropout was live and the equality above is not vacuous
        other_seed = losses_and_gradients(model, samples, seed=12)[0]
        assert not torch.equal(other_seed["loss"], unchecked[0]["loss"])


def test_video_with_frozen_text_embeddings(tiny):
    """Videos (the frame attention mask goes through the checkpointed ViT blocks) with the text embeddings frozen as
    in ``demo``: no input of the first text layer then requires grad, yet its parameters must get gradients."""
    model = tiny("glscl_pretrain", freeze=["text_transformer.embeddings"]).train()
    samples = tiny_batch(4, frames=2)
    unchecked = losses_and_gradients(model, samples, seed=5)
    assert "text_transformer.encoder.layer.0.attention.self.query.weight" in unchecked[1]
    model.set_grad_checkpointing(True)
    assert_same_step(unchecked, losses_and_gradients(model, samples, seed=5))


def test_every_layer_is_recomputed_only_when_checkpointed(tiny):
    model = tiny("glscl_pretrain", grad_checkpointing=True).train()
    assert model.grad_checkpointing and model.vision_transformer.grad_checkpointing
    samples = tiny_batch(4)
    checked = forward_calls(model, lambda: model(samples).loss)
    model.set_grad_checkpointing(False)
    assert not model.vision_transformer.grad_checkpointing
    unchecked = forward_calls(model, lambda: model(samples).loss)
    assert checked["forward"] == unchecked["forward"]
    assert unchecked["backward"] == {"vit": 0, "text": 0, "fusion": 0}
    # every layer whose backward runs is recomputed once; a pass's last layer on a side no loss reads has no backward
    for family, calls in checked["backward"].items():
        assert 0.5 * checked["forward"][family] < calls <= checked["forward"][family], (family, checked)


def test_no_recomputation_without_autograd(tiny):
    model = tiny("glscl_pretrain", grad_checkpointing=True).eval()
    samples = tiny_batch(2)
    with torch.no_grad():
        counts = forward_calls(model, lambda: model.extract_features(samples, mode="multimodal"), backward=False)
    assert counts["forward"] == {family: len(layers) for family, layers in layer_families(model).items()}


def test_fusion_attentions_unchanged(tiny):
    """ALIGN-BENCH reads the cross-attention probabilities that the checkpointed fusion layers return."""
    model = tiny("glscl_pretrain", dropout=False).eval()
    text = model.tokenize(["a red circle above a blue square", "a small green triangle"])
    images = torch.randn(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def fused():
        fusion = model.fuse(model.encode_text(text.input_ids, text.attention_mask), text.attention_mask,
                            model.encode_image(images), num_frames=1, output_attentions=True)
        return fusion.text_feats, fusion.text_to_image_attentions

    reference_feats, reference_attentions = fused()
    model.set_grad_checkpointing(True)
    feats, attentions = fused()
    assert feats.requires_grad and len(attentions) == len(reference_attentions) == len(model.cross_modal_text_layers)
    torch.testing.assert_close(feats, reference_feats, **TOLERANCE)
    for attention, reference in zip(attentions, reference_attentions):
        torch.testing.assert_close(attention, reference, **TOLERANCE)
