//! The CLI's one error type: what failed and what to do, and the exit code
//! that tells a script which kind of failure it was (docs/ARCHITECTURE.md §3).

use std::fmt;
use std::process::ExitCode;

/// Kinds of failure, each one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: every peer asked said it does not have it, or no peer to ask.
    NotFound,
    /// 2: usage or configuration error.
    Usage,
    /// 3: the deadline passed while some peers had not answered.
    Deadline,
    /// 4: the node or peer could not be reached.
    Unreachable,
    /// 5: local failure (store full, disk error, output file).
    Local,
    /// 6: bad data although every piece verified.
    BadData,
    /// 130: stopped by Ctrl-C (the shell's convention, 128 + SIGINT).
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            Self::NotFound => 1,
            Self::Usage => 2,
            Self::Deadline => 3,
            Self::Unreachable => 4,
            Self::Local => 5,
            Self::BadData => 6,
            Self::Interrupted => 130,
        }
    }

    /// The exit code of a fetch job's error class (`<class>: <text>`), or
    /// [`Exit::Local`] for a class this CLI does not know.
    pub fn of_job_class(class: &str) -> Self {
        match class {
            "not_found" => Self::NotFound,
            "deadline" => Self::Deadline,
            "store_full" | "io" => Self::Local,
            "bad_manifest" => Self::BadData,
            _ => Self::Local,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// A failure: its kind and a message saying what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The kind, which picks the exit code.
    pub exit: Exit,
    /// What failed and what to do.
    pub message: String,
}

impl CliError {
    /// A failure of kind `exit`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    /// A usage or configuration error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// A local failure (exit 5).
    pub fn local(message: impl Into<String>) -> Self {
        Self::new(Exit::Local, message)
    }

    /// The node or peer could not be reached (exit 4).
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(Exit::Unreachable, message)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// What every command returns.
pub type CliResult<T = ()> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_contract() {
        let codes: Vec<u8> = [
            Exit::NotFound,
            Exit::Usage,
            Exit::Deadline,
            Exit::Unreachable,
            Exit::Local,
            Exit::BadData,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6]);
        assert_eq!(Exit::Interrupted.code(), 130);
    }

    #[test]
    fn job_classes_map_to_codes() {
        assert_eq!(Exit::of_job_class("not_found"), Exit::NotFound);
        assert_eq!(Exit::of_job_class("deadline"), Exit::Deadline);
        assert_eq!(Exit::of_job_class("store_full"), Exit::Local);
        assert_eq!(Exit::of_job_class("io"), Exit::Local);
        assert_eq!(Exit::of_job_class("bad_manifest"), Exit::BadData);
        assert_eq!(Exit::of_job_class("something_new"), Exit::Local);
    }
}
