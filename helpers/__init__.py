"""Helpers for the executable reproduction of "Mechanistic Unlearning" (Guo et al., ICML 2025).

Modules, in the order the book uses them:

- :mod:`helpers.seed`: one seeding utility used everywhere.
- :mod:`helpers.models`: load the embedded Gemma-3-270M or any Hugging Face model.
- :mod:`helpers.prompts`: every prompt template (fact, paraphrase, multiple choice).
- :mod:`helpers.scoring`: batched probabilities of candidate answers.
- :mod:`helpers.sports`, :mod:`helpers.counterfact`, :mod:`helpers.general_text`: the data,
  checked by :mod:`helpers.validation`.
- :mod:`helpers.parameters`: the range of every notebook parameter, for profiles, papermill and the API.
- :mod:`helpers.keys`: what cache and record keys hold (model, dtype, code version).
- :mod:`helpers.plots`: plotly set-up so figures render offline in the book.
- :mod:`helpers.book`: execute the notebooks with papermill and build the book.
"""

import warnings

# huggingface_hub imports tqdm.auto, which warns in every notebook when ipywidgets is missing.
# The book's pages are static and show text progress bars, which need no widgets.
warnings.filterwarnings("ignore", message="IProgress not found")
