"""Seeds Python's `random` at interpreter start (from SEED_RANDOM), so the seed example's
`random.random() < 0.2` failures fall on the same epochs in every test run."""

import os
import random

if os.environ.get("SEED_RANDOM"):
    random.seed(int(os.environ["SEED_RANDOM"]))
