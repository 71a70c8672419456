"""Files shipped inside the package, by path: found without importing torch."""

from pathlib import Path

DEMO_CHECKPOINT = Path(__file__).parent / "weights" / "demo.safetensors"
