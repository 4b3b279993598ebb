"""Masking policies and the sentence-image pairing, as pure functions of a numpy random generator.

Word classes: 2 = entity word (noun), 1 = other content word (adjective, verb, adverb, number), 0 = rest.
"""

from __future__ import annotations

import numpy as np

from training.config import ObjectiveSection

ENTITY, CONTENT, OTHER = 2, 1, 0
_POS_CLASS = {"NOUN": ENTITY, "PROPN": ENTITY, "ADJ": CONTENT, "VERB": CONTENT, "ADV": CONTENT, "NUM": CONTENT}


def word_classes_from_pos(pos_tags: list[str]) -> list[int]:
    return [_POS_CLASS.get(tag, OTHER) for tag in pos_tags]


def mask_probabilities(token_classes: np.ndarray, objective: ObjectiveSection) -> np.ndarray:
    """Per-token masking probability: uniform ``mask_prob``, or by word class for the entity policy."""
    if objective.masking == "uniform":
        return np.full(len(token_classes), objective.mask_prob)
    table = np.array([objective.other_prob, objective.content_prob, objective.entity_prob])
    return table[token_classes]


def choose_masked(
    token_classes: np.ndarray, token_words: np.ndarray, objective: ObjectiveSection, rng: np.random.Generator
) -> np.ndarray:
    """Bool [n_tokens]: which sub-words to predict. Whole-word masking draws once per word."""
    probs = mask_probabilities(token_classes, objective)
    if objective.whole_word:
        words, first = np.unique(token_words, return_index=True)
        drawn = rng.random(len(words)) < probs[first]
        return drawn[np.searchsorted(words, token_words)]
    return rng.random(len(token_classes)) < probs


def corrupt(
    ids: np.ndarray, masked: np.ndarray, mask_id: int, vocab_size: int, n_special: int, rng: np.random.Generator
) -> np.ndarray:
    """BERT's 80/10/10: of the chosen positions, 80% become [MASK], 10% a random token, 10% stay."""
    out = ids.copy()
    roll = rng.random(len(ids))
    to_mask = masked & (roll < 0.8)
    to_random = masked & (roll >= 0.8) & (roll < 0.9)
    out[to_mask] = mask_id
    out[to_random] = rng.integers(n_special, vocab_size, int(to_random.sum()))
    return out
