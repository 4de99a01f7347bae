import pytest
import torch

WORDS = (
    "a whale breaching from afar young girl blowing out candles on her birthday cake "
    "fireworks with blue and green sparkles red square moving left right circle the"
).split()


def build_tiny_bert(folder):
    """A BERT with BERT-base's width (768) but one tiny layer, saved like a downloaded one."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    BertTokenizer(str(vocab_file)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def tiny_bert(tiny_bert_path, monkeypatch):
    """Point the text module at the tiny BERT for one test."""
    monkeypatch.setenv("VIDEO_DIFFUSION_BERT_MODEL", str(tiny_bert_path))
    return tiny_bert_path
