import time

import pytest
import torch

from video_diffusion_pytorch import BERT_MODEL_DIM, GaussianDiffusion, Unet3D, bert_embed, tokenize
from video_diffusion_pytorch import text

TEXTS = ["a whale breaching from afar", "fireworks with blue and green sparkles the end"]


def test_tokenize_pads_and_frames_with_special_tokens(tiny_bert):
    ids = tokenize(TEXTS)
    tokenizer = text.get_tokenizer()
    assert ids.shape[0] == 2
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    assert (ids[0] == tokenizer.pad_token_id).any()  # the shorter text is padded
    assert tokenize("a whale").shape == (1, 4)  # [CLS] a whale [SEP]
    assert tokenizer.unk_token_id not in tokenize("a whale")[0].tolist()


def test_bert_embed_is_the_mean_over_tokens_after_cls(tiny_bert):
    ids = tokenize(TEXTS)
    embeddings = bert_embed(ids)
    hidden = text.get_bert()(input_ids=ids, attention_mask=ids != 0).last_hidden_state
    for row in range(2):
        count = int((ids[row] != 0).sum())
        expected = hidden[row, 1:count].mean(dim=0)
        torch.testing.assert_close(embeddings[row], expected, rtol=1e-5, atol=1e-5)
    assert embeddings.shape == (2, BERT_MODEL_DIM)
    torch.testing.assert_close(bert_embed(ids, return_cls_repr=True), hidden[:, 0])


def test_bert_loads_once(tiny_bert):
    assert text.get_bert() is text.get_bert()
    assert text.get_tokenizer() is text.get_tokenizer()


def test_missing_bert_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(text, "_hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(text.BertUnavailableError, match="VIDEO_DIFFUSION_BERT_MODEL") as error:
        text.get_bert("no-such-org/no-such-bert")
    assert time.perf_counter() - start < 10
    assert "not in the local cache" in str(error.value)
    with pytest.raises(text.BertUnavailableError, match="not a complete saved model"):
        text.get_tokenizer(str(tmp_path))  # an existing but empty folder


def test_model_name_resolution(monkeypatch):
    monkeypatch.delenv(text.BERT_MODEL_ENV, raising=False)
    assert text.bert_model_name() == "bert-base-cased"
    monkeypatch.setenv(text.BERT_MODEL_ENV, "/models/bert")
    assert text.bert_model_name() == "/models/bert"
    assert text.bert_model_name("other") == "other"


def text_diffusion(**kwargs):
    torch.manual_seed(0)
    unet = Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, use_bert_text_cond=True)
    return GaussianDiffusion(unet, image_size=8, num_frames=3, timesteps=5, **kwargs)


def test_training_on_strings_equals_training_on_their_embeddings(tiny_bert):
    diffusion = text_diffusion()
    x = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    t, noise = torch.tensor([1, 3]), torch.randn(2, 3, 3, 8, 8)
    from_strings = diffusion.p_losses(x, t, cond=TEXTS, noise=noise)
    from_embeddings = diffusion.p_losses(x, t, cond=bert_embed(tokenize(TEXTS)), noise=noise)
    torch.testing.assert_close(from_strings, from_embeddings)


@pytest.mark.parametrize("use_cls", [False, True])
def test_sample_honours_text_use_bert_cls(tiny_bert, use_cls):
    # the original embedded with the token mean in sample() whatever text_use_bert_cls said
    diffusion = text_diffusion(text_use_bert_cls=use_cls)
    embeddings = bert_embed(tokenize(TEXTS), return_cls_repr=use_cls)
    from_strings = diffusion.sample(cond=TEXTS, cond_scale=2.0, generator=torch.Generator().manual_seed(1), progress=False)
    from_embeddings = diffusion.sample(
        cond=embeddings, cond_scale=2.0, generator=torch.Generator().manual_seed(1), progress=False
    )
    torch.testing.assert_close(from_strings, from_embeddings)
    assert from_strings.shape == (2, 3, 3, 8, 8)


def test_bert_model_argument_overrides_the_environment(tiny_bert_path, monkeypatch):
    monkeypatch.setenv(text.BERT_MODEL_ENV, "no-such-org/no-such-bert")
    monkeypatch.setattr(text, "_hub_reachable", lambda timeout=3.0: False)
    diffusion = text_diffusion(bert_model=str(tiny_bert_path))
    loss = diffusion(torch.rand(2, 3, 3, 8, 8), cond=TEXTS)
    assert torch.isfinite(loss)
