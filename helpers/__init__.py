"""Helpers for the executable reproduction of "Mechanistic Unlearning" (Guo et al., ICML 2025).

Modules, grouped by the step of the book they serve:

- Set-up: :mod:`helpers.seed` (seeding), :mod:`helpers.cache` (where derived files live, written
  atomically), :mod:`helpers.keys` (what cache and record keys hold: model, dtype, code version),
  :mod:`helpers.models` (the embedded Gemma-3-270M or any Hugging Face model),
  :mod:`helpers.precision` (float32 or bf16 matrix products, ``auto`` from the hardware),
  :mod:`helpers.kernels` (float32 matrix products by oneDNN on a CPU),
  :mod:`helpers.parameters` (the range of every notebook parameter; the names it allows in
  :mod:`helpers.choices`), :mod:`helpers.plots`
  (figures offline), :mod:`helpers.book` (execute the notebooks, build the book),
  :mod:`helpers.prerequisites` (a chapter opened alone runs the earlier chapters it reads),
  :mod:`helpers.exercises` (the chapters' exercises: student versions with nbgrader).
- Data and prompts: :mod:`helpers.sports`, :mod:`helpers.counterfact`,
  :mod:`helpers.general_text`, checked by :mod:`helpers.validation`; :mod:`helpers.prompts`
  (every prompt format), :mod:`helpers.scoring` (probabilities of candidate answers),
  :mod:`helpers.packing` (a batch's prompts in one sequence, their shared prefix once),
  :mod:`helpers.knowledge` (cached knowledge scores), :mod:`helpers.formats` (the same facts in
  several formats).
- Localization (chapters 01-03): :mod:`helpers.probes` (sports fact lookup),
  :mod:`helpers.contrast` (clean and corrupted prompts), :mod:`helpers.path_patching`
  (CounterFact fact lookup), :mod:`helpers.tracing` (causal tracing, attribution patching),
  :mod:`helpers.nnsight_methods` (path patching's head step and attribution patching in nnsight),
  :mod:`helpers.localization` (component sets, budgets, controls);
  :mod:`helpers.reuse` (activations below the lowest changed layer, computed once).
- Editing (chapter 04): :mod:`helpers.tasks`, :mod:`helpers.finetune`, :mod:`helpers.records`,
  :mod:`helpers.sweep` (hyper-parameters on validation tasks), :mod:`helpers.grid`,
  :mod:`helpers.executors` (runs in this process or as submitit jobs on a cluster).
- Robustness (chapters 05-07): :mod:`helpers.robustness` (what every run measures),
  :mod:`helpers.evaluation`, :mod:`helpers.relearning`, :mod:`helpers.soft_prompt`,
  :mod:`helpers.latent`, :mod:`helpers.mmlu`.
- Results (chapter 08): :mod:`helpers.results`, :mod:`helpers.stats`, :mod:`helpers.verdicts`,
  :mod:`helpers.paper` (the paper's numbers).
"""

import warnings

import tqdm.asyncio
import tqdm.std

# Progress bars are text on stderr, in a terminal and in a notebook alike. In a Jupyter kernel
# tqdm.auto (ours, transformers', huggingface_hub's) would draw ipywidgets bars (nbgrader installs
# ipywidgets): executed to a file, such a bar keeps no state and shows a frozen "0%". Every
# notebook imports helpers before any library that draws a bar, so they all get the text bar.
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto's warning where ipywidgets is missing
import tqdm.auto  # noqa: E402  (after the filter)
import tqdm.autonotebook  # noqa: E402

tqdm.autonotebook.tqdm, tqdm.autonotebook.trange = tqdm.std.tqdm, tqdm.std.trange
tqdm.auto.tqdm, tqdm.auto.trange = tqdm.asyncio.tqdm, tqdm.asyncio.trange
