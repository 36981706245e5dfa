"""The names a parameter may take, kept free of heavy imports.

The parameter check that opens every notebook (:mod:`helpers.parameters`) needs only these
names; importing them from the modules that use them would load torch and transformers first.
"""

TASKS = ("sports_athlete_edit", "sports_sport_edit", "counterfact_edit")
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # weights' dtypes (torch's names)
PRECISIONS = ("float32", "bfloat16")  # matrix-product precisions
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a precision parameter accepts
ATTACKS = ("lora", "full")  # relearning attacks (helpers.relearning)
