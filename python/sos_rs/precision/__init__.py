"""`sos precision`: how much error float16, bfloat16 and float32 arithmetic make against a float64
reference (SPEC §9), with an exact emulation of the low-precision formats in numpy.
`formats` rounds and emulates fused multiply-adds, `block` is the dense block in a format,
`study` runs the protocol and reports."""

from .formats import BFLOAT16, FLOAT16, FLOAT32, FLOAT64, Format, fma, round_to_format
from .study import StudyConfig, format_report, run_study

__all__ = [
    "BFLOAT16",
    "FLOAT16",
    "FLOAT32",
    "FLOAT64",
    "Format",
    "StudyConfig",
    "fma",
    "format_report",
    "round_to_format",
    "run_study",
]
