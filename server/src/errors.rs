//! The one table from engine error kinds to SQLSTATE codes.

use pgwire::error::{ErrorInfo, PgWireError};
use sluice_engine::{ErrorKind, SluiceError};

/// SQLSTATE for each kind of engine error. Every error a client sees comes
/// through here, so codes are consistent across statements.
pub fn sqlstate(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Syntax => "42601",
        ErrorKind::UndefinedTable => "42P01",
        ErrorKind::UndefinedColumn => "42703",
        ErrorKind::DuplicateObject => "42P07",
        ErrorKind::NotSupported => "0A000",
        ErrorKind::InvalidParameter => "22023",
        ErrorKind::Semantic => "42804",
        ErrorKind::StorageUnavailable => "58030",
        ErrorKind::Cancelled => "57014",
        ErrorKind::Internal => "XX000",
    }
}

/// An engine error as the ErrorResponse a client receives.
pub fn error_info(e: &SluiceError) -> ErrorInfo {
    ErrorInfo::new("ERROR".into(), sqlstate(e.kind()).into(), e.to_string())
}

/// An engine error as a pgwire error.
pub fn to_pg(e: SluiceError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(&e)))
}

/// An error of the given kind as a pgwire error.
pub fn pg_error(kind: ErrorKind, message: impl Into<String>) -> PgWireError {
    to_pg(SluiceError::new(kind, message))
}

/// A panic caught while running one statement: the statement fails with
/// XX000 and the server keeps serving.
pub fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PgWireError {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(panic = %msg, "statement panicked");
    pg_error(ErrorKind::Internal, format!("internal error: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_documented_table() {
        assert_eq!(sqlstate(ErrorKind::Syntax), "42601");
        assert_eq!(sqlstate(ErrorKind::UndefinedTable), "42P01");
        assert_eq!(sqlstate(ErrorKind::UndefinedColumn), "42703");
        assert_eq!(sqlstate(ErrorKind::DuplicateObject), "42P07");
        assert_eq!(sqlstate(ErrorKind::NotSupported), "0A000");
        assert_eq!(sqlstate(ErrorKind::InvalidParameter), "22023");
        assert_eq!(sqlstate(ErrorKind::StorageUnavailable), "58030");
        assert_eq!(sqlstate(ErrorKind::Internal), "XX000");
    }
}
