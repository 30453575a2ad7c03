"""Where the deploy tests find the repository and the Terraform code."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "deploy" / "terraform" / "modules" / "notes"
EXAMPLE_DIR = REPO / "deploy" / "terraform" / "examples" / "basic"
