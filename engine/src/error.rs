//! The engine's error type.
//!
//! Every error says whose fault it is through [`ErrorKind`]; the server maps
//! kinds to SQLSTATE codes in one table, so nothing below the server needs to
//! know about the Postgres wire protocol.

use datafusion::error::DataFusionError;

/// What went wrong, from the user's point of view. The server maps each kind
/// to one SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The statement does not parse.
    Syntax,
    /// A table, stream or view that does not exist.
    UndefinedTable,
    /// Another kind of object (a role) that does not exist.
    UndefinedObject,
    /// A column that does not exist.
    UndefinedColumn,
    /// Something with that name exists already.
    DuplicateObject,
    /// Dropping it would break something that uses it.
    DependentObjectsStillExist,
    /// Valid SQL that Sluice does not (yet) run.
    NotSupported,
    /// An option or parameter value that is not accepted.
    InvalidParameter,
    /// A type mismatch or other semantic error in the statement.
    Semantic,
    /// The storage behind a table (S3, HDFS, local disk) could not be reached
    /// or answered with an error. A retry may help.
    StorageUnavailable,
    /// The query was cancelled by the client.
    Cancelled,
    /// Division by zero.
    DivisionByZero,
    /// A number outside its type's range (integer overflow).
    NumericOutOfRange,
    /// Text that does not parse as the type it is cast to.
    InvalidTextRepresentation,
    /// A statement larger than the server accepts, or a value too large to
    /// make (Postgres' program_limit_exceeded).
    ProgramLimitExceeded,
    /// Expressions or queries nested too deeply to plan.
    StatementTooComplex,
    /// The query needed more memory than it may use.
    OutOfMemory,
    /// Not allowed: a local path outside the allowed directories, or one of
    /// Sluice's own files.
    InsufficientPrivilege,
    /// A function that does not exist (with these argument types).
    UndefinedFunction,
    /// FETCH or CLOSE of a cursor that is not open.
    InvalidCursorName,
    /// DECLARE of a cursor whose name is taken.
    DuplicateCursor,
    /// A backward FETCH from a cursor declared without SCROLL (Postgres'
    /// object_not_in_prerequisite_state).
    ObjectNotInPrerequisiteState,
    /// A scalar subquery that returned more than one row.
    CardinalityViolation,
    /// A NULL where the column may not hold one.
    NotNullViolation,
    /// COPY data that is not in the format it was declared in.
    BadCopyFileFormat,
    /// A bug in Sluice or one of its libraries.
    Internal,
}

/// The engine's error: a kind plus a message a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum SluiceError {
    /// An error raised by Sluice itself.
    #[error("{message}")]
    Sluice { kind: ErrorKind, message: String },
    /// An error raised by DataFusion while planning or running a query.
    #[error("{}", describe_datafusion(.0))]
    DataFusion(#[from] DataFusionError),
    /// An I/O error on the local data directory.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
}

impl From<arrow::error::ArrowError> for SluiceError {
    fn from(e: arrow::error::ArrowError) -> Self {
        SluiceError::DataFusion(DataFusionError::from(e))
    }
}

/// The engine's result type.
pub type Result<T, E = SluiceError> = std::result::Result<T, E>;

impl SluiceError {
    /// A new error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SluiceError::Sluice {
            kind,
            message: message.into(),
        }
    }

    /// Shorthand for a [`ErrorKind::NotSupported`] error.
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotSupported, message)
    }

    /// Shorthand for an [`ErrorKind::InvalidParameter`] error.
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParameter, message)
    }

    /// Shorthand for an [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// As a DataFusion error, for errors raised inside DataFusion streams
    /// (a source's error while a query pulls its rows). The kind survives
    /// the round trip.
    pub fn into_datafusion(self) -> DataFusionError {
        match self {
            SluiceError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }

    /// Whose fault this error is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SluiceError::Sluice { kind, .. } => *kind,
            SluiceError::DataFusion(e) => classify_datafusion(e),
            SluiceError::Io(_) => ErrorKind::StorageUnavailable,
        }
    }
}

/// DataFusion wraps errors in context layers; the innermost error decides the
/// kind.
fn classify_datafusion(e: &DataFusionError) -> ErrorKind {
    match e {
        DataFusionError::Context(_, inner) => classify_datafusion(inner),
        DataFusionError::Diagnostic(_, inner) => classify_datafusion(inner),
        DataFusionError::Shared(inner) => classify_datafusion(inner),
        DataFusionError::Collection(errs) => errs
            .first()
            .map(classify_datafusion)
            .unwrap_or(ErrorKind::Internal),
        DataFusionError::SQL(_, _) => ErrorKind::Syntax,
        DataFusionError::NotImplemented(_) => ErrorKind::NotSupported,
        DataFusionError::ObjectStore(_) => ErrorKind::StorageUnavailable,
        DataFusionError::IoError(_) => ErrorKind::StorageUnavailable,
        DataFusionError::SchemaError(err, _) => {
            use datafusion::common::SchemaError;
            match err.as_ref() {
                SchemaError::FieldNotFound { .. } => ErrorKind::UndefinedColumn,
                _ => ErrorKind::Semantic,
            }
        }
        DataFusionError::Plan(msg) => classify_plan_message(msg),
        DataFusionError::Configuration(_) => ErrorKind::InvalidParameter,
        DataFusionError::ArrowError(e, _) if classify_arrow(e).is_some() => {
            classify_arrow(e).expect("checked")
        }
        DataFusionError::ArrowError(_, _) | DataFusionError::ParquetError(_) => {
            // Arrow and Parquet errors while reading landed files are most
            // often bad or unreachable data, not bugs.
            ErrorKind::StorageUnavailable
        }
        DataFusionError::Execution(msg) => classify_plan_message(msg),
        DataFusionError::External(inner) => {
            if let Some(df) = inner.downcast_ref::<DataFusionError>() {
                classify_datafusion(df)
            } else if let Some(own) = inner.downcast_ref::<SluiceError>() {
                own.kind()
            } else if inner.downcast_ref::<object_store::Error>().is_some()
                || inner.downcast_ref::<std::io::Error>().is_some()
            {
                ErrorKind::StorageUnavailable
            } else {
                ErrorKind::Internal
            }
        }
        DataFusionError::ResourcesExhausted(_) => ErrorKind::OutOfMemory,
        _ => ErrorKind::Internal,
    }
}

