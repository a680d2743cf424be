"""Values that must reach a job byte for byte (NASTY) or never reach a file (SECRETS).

The fake secrets are data, not source: a run's code snapshot copies the job's Python files
(this package among them), and the test that no file of a run holds a secret must find only what
launch itself wrote.
"""

import json
from pathlib import Path

NASTY = "it's a \"run\" $(touch PWNED) `touch PWNED2`; $HOME & | > x"

SECRETS: dict[str, str] = json.loads((Path(__file__).parent / "fake_secrets.json").read_text())
