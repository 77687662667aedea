//! Exit codes are an API: CI gates branch on them (see README, "Exit codes").

use std::process::ExitCode;

/// Every hypothesis accepted (or, for non-experiment commands: success).
pub const OK: u8 = 0;
/// At least one hypothesis rejected.
pub const REJECTED: u8 = 1;
/// Invalid input or usage; nothing was injected.
pub const INVALID: u8 = 2;
/// Aborted by a safety condition; faults reverted.
pub const ABORTED: u8 = 3;
/// Inconclusive: too few samples or no data.
pub const INCONCLUSIVE: u8 = 4;
/// Environment error: missing privilege, kernel feature, unreachable target.
pub const ENVIRONMENT: u8 = 5;
/// Interrupted by SIGINT/SIGTERM; faults reverted (shell convention 128+2).
pub const INTERRUPTED: u8 = 130;

/// Converts one of the codes above into a process exit code.
pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}
