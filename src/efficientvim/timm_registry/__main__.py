"""Run a timm script (train.py, validate.py, benchmark.py ... from timm's repository) with our models registered:

    python -m efficientvim.timm_registry validate.py --model efficientvim_m1_ev --checkpoint best.safetensors ...

The script runs as ``__main__`` with the remaining arguments, exactly as ``python SCRIPT ARGS`` would run it,
after ``import efficientvim.timm_registry`` has put ``efficientvim_*_ev`` into timm's registry.
"""

import runpy
import sys
from pathlib import Path

from . import efficientvim  # noqa: F401 (registers our models)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    script = Path(argv[0])
    if not script.is_file():
        print(f"error: no script {script}: pass a timm script such as validate.py (from timm's repository)",
              file=sys.stderr)
        return 2
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))  # as python SCRIPT does: the script's folder first
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