/// Arrow's compute errors that are the data's fault, as Postgres reports them.
fn classify_arrow(e: &arrow::error::ArrowError) -> Option<ErrorKind> {
    use arrow::error::ArrowError;
    match e {
        ArrowError::DivideByZero => Some(ErrorKind::DivisionByZero),
        ArrowError::ArithmeticOverflow(_) => Some(ErrorKind::NumericOutOfRange),
        ArrowError::CastError(_) | ArrowError::ParseError(_) => Some(ErrorKind::InvalidTextRepresentation),
        ArrowError::MemoryError(_) => Some(ErrorKind::OutOfMemory),
        _ => None,
    }
}

/// DataFusion reports most semantic errors as `Plan` or `Execution` strings;
/// these are the shapes it uses for the ones users hit most.
fn classify_plan_message(msg: &str) -> ErrorKind {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("pipeline breaking") {
        return ErrorKind::NotSupported;
    }
    let missing =
        lower.contains("not found") || lower.contains("doesn't exist") || lower.contains("does not exist");
    if lower.starts_with("invalid function") {
        ErrorKind::UndefinedFunction
    } else if lower.contains("unrecognized configuration parameter") {
        ErrorKind::UndefinedObject
    } else if missing && lower.contains("table") {
        ErrorKind::UndefinedTable
    } else if lower.contains("subquery returned more than one row") {
        ErrorKind::CardinalityViolation
    } else if lower.contains("already exists") {
        ErrorKind::DuplicateObject
    } else if lower.contains("invalid input syntax for type") {
        ErrorKind::InvalidParameter
    } else if lower.contains("unsupported") || lower.contains("not supported") {
        ErrorKind::NotSupported
    } else if lower.contains("no field named") || lower.contains("column") && lower.contains("not found") {
        ErrorKind::UndefinedColumn
    } else {
        ErrorKind::Semantic
    }
}

const UNBOUNDED_MESSAGE: &str = "this query would need all rows of an unbounded stream (an aggregate, \
     sort or join over it never finishes); add LIMIT, read a bounded stream ('events.max'), \
     or run it continuously as a sink or materialized view";

/// DataFusion's messages carry prefixes like "Error during planning: " that
/// say which layer raised them; users care about the sentence after it.
fn describe_datafusion(e: &DataFusionError) -> String {
    match e {
        DataFusionError::Context(ctx, inner) => format!("{ctx}: {}", describe_datafusion(inner)),
        DataFusionError::Diagnostic(_, inner) => describe_datafusion(inner),
        DataFusionError::Shared(inner) => describe_datafusion(inner),
        DataFusionError::Plan(msg) | DataFusionError::Execution(msg) if msg.contains("pipeline breaking") => {
            UNBOUNDED_MESSAGE.to_string()
        }
        DataFusionError::Plan(msg) | DataFusionError::Execution(msg) => msg.clone(),
        DataFusionError::SQL(err, _) => format!("syntax error: {err}"),
        DataFusionError::SchemaError(err, _) => err.to_string(),
        DataFusionError::NotImplemented(msg) => format!("not supported: {msg}"),
        DataFusionError::ObjectStore(err) => format!("storage error: {err}"),
        DataFusionError::External(inner) => {
            if let Some(df) = inner.downcast_ref::<DataFusionError>() {
                describe_datafusion(df)
            } else {
                inner.to_string()
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_messages_are_classified() {
        assert_eq!(
            classify_plan_message("table 'sluice.public.nope' not found"),
            ErrorKind::UndefinedTable
        );
        assert_eq!(
            classify_plan_message("Table 'x' doesn't exist."),
            ErrorKind::UndefinedTable
        );
        assert_eq!(
            classify_plan_message("Table 't' already exists"),
            ErrorKind::DuplicateObject
        );
        assert_eq!(
            classify_plan_message("type mismatch in comparison"),
            ErrorKind::Semantic
        );
    }

    #[test]
    fn context_layers_are_peeled() {
        let inner = DataFusionError::NotImplemented("LATERAL".into());
        let e = SluiceError::from(DataFusionError::Context("planning".into(), Box::new(inner)));
        assert_eq!(e.kind(), ErrorKind::NotSupported);
        assert_eq!(e.to_string(), "planning: not supported: LATERAL");
    }
}
