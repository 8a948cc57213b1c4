//! The crate's one error type. Each variant becomes its own Python exception class in `py/`.

use thiserror::Error;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// Operand shapes do not fit the op; carries the op and every shape involved.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    /// A value is outside what the op accepts (token id out of range, NaN where forbidden, ...).
    #[error("{op}: {detail}")]
    Value { op: &'static str, detail: String },
    /// A token shard is unreadable, corrupt, truncated or does not match its companions.
    #[error("{path}: {detail}")]
    ShardFormat { path: String, detail: String },
}

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
    pub fn value(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Value { op, detail: detail.into() }
    }
    pub fn shard(path: &std::path::Path, detail: impl Into<String>) -> Self {
        Error::ShardFormat { path: path.display().to_string(), detail: detail.into() }
    }
}

/// Returns a `Shape` error unless `cond` holds; the detail is built only on failure.
macro_rules! ensure_shape {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::shape($op, format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure_shape;
