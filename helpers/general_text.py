"""General English text for the retain loss and for measuring general capability.

The embedded corpus (``helpers/data/general_text/*.txt``) is encyclopedic prose written
for this project, with no sports content. Each file is a sequence of articles; an article
starts with a ``# Title`` line, followed by paragraphs. Every fifth article (in file and
title order) is held out, for measuring loss on text the retain loss never trained on.
"""

from __future__ import annotations

from importlib.resources import files

from helpers.validation import check_texts

EMBEDDED_TEXT = files("helpers") / "data" / "general_text"
SPLITS = ("train", "heldout", "all")
HELDOUT_EVERY = 5


def embedded_articles() -> list[tuple[str, str]]:
    """``(title, text)`` for every article of the embedded corpus, in a fixed order."""
    articles = []
    for path in sorted(EMBEDDED_TEXT.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".txt"):
            continue
        for block in path.read_text().split("\n# ")[0:]:
            title, _, body = block.lstrip("# ").partition("\n")
            if body.strip():
                articles.append((title.strip(), " ".join(body.split())))
    return articles


def load_general_text(split: str = "train") -> list[str]:
    """The embedded articles of one split (``train``, ``heldout`` or ``all``) as plain text."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS}")
    articles = [f"{title}. {text}" for title, text in embedded_articles()]
    if split == "all":
        return articles
    heldout = split == "heldout"
    return [a for i, a in enumerate(articles) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == heldout]


def load_hf_text(dataset: str = "monology/pile-uncopyrighted", n_documents: int = 1000, split: str = "train") -> list[str]:
    """The first ``n_documents`` texts of a Hugging Face data set, streamed (needs the internet)."""
    if n_documents < 1:
        raise ValueError(f"n_documents must be at least 1, got {n_documents}")
    from datasets import load_dataset

    stream = load_dataset(dataset, split=split, streaming=True)
    texts = []
    for record in stream:
        if "text" not in record:
            raise ValueError(f"Data set {dataset!r} has no 'text' column (columns: {sorted(record)})")
        texts.append(record["text"])
        if len(texts) == n_documents:
            break
    return check_texts(texts, f"Data set {dataset!r}")
