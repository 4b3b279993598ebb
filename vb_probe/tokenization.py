"""Word-by-word tokenisation with transformers' fast BERT tokenizer, keeping a word → sub-word map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vb_probe.errors import CheckpointError

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class TokenizedWords:
    """``input_ids`` of ``[CLS] sub-words [SEP]``; ``word_last_token[i]`` is the position of word i's last
    sub-word (None when truncation dropped it); ``word_first_token`` likewise for the first."""

    input_ids: list[int]
    word_first_token: list[int | None]
    word_last_token: list[int | None]


def has_tokenizer_files(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file()


def load_tokenizer(folder: str | Path, vocab_size: int | None = None):
    """``BertTokenizerFast`` from a folder with vocab.txt or tokenizer.json; checks it fits the model."""
    from transformers import BertTokenizerFast

    folder = Path(folder)
    if not has_tokenizer_files(folder):
        raise CheckpointError(
            f"{folder}: no vocab.txt or tokenizer.json; pass --tokenizer with a BERT tokenizer folder"
        )
    try:
        tokenizer = BertTokenizerFast.from_pretrained(str(folder))
    except Exception as exc:  # a broken tokenizer.json or vocab.txt raises many different types
        raise CheckpointError(f"{folder}: cannot read the tokenizer ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:100] if str(exc) else 'unreadable'}); "
                              "re-save it, or pass --tokenizer with a BERT tokenizer folder") from None
    base_vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    absent = [t for t in BERT_SPECIAL_TOKENS if t not in base_vocab]
    if absent:  # transformers would append them as new ids: every later id would then mean another word
        raise CheckpointError(f"{folder}: the vocabulary has no {', '.join(absent)}; expected a BERT WordPiece "
                              f"vocabulary with {' '.join(BERT_SPECIAL_TOKENS)}; pass the tokenizer the checkpoint "
                              "was trained with")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer has {len(tokenizer)} tokens but the checkpoint's vocab_size is {vocab_size}; "
            "pass the tokenizer the checkpoint was trained with (--tokenizer)"
        )
    return tokenizer


def tokenize_words(tokenizer, words: list[str], max_length: int = 512) -> TokenizedWords:
    """Tokenise pre-split ``words`` as one sequence; sub-words keep their word index. Words are data, so a word
    that spells a special token (``[SEP]``, ``[MASK]``) is split as text, never read as the control token."""
    return tokenize_captions(tokenizer, [words], max_length)[0]


def tokenize_captions(tokenizer, captions: list[list[str]], max_length: int = 512) -> list[TokenizedWords]:
    """:func:`tokenize_words` for a batch of captions in one tokenizer call (the fast tokenizer encodes them
    together: one call's overhead a batch, not a caption); each caption its own sequence, unpadded."""
    encoding = tokenizer(captions, is_split_into_words=True, truncation=True, max_length=max_length,
                         add_special_tokens=True, split_special_tokens=True)
    out = []
    for index, words in enumerate(captions):
        first: list[int | None] = [None] * len(words)
        last: list[int | None] = [None] * len(words)
        for position, word in enumerate(encoding.word_ids(index)):
            if word is None:
                continue
            if first[word] is None:
                first[word] = position
            last[word] = position
        out.append(TokenizedWords(list(encoding["input_ids"][index]), first, last))
    return out
