"""The text encoder's hidden states, checkpointed or not, against Hugging Face's own forward."""
import pytest
import torch

TOLERANCE = dict(rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_text_hidden_states_equal_hf_forward(lavis_glscl, family):
    """The checkpointed text path runs HF's layers itself: compare it with HF's own forward, dropout on and padding
    present, for both families (RoBERTa derives position ids from the padding)."""
    from transformers import AutoConfig, AutoModel

    from lavis_glscl.models.layers.text_encoder import text_hidden_states

    config = AutoConfig.for_model(family, vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=40, pad_token_id=1)
    torch.manual_seed(0)
    model = AutoModel.from_config(config).train()
    input_ids = torch.randint(3, 99, (3, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:], attention_mask[2, 3:] = 0, 0
    input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id)

    def run(checkpointed):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        hidden = text_hidden_states(model, input_ids, attention_mask, checkpointed)
        (hidden * torch.linspace(-1, 1, hidden.numel()).view_as(hidden)).sum().backward()
        return hidden.detach(), {name: param.grad for name, param in model.named_parameters()
                                 if param.grad is not None}

    reference_hidden, reference_gradients = run(False)
    hidden, gradients = run(True)
    torch.testing.assert_close(hidden, reference_hidden, **TOLERANCE)
    assert sorted(gradients) == sorted(reference_gradients) and any(".layer.0." in name for name in gradients)
    for name, gradient in reference_gradients.items():
        torch.testing.assert_close(gradients[name], gradient, **TOLERANCE)
