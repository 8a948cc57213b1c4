"""Exceptions raised by sos_rs. The Rust core raises these by name (see rust/py/convert.rs),
so every error from Python input is one of these, never a panic."""


class SosError(Exception):
    """Base class of every sos_rs error."""


class ShapeError(SosError, ValueError):
    """Operand shapes do not fit an op; the message names the op and the shapes."""


class DTypeError(SosError, TypeError):
    """An array has a dtype the op does not take (tensors are float32, token ids integers)."""


class InvalidValueError(SosError, ValueError):
    """A value is out of range: NaN or inf data, a token id outside the vocabulary, ..."""


class ShardFormatError(SosError, ValueError):
    """A token shard is corrupt, truncated or mismatched; the message names the file and the fault."""
