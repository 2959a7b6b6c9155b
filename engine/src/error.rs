//! The engine's error type, shared by every trait a connector or operator implements.

use arrow::error::ArrowError;

/// Who is at fault for an error, so that callers (and later the scheduler) can decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The job, its spec or its input data is wrong: fix the input, do not retry.
    User,
    /// Something outside the engine failed (a file system, a network): a retry may help.
    External,
    /// A bug in Streamrun or in an operator: report it.
    Internal,
}

/// Every error the engine, its operators and its connectors report.
///
/// Messages name the place at fault: the node of the plan, the file and line, the column.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job graph is invalid: an unknown column, a missing sink, an unsupported shape.
    #[error("invalid job: {0}")]
    Plan(String),
    /// A record or file of input data is bad; the message names the file and line.
    #[error("bad input: {0}")]
    Input(String),
    /// An I/O operation failed; `context` names the file or resource.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An Arrow kernel or format failed; `context` names the operator or file.
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: ArrowError,
    },
    /// A user-supplied operator (a task, a filter, a batch function) returned an error.
    #[error("operator '{operator}' failed: {message}")]
    Operator {
        /// The operator's name in the job.
        operator: String,
        /// What it reported.
        message: String,
    },
    /// A serialized plan or message carries a version this build does not read.
    #[error(
        "{what} version {found} is not supported: this build of Streamrun reads version {expected}"
    )]
    Version {
        /// Which format: "logical plan", "physical plan".
        what: &'static str,
        /// The version found.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// An invariant of the engine was broken: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Plan(_) | Error::Input(_) | Error::Version { .. } | Error::Operator { .. } => {
                Fault::User
            }
            Error::Io { .. } => Fault::External,
            Error::Arrow { .. } | Error::Internal(_) => Fault::Internal,
        }
    }

    /// Whether running the same work again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.fault() == Fault::External
    }

    /// An [`Error::Io`] with the given context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`Error::Arrow`] with the given context.
    pub fn arrow(context: impl Into<String>, source: ArrowError) -> Self {
        Error::Arrow {
            context: context.into(),
            source,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns early with an [`Error::Plan`] built from a format string.
#[macro_export]
macro_rules! plan_err {
    ($($arg:tt)*) => { return Err($crate::Error::Plan(format!($($arg)*))) };
}
