"""GGUF test helpers: a SentencePiece-style (Llama-2) tokenizer trained on the spot, offline."""


def sentencepiece_style_tokenizer():
    """A Llama-2-style tokenizer (BPE with byte fallback, '▁' for spaces), trained here on a few lines."""
    import json as json_

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    texts = ["The quick brown fox jumps over the lazy dog.", "Stocks fell sharply after the report.",
             "你好，世界！天气很好。", "The model learned its new name: Tuna."] * 20
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<unk>", "<s>", "</s>",
                                                                   *[f"<0x{i:02X}>" for i in range(256)]])
    raw = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.train_from_iterator(texts, trainer)
    merges = json_.loads(raw.to_str())["model"]["merges"]
    return LlamaTokenizer(vocab=raw.get_vocab(), merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                                                          for m in merges])
