//! Output files that appear whole or not at all: a [`PendingFile`] is written under a
//! temporary name in the destination's directory and renamed onto the destination by
//! [`PendingFile::commit`]; dropped without a commit (an error, a panic unwinding) it removes
//! its temporary file. A failed run therefore never leaves a partial or empty output (a
//! killed process can leave a `.NAME.partial-PID` file, never a truncated `NAME`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file being written to a temporary name next to its destination.
#[derive(Debug)]
pub struct PendingFile {
    file: File,
    temp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Starts `path`: creates its temporary file (the destination is untouched until
    /// [`PendingFile::commit`]).
    pub fn create(path: impl AsRef<Path>) -> Result<PendingFile> {
        let path = path.as_ref();
        if path.is_dir() {
            return Err(Error::Invalid(format!(
                "output {}: expected a file name, found a directory",
                path.display()
            )));
        }
        let name = path.file_name().ok_or_else(|| {
            Error::Invalid(format!(
                "output {}: expected a file name, found none",
                path.display()
            ))
        })?;
        let temp = path.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&temp).map_err(|e| Error::io(path, e))?;
        Ok(PendingFile {
            file,
            temp,
            path: path.to_path_buf(),
            committed: false,
        })
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the file and renames it onto the destination. Later writes are refused.
    pub fn commit(&mut self) -> Result<()> {
        if self.committed {
            return Ok(());
        }
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        std::fs::rename(&self.temp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.committed {
            return Err(std::io::Error::other("the file is already committed"));
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the temporary file may already be gone.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` whole or not at all.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut file = PendingFile::create(path)?;
    file.write_all(bytes)
        .map_err(|e| Error::io(file.path(), e))?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("streamdit-atomic-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn committed_files_appear_and_dropped_ones_leave_nothing() {
        let dir = scratch("commit");
        let path = dir.join("out.bin");
        let mut f = PendingFile::create(&path).unwrap();
        f.write_all(b"half").unwrap();
        assert!(!path.exists(), "visible before the commit");
        drop(f);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "left a file");
        let mut f = PendingFile::create(&path).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let err = PendingFile::create(&dir).unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
