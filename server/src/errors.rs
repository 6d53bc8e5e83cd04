//! The one table from engine error kinds to SQLSTATE codes.

use pgwire::error::{ErrorInfo, PgWireError};
use sluice_engine::{ErrorKind, SluiceError};

/// SQLSTATE for each kind of engine error. Every error a client sees comes
/// through here, so codes are consistent across statements.
pub fn sqlstate(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Syntax => "42601",
        ErrorKind::UndefinedTable => "42P01",
        ErrorKind::UndefinedObject => "42704",
        ErrorKind::UndefinedColumn => "42703",
        ErrorKind::DuplicateObject => "42P07",
        ErrorKind::DependentObjectsStillExist => "2BP01",
        ErrorKind::NotSupported => "0A000",
        ErrorKind::InvalidParameter => "22023",
        ErrorKind::Semantic => "42804",
        ErrorKind::StorageUnavailable => "58030",
        ErrorKind::Cancelled => "57014",
        ErrorKind::DivisionByZero => "22012",
        ErrorKind::NumericOutOfRange => "22003",
        ErrorKind::InvalidTextRepresentation => "22P02",
        ErrorKind::ProgramLimitExceeded => "54000",
        ErrorKind::StatementTooComplex => "54001",
        ErrorKind::OutOfMemory => "53200",
        ErrorKind::InsufficientPrivilege => "42501",
        ErrorKind::UndefinedFunction => "42883",
        ErrorKind::InvalidCursorName => "34000",
        ErrorKind::DuplicateCursor => "42P03",
        ErrorKind::ObjectNotInPrerequisiteState => "55000",
        ErrorKind::CardinalityViolation => "21000",
        ErrorKind::NotNullViolation => "23502",
        ErrorKind::BadCopyFileFormat => "22P04",
        ErrorKind::Internal => "XX000",
    }
}

/// An engine error as the ErrorResponse a client receives.
pub fn error_info(e: &SluiceError) -> ErrorInfo {
    let code = sqlstate(e.kind());
    crate::metrics::METRICS.errors.with_label_values(&[code]).inc();
    ErrorInfo::new("ERROR".into(), code.into(), e.to_string())
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
    let msg = panic_text(&*payload);
    tracing::error!(panic = %msg, "statement panicked");
    pg_error(ErrorKind::Internal, format!("internal error: {msg}"))
}

pub use sluice_engine::compute::panic_text;

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While one is alive on a thread, a panic on that thread is not printed by
/// the panic hook (nor a backtrace captured): the caller catches it and
/// reports it itself. Used around pgwire's frame decoding, where a panic
/// means a malformed frame from the client, not a bug in Sluice.
pub struct QuietPanics {
    was: bool,
}

impl QuietPanics {
    pub fn enter() -> Self {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(|q| q.get()) {
                    previous(info)
                }
            }));
        });
        Self {
            was: QUIET.with(|q| q.replace(true)),
        }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        QUIET.with(|q| q.set(self.was));
    }
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
