//! A writer for the newc cpio format the kernel unpacks as an initramfs.
//!
//! Written here rather than shelling out to `cpio` because the archive needs a device node
//! (`/dev/console`, without which PID 1 has no console) that an unprivileged tool could not create
//! on disk first, and because a deterministic archive (fixed inode numbers and times) keeps the
//! image's content key stable.

use std::io::Write;

const MAGIC: &str = "070701";

/// Builds an archive in memory.
#[derive(Debug, Default)]
pub(crate) struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let name_len = name.len() + 1;
        let fields = [
            self.next_ino,
            mode,
            0,
            0,
            1,
            0,
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(name_len).unwrap_or(u32::MAX),
            0,
        ];
        let mut header = String::from(MAGIC);
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub(crate) fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    pub(crate) fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | (mode & 0o7777), (0, 0), data);
    }

    pub(crate) fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | (mode & 0o7777), (major, minor), &[]);
    }

    pub(crate) fn finish(mut self, out: &mut impl Write) -> std::io::Result<()> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        out.write_all(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut w = CpioWriter::default();
        w.dir("dev");
        w.char_device("dev/console", 0o600, 5, 1);
        w.file("init", 0o755, b"abc");
        let mut out = Vec::new();
        w.finish(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("dev/console\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The console node: mode 020600, rdev 5:1.
        let at = text.find("dev/console").unwrap() - 110;
        let header = &text[at..at + 110];
        assert_eq!(&header[14..22], "00002180");
        assert_eq!(&header[78..86], "00000005");
        assert_eq!(&header[86..94], "00000001");
    }
}
