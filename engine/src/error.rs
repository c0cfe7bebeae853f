//! The one error type of the engine. Every failure names the thing that failed and what
//! was expected, so a user can fix their input without reading the source.

use std::path::Path;

/// Everything the engine can fail with. The library never panics on bad input; it
/// returns one of these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A profile field breaks a rule.
    #[error("profile `{profile}`: field `{field}` {rule}")]
    Profile {
        profile: String,
        field: String,
        rule: String,
    },
    /// A profile file could not be parsed.
    #[error("profile {path}: {msg}")]
    ProfileParse { path: String, msg: String },
    /// A checkpoint tensor is missing, mis-shaped or of the wrong dtype.
    #[error("checkpoint {path}: tensor `{tensor}`: expected {expected}, found {found}")]
    Tensor {
        path: String,
        tensor: String,
        expected: String,
        found: String,
    },
    /// A checkpoint file is corrupt or truncated.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    /// An I/O operation on a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An argument has the wrong shape or size.
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        what: String,
        expected: String,
        found: String,
    },
    /// An argument is invalid for another reason.
    #[error("{0}")]
    Invalid(String),
    /// A backend failed while executing an operation.
    #[error("{backend} backend: {op}: {msg}")]
    Backend {
        backend: String,
        op: String,
        msg: String,
    },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// A shape mismatch of `what`.
    pub fn shape(what: impl Into<String>, expected: impl ToString, found: impl ToString) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

/// Formats a shape as `[a, b, c]`.
pub fn fmt_shape(shape: &[usize]) -> String {
    format!("{shape:?}")
}

/// Displays a path for messages.
pub fn path_str(path: &Path) -> String {
    path.display().to_string()
}
