//! Reading files named by user input (experiments, scenarios, daemon
//! configs, pidfiles, token files) without letting the file choose how
//! much is read or whether the read returns: the file is opened with
//! `O_NONBLOCK` (so a FIFO cannot block the open), checked with `fstat` on
//! the opened descriptor (no check-then-open race), refused unless it is
//! a regular file, refused when larger than the caller's limit, and read
//! through a bound (a file growing after the check is cut off and refused).
//! Errors never carry the file's contents: a secret read by mistake must
//! not end up in a log.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum InputFileError {
    #[error("cannot open file: {0}")]
    Open(std::io::Error),
    #[error("file is a {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("file is {size} bytes, larger than the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot read file: {0}")]
    Read(std::io::Error),
    #[error("file is not valid UTF-8 text")]
    NotUtf8,
}

/// Reads at most `limit` bytes of the regular file at `path`.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, InputFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(InputFileError::Open)?;
    let meta = file.metadata().map_err(InputFileError::Open)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(InputFileError::NotRegular(if ft.is_dir() {
            "directory"
        } else if ft.is_fifo() {
            "FIFO (named pipe)"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        }));
    }
    if meta.len() > limit {
        return Err(InputFileError::TooLarge { size: meta.len(), limit });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(InputFileError::Read)?;
    if buf.len() as u64 > limit {
        // It grew between fstat and read.
        return Err(InputFileError::TooLarge { size: buf.len() as u64, limit });
    }
    Ok(buf)
}

/// [`read_limited`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, InputFileError> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| InputFileError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs `f` on a thread and fails the test if it does not return in
    /// time (a FIFO regression must fail, not hang the suite).
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("the read returned within 5 s")
    }

    #[test]
    fn reads_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, "123\n").unwrap();
        assert_eq!(read_text(&p, 32).unwrap(), "123\n");
    }

    #[test]
    fn refuses_a_file_over_the_limit_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, vec![b'1'; 33]).unwrap();
        let err = read_limited(&p, 32).unwrap_err();
        assert!(matches!(err, InputFileError::TooLarge { size: 33, limit: 32 }), "{err}");
    }

    #[test]
    fn refuses_dev_zero_a_fifo_and_a_directory_promptly() {
        let zero = within(|| read_limited(Path::new("/dev/zero"), 32));
        assert!(matches!(zero, Err(InputFileError::NotRegular("character device"))));
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap();
        let got = within(move || read_limited(&fifo, 32));
        assert!(matches!(got, Err(InputFileError::NotRegular("FIFO (named pipe)"))));
        let d = dir.path().to_path_buf();
        assert!(matches!(read_limited(&d, 32), Err(InputFileError::NotRegular(_))));
    }
}
