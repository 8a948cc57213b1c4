import pathlib
import sys

# tests import their helpers (golden_cases, torch_reference, references) by module name
sys.path.insert(0, str(pathlib.Path(__file__).parent))
