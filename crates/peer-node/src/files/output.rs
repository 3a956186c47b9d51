//! The temp file a file job writes beside its output, its rename into
//! place, and the names of temp files earlier runs left.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use piece_store::PieceStore;

use super::job::JobError;

/// Checks an output path before a job starts: absolute, naming a file, in
/// an existing directory.
pub(crate) fn check_output_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(format!("{} does not name a file", path.display()));
    };
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if path.is_dir() {
        return Err(format!("{} is a directory", path.display()));
    }
    Ok(())
}

/// The temp file a job writes, beside its output.
pub(super) struct Output {
    pub(super) file: File,
    pub(super) tmp: PathBuf,
    pub(super) path: PathBuf,
}

impl Output {
    pub(super) fn create(path: &Path, job: &str) -> Result<Self, JobError> {
        check_output_path(path).map_err(|e| JobError::new("io", e))?;
        let tmp = part_path(path, job);
        // Readable too: the whole-file hash reads back the pieces that
        // arrived ahead of the completed prefix.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| JobError::new("io", format!("cannot create {}: {e}", tmp.display())))?;
        Ok(Self {
            file,
            tmp,
            path: path.to_owned(),
        })
    }

    pub(super) fn error(&self, what: &str, err: std::io::Error) -> JobError {
        JobError::new("io", format!("{what} {}: {err}", self.tmp.display()))
    }

    /// Renames the complete, fsynced temp file over the output, has the
    /// store's index follow, fsyncs the directory, then removes the temp
    /// files earlier runs left for the same output (their pieces were read
    /// from them), except those of the jobs `running`.
    pub(super) fn commit(
        self,
        store: &dyn PieceStore,
        running: &[PathBuf],
    ) -> Result<(), JobError> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| self.error("rename", e))?;
        if let Err(err) = store.move_extent_file(&self.tmp, &self.path) {
            // The file is whole; its pieces will not be served from it.
            tracing::warn!(file = %self.path.display(), %err, "cannot record the rename in the store's index");
            let _ = store.forget_extent_file(&self.tmp);
        }
        if let Some(dir) = self.path.parent() {
            piece_store::state_file::sync_dir(dir)
                .map_err(|e| JobError::new("io", format!("fsync {}: {e}", dir.display())))?;
        }
        for part in self.stale_parts(running) {
            let _ = store.forget_extent_file(&part);
            let _ = std::fs::remove_file(&part);
        }
        Ok(())
    }

    /// The temp files beside the output that earlier runs wrote for it.
    fn stale_parts(&self, running: &[PathBuf]) -> Vec<PathBuf> {
        let Some(dir) = self.path.parent() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|part| {
                output_of_part(part).as_deref() == Some(&*self.path)
                    && *part != self.tmp
                    && !running.contains(part)
            })
            .collect()
    }
}

/// The temp file a job `job` writes for `output`: hidden, beside it.
pub(crate) fn part_path(output: &Path, job: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(output.file_name().unwrap_or_default());
    name.push(format!(".p2p-{job}.part"));
    output.with_file_name(name)
}

/// The output a job's temp file `part` was written for, if `part` is
/// named as [`part_path`] names them.
pub(crate) fn output_of_part(part: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let name = part.file_name()?.as_bytes();
    let inner = name.strip_prefix(b".")?.strip_suffix(b".part")?;
    let (output, job) = inner.split_at(inner.len().checked_sub(JOB_ID_HEX + 5)?);
    let job = job.strip_prefix(b".p2p-")?;
    if output.is_empty() || !job.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some(part.with_file_name(std::ffi::OsStr::from_bytes(output)))
}

/// Hex digits of a job id.
pub(crate) const JOB_ID_HEX: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_names_its_output_and_nothing_else_does() {
        let output = Path::new("/data/my file.iso");
        let part = part_path(output, "00112233aabbccdd");
        assert_eq!(
            part,
            Path::new("/data/.my file.iso.p2p-00112233aabbccdd.part")
        );
        assert_eq!(output_of_part(&part).as_deref(), Some(output));
        for other in [
            "/data/my file.iso",
            "/data/.my file.iso.p2p-0011.part",
            "/data/.my file.iso.p2p-00112233aabbccdg.part",
            "/data/..p2p-00112233aabbccdd.part",
            "/data/.x.p2p-00112233aabbccdd.parts",
        ] {
            assert_eq!(output_of_part(Path::new(other)), None, "{other}");
        }
    }
}
