"""Example LightningModules. Plain Lightning: nothing here imports `launcher`.

They subclass the job's Lightning, so that they pair with classes of either namespace: launch sets
LAUNCH_LIGHTNING from the job's own classes (`lightning.pytorch` for `import lightning as L`)
before it imports these; `pytorch_lightning` otherwise. In a project of your own, write
`import lightning.pytorch as pl` (or `import pytorch_lightning as pl`) instead.
"""

import importlib
import os

pl = importlib.import_module(os.environ.get("LAUNCH_LIGHTNING") or "pytorch_lightning")
