//! A VM's run directory: its sockets live here, and it is removed with the VM.

use std::path::{Path, PathBuf};

use crate::VmmError;

/// Directory that holds one VM's sockets; removed on drop.
#[derive(Debug)]
pub(crate) struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub(crate) fn create(base: &Path, id: &str) -> Result<Self, VmmError> {
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(VmmError::Control(format!("invalid VM id {id:?}")));
        }
        let path = base.join(id);
        std::fs::create_dir_all(&path)
            .map_err(VmmError::io(format!("mkdir {}", path.display())))?;
        Ok(Self { path })
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        self.remove();
    }
}
