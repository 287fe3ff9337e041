//! Exit statuses of the example programs: 0 when the run and its verification succeeded,
//! [`EXIT_FAILURE`] when either failed, [`EXIT_USAGE`] for a bad command line.

use std::process::ExitCode;

/// Exit status for a bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a failed run or verification.
pub const EXIT_FAILURE: u8 = 1;

/// Turns the outcome of a program's `run` into its exit status, printing the error.
pub fn finish(name: &str, result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: FAILED: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// A boxed error from a message.
pub fn fail(msg: impl Into<String>) -> Box<dyn std::error::Error> {
    msg.into().into()
}
